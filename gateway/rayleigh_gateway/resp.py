"""The RESP2 protocol of the gateway's own small pipelined Redis client: command encoding,
reply parsing and the asyncio protocol that resolves futures in reply order (which is what
Redis guarantees). The connection itself (TLS, ACL user, Sentinel, reconnects) is
`redis_conn.RespClient`.

redis-py's asyncio client spends about 25-60 us of Python per command on this machine
(connection pool, command packing, reply parsing); this client writes commands straight to one
shared connection and coalesces the commands of one event-loop iteration into one write.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

RespValue = Any


class RedisError(Exception):
    """An error reply from Redis (e.g. NOSCRIPT), or a lost connection."""


class RedisConnectionError(RedisError):
    """The connection failed or was lost (also: TLS, credentials, or no master from Sentinel)."""


class RedisClusterError(RedisError):
    """The server is a Redis Cluster node (MOVED/ASK/CLUSTERDOWN reply, or cluster_enabled:1)."""


CLUSTER_MESSAGE = (
    "Redis Cluster is not supported: one rate-limit script touches several buckets (per caller, "
    "per key, per model) that would hash to different slots; use a single Redis, or Sentinel for HA"
)


def error_reply(text: str) -> RedisError:
    """The exception for an error reply; replies that only a cluster sends get a clear message."""
    if text.startswith(("MOVED ", "ASK ", "CLUSTERDOWN", "CROSSSLOT")):
        return RedisClusterError(f"{CLUSTER_MESSAGE} (server replied {text.split(' ', 1)[0]})")
    return RedisError(text)


def encode_command(*args: bytes | str | int | float) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            b = arg
        elif isinstance(arg, str):
            b = arg.encode()
        elif isinstance(arg, float):
            b = repr(arg).encode()
        else:
            b = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class _Incomplete(Exception):
    pass


def parse_reply(buf: bytes | bytearray, pos: int) -> tuple[RespValue, int]:
    """Parse one reply at `pos`; return (value, new_pos) or raise _Incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == 58:  # ':'
        return int(line), nxt
    if kind == 43:  # '+'
        return line.decode(), nxt
    if kind == 45:  # '-'
        return error_reply(line.decode()), nxt
    if kind == 36:  # '$'
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            raise _Incomplete
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 42:  # '*'
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            item, nxt = parse_reply(buf, nxt)
            items.append(item)
        return items, nxt
    raise RedisConnectionError(f"bad RESP reply type {chr(kind)!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[asyncio.Future[RespValue]] = collections.deque()
        self.buf = bytearray()
        self.closed = False
        self.out: list[bytes] = []

    def queue(self, payload: bytes) -> None:
        """Write soon, coalescing the commands of every request handled in this loop iteration
        into one write (one syscall instead of one per request under load)."""
        if not self.out:
            asyncio.get_running_loop().call_soon(self.flush_out)
        self.out.append(payload)

    def flush_out(self) -> None:
        out, self.out = self.out, []
        if self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        try:
            while pos < len(buf) and self.waiters:
                value, pos = parse_reply(buf, pos)
                fut = self.waiters.popleft()
                if not fut.done():
                    if isinstance(value, RedisError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except RedisConnectionError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection to redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

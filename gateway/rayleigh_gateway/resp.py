"""A small pipelined Redis (RESP2) client for the gateway's request path.

The gateway sends exactly one command per request to Redis (an EVALSHA of the token-bucket
script). redis-py's asyncio client spends about 25-60 us of Python per command on this machine
(connection pool, command packing, reply parsing); this client writes the command straight to
one shared connection and resolves futures in reply order, which is what Redis guarantees.
It speaks to a real Redis server; everything else (CLI usage queries) uses redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import urlparse

RespValue = Any


class RedisError(Exception):
    """An error reply from Redis (e.g. NOSCRIPT), or a lost connection."""


class RedisConnectionError(RedisError):
    pass


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
        return RedisError(line.decode()), nxt
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


def _expire(futs: list[asyncio.Future[RespValue]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(TimeoutError("redis did not answer in time"))


class RespClient:
    """One pipelined connection, reopened lazily after a failure."""

    def __init__(self, url: str, connect_timeout: float = 0.5, timeout: float = 0.5) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", ""):
            raise ValueError(f"only redis:// URLs are supported, got {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = int((parsed.path or "/0").lstrip("/") or 0)
        self.password = parsed.password
        self.username = parsed.username
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.closed:
                return self._proto
            loop = asyncio.get_running_loop()
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self.host, self.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: {exc}") from None
            setup: list[tuple[bytes | str | int, ...]] = []
            if self.password:
                setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
            if self.db:
                setup.append(("SELECT", self.db))
            self._proto = proto
            for cmd in setup:
                await self._send(proto, encode_command(*cmd))
            return proto

    async def _send(self, proto: _Protocol, payload: bytes, replies: int = 1) -> RespValue:
        assert proto.transport is not None
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(replies)]
        proto.waiters.extend(futs)
        proto.queue(payload)
        # A timer instead of asyncio.wait_for, which wraps the await in a new task (costly here).
        # A late reply still pops its (already failed) future, so replies stay in order.
        timer = loop.call_later(self.timeout, _expire, futs)
        try:
            if replies == 1:
                return await futs[0]
            return [await f for f in futs]
        finally:
            timer.cancel()

    async def execute(self, *args: bytes | str | int | float) -> RespValue:
        """One command; raises RedisError (error reply, lost connection) or TimeoutError."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        return await self._send(proto, encode_command(*args))

    async def pipeline(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[RespValue]:
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        payload = b"".join(encode_command(*c) for c in commands)
        result: list[RespValue] = await self._send(proto, payload, replies=len(commands))
        return result

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None

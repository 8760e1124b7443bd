"""The connection to the Redis that holds the shared rate limits and usage counters.

`RedisOptions` says where and how: `redis://` or `rediss://` (TLS) URL with db and optional
`user:password`, or the same from flags and environment (`--redis-username`,
`--redis-password-file` read at every connect so a rotated Secret is picked up, `--redis-ca`,
`--redis-cert`/`--redis-key` for mutual TLS, `--redis-sentinel host:port,...` with
`--redis-sentinel-master NAME` for Sentinel). `RespClient` is one pipelined connection (the
protocol is in resp.py), opened lazily and reopened after a failure; with Sentinel every
(re)connect asks a sentinel for the master and checks its ROLE, so a failover is followed on the
next call. A Redis Cluster is refused with a clear message (see resp.CLUSTER_MESSAGE).
Passwords never appear in messages or reprs.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from .resp import (
    CLUSTER_MESSAGE,
    RedisClusterError,
    RedisConnectionError,
    RedisError,
    RespValue,
    _Protocol,
    encode_command,
)

ENV_URL = "RAYLEIGH_GATEWAY_REDIS_URL"
ENV = {
    "username": "RAYLEIGH_GATEWAY_REDIS_USERNAME",
    "password_file": "RAYLEIGH_GATEWAY_REDIS_PASSWORD_FILE",
    "ca_file": "RAYLEIGH_GATEWAY_REDIS_CA",
    "cert_file": "RAYLEIGH_GATEWAY_REDIS_CERT",
    "key_file": "RAYLEIGH_GATEWAY_REDIS_KEY",
    "sentinels": "RAYLEIGH_GATEWAY_REDIS_SENTINELS",
    "sentinel_master": "RAYLEIGH_GATEWAY_REDIS_SENTINEL_MASTER",
}
# Errors after which the connection is reopened (and, with Sentinel, the master looked up again).
_RECONNECT_ERRORS = ("READONLY", "MASTERDOWN", "LOADING")


class RedisConfigError(ValueError):
    """The Redis URL or flags cannot be used; the message says which and why."""


def _hostport(text: str, default_port: int = 26379) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:26379
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise RedisConfigError(f"--redis-sentinel: expected host:port, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class RedisOptions:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None

    @classmethod
    def parse(
        cls,
        url: str | None,
        *,
        username: str | None = None,
        password_file: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        sentinels: str | None = None,
        sentinel_master: str | None = None,
    ) -> RedisOptions:
        """From a URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS; redis-py's
        `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile` query parameters are understood) and the
        flags, which win over the URL. With sentinels the URL's host and port are not used."""
        parsed = urlparse(url or "redis://")
        if parsed.scheme not in ("redis", "rediss"):
            raise RedisConfigError(f"expected a redis:// or rediss:// URL, got scheme {parsed.scheme!r}")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        try:
            db = int((parsed.path or "/0").lstrip("/") or 0)
            port = parsed.port or 6379
        except ValueError as exc:
            raise RedisConfigError(f"invalid Redis URL: {exc}") from None
        opts = cls(
            host=parsed.hostname or "127.0.0.1",
            port=port,
            db=db,
            username=username or (unquote(parsed.username) if parsed.username else None),
            password=None if password_file else (unquote(parsed.password) if parsed.password else None),
            password_file=password_file or None,
            tls=parsed.scheme == "rediss",
            ca_file=ca_file or query.get("ssl_ca_certs"),
            cert_file=cert_file or query.get("ssl_certfile"),
            key_file=key_file or query.get("ssl_keyfile"),
            sentinels=tuple(_hostport(s) for s in (sentinels or "").split(",") if s.strip()),
            sentinel_master=sentinel_master or None,
        )
        opts.validate()
        return opts

    @classmethod
    def from_env(cls, url: str | None = None, env: Mapping[str, str] = os.environ) -> RedisOptions | None:
        """The gateway's options: `url` (or $RAYLEIGH_GATEWAY_REDIS_URL) plus the flags that
        `rayleigh gateway` put in the environment. None when no Redis is configured."""
        url = url or env.get(ENV_URL) or None
        extra = {name: env.get(var) or None for name, var in ENV.items()}
        if not url and not extra["sentinels"]:
            return None
        return cls.parse(url, **extra)

    def validate(self) -> None:
        if (self.ca_file or self.cert_file or self.key_file) and not self.tls:
            raise RedisConfigError("a CA bundle or client certificate needs TLS: use a rediss:// URL")
        if self.key_file and not self.cert_file:
            raise RedisConfigError("--redis-key needs --redis-cert (the client certificate)")
        for what, path in (("CA bundle", self.ca_file), ("client certificate", self.cert_file)):
            if path and not Path(path).is_file():
                raise RedisConfigError(f"Redis {what} {path} does not exist")
        if self.key_file and not Path(self.key_file).is_file():
            raise RedisConfigError(f"Redis client key {self.key_file} does not exist")
        if self.password_file and not Path(self.password_file).is_file():
            raise RedisConfigError(f"Redis password file {self.password_file} does not exist")
        if self.sentinels and not self.sentinel_master:
            raise RedisConfigError("--redis-sentinel needs --redis-sentinel-master (the monitored master's name)")
        if self.sentinel_master and not self.sentinels:
            raise RedisConfigError("--redis-sentinel-master needs --redis-sentinel host:port,...")

    def current_password(self) -> str | None:
        """The password now: re-read from the file (a Kubernetes Secret may be rotated)."""
        if self.password_file:
            return Path(self.password_file).read_text().rstrip("\r\n") or None
        return self.password

    def describe(self) -> str:
        """Where, for messages: never the password."""
        user = f" as user {self.username}" if self.username else ""
        scheme = "rediss" if self.tls else "redis"
        if self.sentinels:
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"master {self.sentinel_master!r} via sentinel {where} (db {self.db}, {scheme}){user}"
        return f"{scheme}://{self.host}:{self.port}/{self.db}{user}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def with_db(self, db: int) -> RedisOptions:
        return replace(self, db=db)


def flags_to_env(
    url: str | None,
    username: str | None = None,
    password_file: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    sentinels: str | None = None,
    sentinel_master: str | None = None,
) -> dict[str, str]:
    """The environment that hands `rayleigh gateway`'s Redis flags to its uvicorn workers
    (paths only: a password stays in its file, or in the URL's own variable). Paths are made
    absolute without following symlinks: a Kubernetes Secret volume's files point into a directory
    that the kubelet replaces on rotation, and the password file is read again at every connect."""
    values = {
        "username": username,
        "password_file": os.path.abspath(password_file) if password_file else None,
        "ca_file": os.path.abspath(ca_file) if ca_file else None,
        "cert_file": os.path.abspath(cert_file) if cert_file else None,
        "key_file": os.path.abspath(key_file) if key_file else None,
        "sentinels": sentinels,
        "sentinel_master": sentinel_master,
    }
    env = {ENV[name]: value or "" for name, value in values.items()}
    if sentinels and not url:
        url = f"redis://{sentinel_master or 'sentinel'}/0"  # host unused with Sentinel
    env[ENV_URL] = url or ""
    return env


def _expire(futs: list[asyncio.Future[RespValue]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(TimeoutError("redis did not answer in time"))


class RespClient:
    """One pipelined connection, reopened lazily after a failure."""

    def __init__(self, options: RedisOptions | str, connect_timeout: float = 0.5, timeout: float = 0.5) -> None:
        self.options = RedisOptions.parse(options) if isinstance(options, str) else options
        self.ssl = self.options.ssl_context()
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.address: tuple[str, int] | None = None  # the server now (the master, with Sentinel)
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _open(self, host: str, port: int) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(
                    _Protocol, host, port, ssl=self.ssl, server_hostname=host if self.ssl is not None else None
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            raise RedisConnectionError(f"cannot connect to redis at {host}:{port}: {exc or 'timed out'}") from None
        return proto

    async def _master(self) -> tuple[str, int]:
        """Ask the sentinels, in order, for the master's address."""
        opts = self.options
        problems: list[str] = []
        for host, port in opts.sentinels:
            try:
                proto = await self._open(host, port)
            except RedisConnectionError as exc:
                problems.append(str(exc))
                continue
            try:
                reply = await self._send(
                    proto, encode_command("SENTINEL", "get-master-addr-by-name", opts.sentinel_master or "")
                )
            except (RedisError, TimeoutError) as exc:
                problems.append(f"sentinel {host}:{port}: {exc}")
                continue
            finally:
                if proto.transport is not None:
                    proto.transport.close()
            if isinstance(reply, list) and len(reply) == 2:
                return reply[0].decode(), int(reply[1])
            problems.append(f"sentinel {host}:{port} does not know a master named {opts.sentinel_master!r}")
        raise RedisConnectionError("no master from Sentinel: " + "; ".join(problems))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.closed:
                return self._proto
            opts = self.options
            host, port = await self._master() if opts.sentinels else (opts.host, opts.port)
            proto = await self._open(host, port)
            try:
                await self._setup(proto, host, port)
            except BaseException:
                if proto.transport is not None:
                    proto.transport.close()
                raise
            self._proto = proto
            self.address = (host, port)
            return proto

    async def _setup(self, proto: _Protocol, host: str, port: int) -> None:
        """AUTH, SELECT, and the checks: a master (with Sentinel), not a cluster. One round trip."""
        opts = self.options
        password = opts.current_password()
        cmds: list[tuple[str, ...]] = []
        if password:
            cmds.append(("AUTH", opts.username, password) if opts.username else ("AUTH", password))
        if opts.db:
            cmds.append(("SELECT", str(opts.db)))
        if opts.sentinels:
            cmds.append(("ROLE",))
        cmds.append(("INFO", "cluster"))
        replies = await self._send_all(proto, b"".join(encode_command(*c) for c in cmds), len(cmds))
        for cmd, reply in zip(cmds, replies, strict=True):
            name = cmd[0]
            if isinstance(reply, TimeoutError):
                raise RedisConnectionError(f"redis at {host}:{port} did not answer {name} in time")
            if name == "AUTH" and isinstance(reply, RedisError):
                user = opts.username or "default"
                raise RedisConnectionError(f"redis at {host}:{port} refused the credentials of user {user!r}: {reply}")
            if name == "SELECT" and isinstance(reply, RedisError):
                if "cluster" in str(reply).lower():
                    raise RedisClusterError(CLUSTER_MESSAGE)
                raise RedisConnectionError(f"redis at {host}:{port}: SELECT {opts.db}: {reply}")
            if name == "ROLE":
                if isinstance(reply, RedisError):
                    raise RedisConnectionError(f"redis at {host}:{port}: ROLE: {reply}")
                if not (isinstance(reply, list) and reply and reply[0] == b"master"):
                    raise RedisConnectionError(
                        f"sentinel named {host}:{port} as master {opts.sentinel_master!r} but it is not one "
                        "(failover in progress?)"
                    )
            if name == "INFO" and isinstance(reply, bytes) and b"cluster_enabled:1" in reply:
                raise RedisClusterError(CLUSTER_MESSAGE)
            # An INFO refused by an ACL is fine: a cluster still shows itself by MOVED replies.
            if isinstance(reply, BaseException) and name not in ("INFO",):
                raise RedisConnectionError(f"redis at {host}:{port}: {name}: {reply}")

    async def _send(self, proto: _Protocol, payload: bytes) -> RespValue:
        assert proto.transport is not None
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        proto.waiters.append(fut)
        proto.queue(payload)
        # A timer instead of asyncio.wait_for, which wraps the await in a new task (costly here).
        # A late reply still pops its (already failed) future, so replies stay in order.
        timer = loop.call_later(self.timeout, _expire, [fut])
        try:
            return await fut
        finally:
            timer.cancel()

    async def _send_all(self, proto: _Protocol, payload: bytes, replies: int) -> list[RespValue]:
        """Several commands in one write; every reply (an error reply as its exception)."""
        assert proto.transport is not None
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(replies)]
        proto.waiters.extend(futs)
        proto.queue(payload)
        timer = loop.call_later(self.timeout, _expire, futs)
        try:
            return list(await asyncio.gather(*futs, return_exceptions=True))
        finally:
            timer.cancel()

    async def execute(self, *args: bytes | str | int | float) -> RespValue:
        """One command; raises RedisError (error reply, lost connection) or TimeoutError.
        A master that became a replica (READONLY) is left, and the command sent once more to
        the master Sentinel names now."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        payload = encode_command(*args)
        try:
            return await self._send(proto, payload)
        except RedisError as exc:
            text = str(exc)
            if not (text.startswith(_RECONNECT_ERRORS) or "READONLY" in text):
                raise
            self.close()  # a script's writes fail before any effect: sending it again is safe
        return await self._send(await self._connect(), payload)

    async def pipeline(self, commands: list[tuple[bytes | str | int | float, ...]]) -> list[RespValue]:
        """Several commands in one write; raises the first error."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        replies = await self._send_all(proto, b"".join(encode_command(*c) for c in commands), len(commands))
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


async def probe(options: RedisOptions, timeout: float = 2.0) -> str:
    """Connect once (as the gateway would) and say what answered; raises RedisClusterError for
    a cluster and RedisError/TimeoutError when it cannot be reached."""
    client = RespClient(options, connect_timeout=timeout, timeout=timeout)
    try:
        info = await client.execute("PING")
        return f"{options.describe()} answered {info}" + (f" (master {client.address})" if options.sentinels else "")
    finally:
        client.close()

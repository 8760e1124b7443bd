"""The gateway's ASGI application (pure ASGI, no middleware stack): settings, lifecycle, config
and key reload, and the dispatch table that sends each path to its handler.

Where the rest lives: admission.py (body, JSON, route, allow-list, auth.py, limits.py -> a
context.py `RequestContext`), proxy.py (the upstream call, SSE relay, usage scanning), audit.py
(usage recording and audit lines after the response), admin.py (/v1/models, health,
OpenAPI), websocket.py (/v1/ws/chat over `Gateway.proxy`), compiled.py (the route config
compiled for the request path), errors.py and asgi.py (shared by all of them), server.py (the
uvicorn protocol with head limits, and the metrics server on its own port: /metrics is not served
here, on the API port).

Besides the dispatch, this module fences every proxied request: a deadline on reading the body
(`limits.bodyTimeoutSeconds`, 408), the caller's concurrent streams (`limits.maxConcurrentStreams`
or the key's own, 429), and JWKS URLs only on `jwksAllowedHosts` (other routes are refused).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import metrics as m
from .admin import health, list_models, openapi
from .admission import admit, client_of, read_headers
from .asgi import Handler, Message, Receive, Scope, Send, send_error
from .audit import Recorder
from .auth import Caller
from .compiled import PROXIED_PATHS, Compiled, compile_config
from .context import RequestContext
from .errors import GatewayError, method_not_allowed, not_found, retry_after
from .fairness import FairGates
from .jwt_auth import JWKSCaches, JWKSFetcher, jwks_host_allowed
from .keys import KeyStore, KeyStoreError, load_keys
from .proxy import Upstream
from .ratelimit import RateLimiter
from .routes import ConfigError, GatewayConfig, Route, config_files, load_config
from .websocket import handle_websocket

log = logging.getLogger("rayleigh.gateway")


@dataclass
class Settings:
    config_path: str
    keys_path: str | None = None
    redis_url: str | None = None
    reload_interval: float = 1.0
    redis_timeout: float = 0.25
    audit: bool = True
    audit_path: str = "-"  # "-": stdout; lines are written in batches every flush_interval
    flush_interval: float = 0.1  # seconds between writes of usage corrections and audit lines
    drain_seconds: float = 30.0
    wake_url: str | None = None  # the operator's wake endpoint (scale to zero; hold.py)


def _stat_sig(path: str | None) -> tuple[int, ...] | None:
    if not path:
        return None
    try:
        st = os.stat(path)  # follows the ConfigMap's ..data symlink swap
        if stat.S_ISDIR(st.st_mode):
            # A mounted routes directory: any file added, removed or swapped changes the signature.
            sig: list[int] = [st.st_ino]
            for file in config_files(Path(path)):
                fst = os.stat(file)
                sig += [hash(file.name), fst.st_ino, fst.st_mtime_ns, fst.st_size]
            return tuple(sig)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Gateway:
    """The ASGI app: holds the compiled routes, keys, rate limiter, recorder and upstream pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.jwks_fetcher = JWKSFetcher()
        self.jwks = JWKSCaches(self.jwks_fetcher)  # one cache per JWKS URL, kept across reloads
        self.streams: dict[str, int] = {}  # caller ident -> streams open now (this process)
        self.reading: set[BodyDeadline] = set()  # requests reading their body (deadline swept)
        self.gates = FairGates()  # fair sharing: per route with `fairness`, kept across reloads
        self.compiled = self._compile(load_config(settings.config_path))
        self.keys = load_keys(settings.keys_path) if settings.keys_path else KeyStore.new()
        self._sigs = (_stat_sig(settings.config_path), _stat_sig(settings.keys_path))
        self.limiter = RateLimiter(
            settings.redis_url,
            timeout=settings.redis_timeout,
            on_error=lambda op: m.redis_errors_c(op).inc(),
            on_state=lambda up: m.REDIS_UP.set(1 if up else 0),
        )
        m.REDIS_UP.set(1 if settings.redis_url else 0)
        self.recorder = Recorder(self.limiter, settings.audit, settings.audit_path)
        self.upstream = Upstream(self.recorder, settings.wake_url)
        self.poller: asyncio.Task[None] | None = None
        self.flusher: asyncio.Task[None] | None = None
        self._rid = 0
        self._rid_prefix = os.urandom(4).hex()
        # The dispatch table of HTTP requests: path -> (the one method accepted, handler).
        self.handlers: dict[str, tuple[str, Handler]] = {
            **{path: ("POST", self.proxy) for path in PROXIED_PATHS},
            "/v1/models": ("GET", self.models),
            "/healthz": ("GET", health),
            "/readyz": ("GET", health),
            "/openapi.json": ("GET", openapi),
        }

    @property
    def in_flight(self) -> int:
        """Requests being proxied now."""
        return self.upstream.in_flight

    # ---------------------------------------------------------------- config and lifecycle

    def _compile(self, config: GatewayConfig) -> Compiled:
        config = admit_jwks_hosts(config)
        compiled = compile_config(config, self.jwks)
        self.jwks.retain(url for r in config.routes if (url := _jwks_url(r)))
        return compiled

    def check_reload(self) -> bool:
        """Reload the config and key files if they changed; keep the old ones if invalid."""
        cfg_sig, keys_sig = _stat_sig(self.settings.config_path), _stat_sig(self.settings.keys_path)
        changed = False
        if cfg_sig is not None and cfg_sig != self._sigs[0]:
            try:
                self.compiled = self._compile(load_config(self.settings.config_path))
                self.upstream.limits = self.compiled.config.limits  # for backends seen from now on
                m.reloads_c("config", "ok").inc()
                log.info("reloaded route config %s", self.settings.config_path)
                changed = True
            except (ConfigError, ValueError) as exc:
                m.reloads_c("config", "error").inc()
                log.error("keeping the previous route config: %s", exc)
        if keys_sig is not None and keys_sig != self._sigs[1] and self.settings.keys_path:
            try:
                self.keys = load_keys(self.settings.keys_path)
                for cr in self.compiled.routes:
                    cr.bucket_cache.clear()
                m.reloads_c("keys", "ok").inc()
                log.info("reloaded key file %s (%d keys)", self.settings.keys_path, len(self.keys.records))
                changed = True
            except KeyStoreError as exc:
                m.reloads_c("keys", "error").inc()
                log.error("keeping the previous keys: %s", exc)
        self._sigs = (cfg_sig or self._sigs[0], keys_sig or self._sigs[1])
        return changed

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            try:
                self.check_reload()
            except Exception:
                log.exception("config reload failed")

    async def startup(self) -> None:
        self.upstream.open(self.compiled.config.limits)
        self.recorder.open()
        self.poller = asyncio.create_task(self._poll())
        self.flusher = asyncio.create_task(self._flush_loop())

    async def shutdown(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        deadline = time.monotonic() + self.settings.drain_seconds
        while self.upstream.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.flusher is not None:
            self.flusher.cancel()
        await self.flush()
        self.recorder.close()
        self.jwks.cancel()
        await self.jwks_fetcher.close()
        if self.upstream.hold is not None:
            await self.upstream.hold.close()
        await self.upstream.close()
        await self.limiter.aclose()  # gives the leased shares back to Redis

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                sweep(self.reading)
            except Exception:
                log.exception("expiring slow request bodies failed")
            try:
                await self.recorder.flush()
            except Exception:
                log.exception("flushing usage and audit lines failed")

    async def flush(self) -> None:
        """Write the batched audit lines and Redis usage/corrections (off the request path)."""
        await self.recorder.flush()

    # ---------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            entry = self.handlers.get(path)
            if entry is None:
                await send_error(send, not_found(path))
                return
            method, handler = entry
            if scope["method"] != method:
                await send_error(send, method_not_allowed(path, method))
                return
            await handler(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await handle_websocket(self.proxy, scope, receive, send, self.compiled.config.websocket_allowed_origins)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a proxied request (`scope["path"]` one of PROXIED_PATHS, method POST): admission,
        then the upstream call. The public entry point, also used by the WebSocket chat."""
        t0 = time.perf_counter()
        cred, xff, length, rid = read_headers(scope)
        compiled = self.compiled
        self._rid += 1
        body = BodyDeadline(receive, compiled.config.limits.body_timeout_seconds, self.reading)
        ctx = RequestContext(
            scope,
            body,
            send,
            scope["path"],
            rid or f"{self._rid_prefix}-{self._rid}",
            client_of(scope, xff, compiled),
            t0,
        )
        try:
            await admit(ctx, compiled, self.keys, self.limiter, cred, length)
        except GatewayError as err:
            body.stop()
            await self.upstream.reject(ctx, err)
            return
        body.stop()
        caller = ctx.caller
        assert caller is not None and ctx.route is not None
        gate = self.gates.get(ctx.route.key, ctx.route.route.fairness)
        if gate is not None:
            try:
                await gate.wait(caller.ident, caller.weight, caller.priority, ctx.receive)
            except GatewayError as err:
                self.recorder.settle(ctx, None, err.status)  # give the tokens taken by admission back
                await self.upstream.reject(ctx, err)
                return
        try:
            await self._forward(ctx, caller, compiled)
        finally:
            if gate is not None:
                gate.leave()

    async def _forward(self, ctx: RequestContext, caller: Caller, compiled: Compiled) -> None:
        if not ctx.stream:
            await self.upstream.forward(ctx)
            return
        # A stream holds a backend connection for its whole length: cap them per caller.
        record = caller.record
        cap = (record.max_concurrent_streams if record else None) or compiled.config.limits.max_concurrent_streams
        ident = caller.ident
        open_now = self.streams.get(ident, 0)
        if cap and open_now >= cap:
            m.rate_limited_c(ctx.route_key, ctx.model, "streams").inc()
            self.recorder.settle(ctx, None, 429)  # give the tokens taken by admission back
            await self.upstream.reject(ctx, too_many_streams(cap))
            return
        self.streams[ident] = open_now + 1
        try:
            await self.upstream.forward(ctx)
        finally:
            left = self.streams[ident] - 1
            if left:
                self.streams[ident] = left
            else:
                del self.streams[ident]

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`GET /v1/models` with the current routes and keys."""
        await list_models(scope, send, self.compiled, self.keys)


def too_many_streams(cap: int) -> GatewayError:
    return GatewayError(
        429,
        f"Too many concurrent streams: at most {cap} at a time for this caller; retry when one ends",
        "rate_limit_exceeded",
        "too_many_streams",
        [retry_after(1)],
    )


class BodyDeadline:
    """`receive` with one deadline for the whole request body: a 408 (connection closed) when the
    body is not complete `seconds` after the first receive. Later receives (a stream's disconnect
    watch) pass through untimed. No timer per request: while the body is read the request sits in
    `reading`, which `sweep` (the gateway's 100 ms flush loop) checks."""

    __slots__ = ("deadline", "done", "expired", "reading", "receive", "seconds", "waiting")

    def __init__(self, receive: Receive, seconds: float, reading: set[BodyDeadline]) -> None:
        self.receive = receive
        self.seconds = seconds
        self.reading = reading
        self.deadline = 0.0  # time.monotonic() when the body must be complete; 0.0: not started
        self.waiting: asyncio.Task[object] | None = None  # the task blocked in receive
        self.expired = False
        self.done = False

    async def __call__(self) -> Message:
        if self.done:
            return await self.receive()
        if self.expired:
            raise self._timeout()
        if not self.deadline:
            self.deadline = time.monotonic() + self.seconds
            self.reading.add(self)
        task = self.waiting = asyncio.current_task()
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if self.expired and task is not None:
                task.uncancel()
                raise self._timeout() from None
            raise
        finally:
            self.waiting = None
        if not message.get("more_body", False):
            self.stop()
        return message

    def stop(self) -> None:
        """The body is read (or will not be): no deadline any more."""
        self.done = True
        self.reading.discard(self)

    def expire(self) -> None:
        self.expired = True
        self.reading.discard(self)
        if self.waiting is not None:
            self.waiting.cancel()

    def _timeout(self) -> GatewayError:
        return GatewayError(
            408,
            f"Request body not received within {self.seconds:g} s",
            "invalid_request_error",
            "request_timeout",
            [(b"connection", b"close")],
        )


def sweep(reading: set[BodyDeadline]) -> None:
    """Expire the body reads past their deadline."""
    if reading:
        now = time.monotonic()
        for late in [d for d in reading if d.deadline <= now]:
            late.expire()


def _jwks_url(route: Route) -> str | None:
    jwt = route.auth.jwt
    return jwt.jwks_url if jwt is not None else None


def admit_jwks_hosts(config: GatewayConfig) -> GatewayConfig:
    """`config` less the routes whose JWKS URL names a host outside `jwksAllowedHosts` (each refused
    with a log line). An empty list allows any host, as before the setting existed (logged)."""
    allowed = config.jwks_allowed_hosts
    kept: list[Route] = []
    for route in config.routes:
        url = _jwks_url(route)
        if url is None:
            kept.append(route)
        elif not allowed:
            log.warning(
                "route %s/%s fetches JWKS from %s and jwksAllowedHosts is empty (any host): list the "
                "identity providers' hosts in jwksAllowedHosts",
                route.namespace,
                route.name,
                url,
            )
            kept.append(route)
        elif jwks_host_allowed(url, allowed):
            kept.append(route)
        else:
            log.error(
                "route %s/%s refused: its auth.jwt.jwksUrl %s is not on a host in jwksAllowedHosts %s; "
                "its models are not served",
                route.namespace,
                route.name,
                url,
                allowed,
            )
    if len(kept) == len(config.routes):
        return config
    return config.model_copy(update={"routes": kept})


def create_app(settings: Settings) -> Gateway:
    return Gateway(settings)


def create_app_from_env() -> Gateway:
    """The uvicorn factory used by `rayleigh gateway` (each worker builds its own app)."""
    env = os.environ
    config = env.get("RAYLEIGH_GATEWAY_CONFIG")
    if not config:
        raise RuntimeError("RAYLEIGH_GATEWAY_CONFIG is not set (path to the route config)")
    if not Path(config).exists():
        raise RuntimeError(f"route config {config} does not exist")
    return Gateway(
        Settings(
            config_path=config,
            keys_path=env.get("RAYLEIGH_GATEWAY_KEYS") or None,
            redis_url=env.get("RAYLEIGH_GATEWAY_REDIS_URL") or None,
            reload_interval=float(env.get("RAYLEIGH_GATEWAY_RELOAD_SECONDS", "1.0")),
            redis_timeout=float(env.get("RAYLEIGH_GATEWAY_REDIS_TIMEOUT", "0.25")),
            audit=env.get("RAYLEIGH_GATEWAY_AUDIT", "1") not in ("0", "false", "no"),
            audit_path=env.get("RAYLEIGH_GATEWAY_AUDIT_PATH", "-"),
            drain_seconds=float(env.get("RAYLEIGH_GATEWAY_DRAIN_SECONDS", "30")),
            wake_url=env.get("RAYLEIGH_GATEWAY_WAKE_URL") or None,
        )
    )

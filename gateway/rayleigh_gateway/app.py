"""The gateway: a pure ASGI application (no middleware stack) in front of the model backends.

Request path, in order: read the body (size-limited), one orjson parse to read `model`, route
lookup, client address (X-Forwarded-For only through trusted proxies) and allow-list, API key or
JWT, one Redis round trip for the rate limits, then the upstream call over pooled aiohttp
connections. Streams are passed through chunk by chunk. Usage correction, Redis usage counters
and the audit line happen after the response, off its critical path.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import stat
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import orjson

from . import metrics as m
from .jwt_auth import JWTRejected, JWTVerifier
from .keys import KeyRecord, KeyStore, KeyStoreError, load_keys
from .openapi import OPENAPI_JSON
from .policy import (
    IPNetwork,
    address_allowed,
    client_address,
    estimate_tokens,
    parse_networks,
    ratelimit_headers,
    usage_from_json,
)
from .ratelimit import BUCKET_PREFIX, USAGE_PREFIX, Bucket, Decision, RateLimiter, Settler
from .routes import ConfigError, GatewayConfig, Route, config_files, load_config

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("rayleigh.gateway")

PROXIED_PATHS = {
    "/v1/chat/completions": False,
    "/v1/completions": False,
    "/v1/embeddings": True,  # value: is embeddings (no completion tokens)
}
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_DATA = b"data: "
# Upstream response headers not passed on (hop-by-hop, or rewritten by the gateway).
DROP_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"content-encoding",
        b"server",
        b"date",
        b"proxy-authenticate",
        b"trailer",
        b"upgrade",
        b"x-rayleigh-overhead-ms",
    }
)


class GatewayError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or []


def error_body(message: str, type_: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": None}})


@dataclass(slots=True)
class CompiledRoute:
    route: Route
    key: str  # namespace/name
    networks: tuple[IPNetwork, ...]
    jwt: JWTVerifier | None
    urls: dict[str, str]
    bucket_cache: dict[str, tuple[Bucket, ...]] = field(default_factory=dict)

    def buckets(self, ident: str, record: KeyRecord | None) -> tuple[Bucket, ...]:
        cached = self.bucket_cache.get(ident)
        if cached is not None:
            return cached
        rl = self.route.rate_limits
        out: list[Bucket] = []
        if rl.requests_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}kr:{self.key}:{ident}:r", rl.requests_per_minute, False))
        if rl.tokens_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}kr:{self.key}:{ident}:t", rl.tokens_per_minute, True))
        if record is not None and record.requests_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}k:{ident}:r", record.requests_per_minute, False))
        if record is not None and record.tokens_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}k:{ident}:t", record.tokens_per_minute, True))
        if rl.model_requests_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}m:{self.key}:r", rl.model_requests_per_minute, False))
        if rl.model_tokens_per_minute:
            out.append(Bucket(f"{BUCKET_PREFIX}m:{self.key}:t", rl.model_tokens_per_minute, True))
        result = tuple(out)
        if len(self.bucket_cache) > 50_000:
            self.bucket_cache.clear()
        self.bucket_cache[ident] = result
        return result


@dataclass(slots=True)
class Compiled:
    config: GatewayConfig
    routes: list[CompiledRoute]
    by_model: dict[str, CompiledRoute]
    trusted: tuple[IPNetwork, ...]


@dataclass(slots=True)
class Caller:
    ident: str  # key id, jwt:<sub>, or ip:<address> for anonymous callers of public routes
    kind: str  # api_key | jwt | anonymous
    record: KeyRecord | None = None


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


def _fmt_ms(seconds: float) -> bytes:
    return b"%.3f" % (seconds * 1000.0)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        self.session: aiohttp.ClientSession | None = None
        self.settler = Settler(self.limiter)
        self.audit_lines: list[bytes] = []
        self.audit_file: BinaryIO | None = None
        self.poller: asyncio.Task[None] | None = None
        self.flusher: asyncio.Task[None] | None = None
        self.in_flight = 0
        self._rid = 0
        self._rid_prefix = os.urandom(4).hex()

    # ---------------------------------------------------------------- config and lifecycle

    def _compile(self, config: GatewayConfig) -> Compiled:
        routes = []
        by_model: dict[str, CompiledRoute] = {}
        for route in config.routes:
            jwt = None
            if route.auth.jwt is not None:
                jwt = JWTVerifier(route.auth.jwt, fetch=self._fetch_json)
            cr = CompiledRoute(
                route=route,
                key=f"{route.namespace}/{route.name}",
                networks=parse_networks(route.allowed_cidrs),
                jwt=jwt,
                urls={p: route.backend + p for p in PROXIED_PATHS},
            )
            routes.append(cr)
            for model in route.models:
                by_model[model] = cr
        m.ROUTES.set(len(routes))
        return Compiled(config, routes, by_model, parse_networks(config.trusted_proxies))

    async def _fetch_json(self, url: str) -> Any:
        assert self.session is not None
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            resp.raise_for_status()
            return orjson.loads(await resp.read())

    def check_reload(self) -> bool:
        """Reload the config and key files if they changed; keep the old ones if invalid."""
        cfg_sig, keys_sig = _stat_sig(self.settings.config_path), _stat_sig(self.settings.keys_path)
        changed = False
        if cfg_sig is not None and cfg_sig != self._sigs[0]:
            try:
                self.compiled = self._compile(load_config(self.settings.config_path))
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
        limits = self.compiled.config.limits
        connector = aiohttp.TCPConnector(
            limit=limits.upstream_connections, keepalive_timeout=60, ttl_dns_cache=60, enable_cleanup_closed=False
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=limits.connect_timeout_seconds, sock_read=limits.read_timeout_seconds
            ),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        if self.settings.audit:
            path = self.settings.audit_path
            self.audit_file = sys.stdout.buffer if path == "-" else open(path, "ab")  # noqa: SIM115
        self.poller = asyncio.create_task(self._poll())
        self.flusher = asyncio.create_task(self._flush_loop())

    async def shutdown(self) -> None:
        if self.poller is not None:
            self.poller.cancel()
        deadline = time.monotonic() + self.settings.drain_seconds
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.flusher is not None:
            self.flusher.cancel()
        await self.flush()
        if self.audit_file is not None and self.audit_file is not sys.stdout.buffer:
            self.audit_file.close()
        if self.session is not None:
            await self.session.close()
        self.limiter.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("flushing usage and audit lines failed")

    async def flush(self) -> None:
        """Write the batched audit lines and Redis usage/corrections (off the request path)."""
        if self.audit_lines and self.audit_file is not None:
            lines, self.audit_lines = self.audit_lines, []
            try:
                self.audit_file.write(b"".join(lines))
                self.audit_file.flush()
            except OSError as exc:
                log.error("cannot write audit lines: %s", exc)
        await self.settler.flush()

    # ---------------------------------------------------------------- ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path in PROXIED_PATHS:
                if scope["method"] != "POST":
                    await self._error(
                        send,
                        GatewayError(
                            405,
                            f"{path} accepts POST only",
                            "invalid_request_error",
                            "method_not_allowed",
                            [(b"allow", b"POST")],
                        ),
                    )
                    return
                await self._proxy(scope, receive, send, path)
                return
            await self._other(scope, receive, send, path)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            from .websocket import handle_websocket

            await handle_websocket(self, scope, receive, send)

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

    async def _send_json(
        self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        hdrs = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        if headers:
            hdrs += headers
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send: Send, err: GatewayError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = err.headers + (extra or [])
        await self._send_json(send, err.status, error_body(err.message, err.type, err.code), headers)

    async def _other(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        if path == "/v1/models" and method == "GET":
            await self._models(scope, send)
        elif path in ("/healthz", "/readyz") and method == "GET":
            await self._send_json(send, 200, b'{"status":"ok"}')
        elif path == "/metrics" and method == "GET":
            body, ctype = m.render()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        elif path == "/openapi.json" and method == "GET":
            await self._send_json(send, 200, OPENAPI_JSON)
        elif path in ("/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json"):
            await self._error(
                send,
                GatewayError(
                    405, f"{path} accepts GET only", "invalid_request_error", "method_not_allowed", [(b"allow", b"GET")]
                ),
            )
        else:
            await self._error(
                send, GatewayError(404, f"no such endpoint: {path}", "invalid_request_error", "not_found")
            )

    # ---------------------------------------------------------------- authentication

    @staticmethod
    def _headers(scope: Scope) -> tuple[str | None, str | None, int | None, str | None]:
        cred = xff = rid = None
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                v = value.decode("latin-1")
                if v[:7].lower() == "bearer ":
                    cred = v[7:].strip()
                elif cred is None:
                    cred = ""
            elif name == b"x-api-key":
                cred = value.decode("latin-1").strip()
            elif name == b"x-forwarded-for":
                xff = value.decode("latin-1") if xff is None else f"{xff},{value.decode('latin-1')}"
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
        return cred, xff, length, rid

    def _client(self, scope: Scope, xff: str | None) -> str:
        client = scope.get("client")
        peer = client[0] if client else ""
        return client_address(peer, xff, self.compiled.trusted)

    async def _authenticate(self, cr: CompiledRoute, cred: str | None, client: str, model: str) -> Caller:
        route = cr.route
        if not cred:
            if route.public:
                return Caller("ip:" + client, "anonymous")
            if cred == "":
                raise GatewayError(
                    401, "Authorization header must be 'Bearer <key>'", "authentication_error", "invalid_authorization"
                )
            raise GatewayError(
                401,
                "Missing credentials: send 'Authorization: Bearer <API key or JWT>' or 'x-api-key: <API key>'",
                "authentication_error",
                "missing_api_key",
            )
        if cred.startswith("rk_"):
            if not route.auth.api_keys:
                raise GatewayError(
                    401,
                    f"API keys are not accepted for model {model!r}; use a JWT",
                    "authentication_error",
                    "api_keys_disabled",
                )
            record = self.keys.lookup(cred)
            if record is None:
                raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
            if record.revoked:
                raise GatewayError(401, "This API key has been revoked", "authentication_error", "revoked_api_key")
            if record.expired(time.time()):
                raise GatewayError(401, "This API key has expired", "authentication_error", "expired_api_key")
            if not record.allows(model):
                raise GatewayError(
                    403, f"This API key may not use model {model!r}", "permission_error", "model_not_allowed"
                )
            return Caller(record.id, "api_key", record)
        if cr.jwt is None:
            raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
        try:
            claims = await cr.jwt.verify(cred)
        except JWTRejected as exc:
            raise GatewayError(401, f"Invalid token: {exc}", "authentication_error", exc.reason) from None
        return Caller("jwt:" + claims.subject, "jwt")

    # ---------------------------------------------------------------- /v1/models

    async def _models(self, scope: Scope, send: Send) -> None:
        cred, xff, _, _ = self._headers(scope)
        client = self._client(scope, xff)
        compiled = self.compiled
        record: KeyRecord | None = None
        if cred and cred.startswith("rk_"):
            record = self.keys.lookup(cred)
            if record is None or record.revoked or record.expired(time.time()):
                m.auth_failures_c("", "invalid_api_key").inc()
                await self._error(send, GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key"))
                return
        data = []
        jwt_ok = False
        for cr in compiled.routes:
            if not address_allowed(client, cr.networks):
                continue
            allowed: list[str] = []
            if record is not None and cr.route.auth.api_keys:
                allowed = [name for name in cr.route.models if record.allows(name)]
            elif cred and record is None and cr.jwt is not None:
                try:
                    await cr.jwt.verify(cred)
                    jwt_ok = True
                    allowed = list(cr.route.models)
                except JWTRejected:
                    allowed = []
            if cr.route.public and not allowed:
                allowed = list(cr.route.models)
            data += [{"id": name, "object": "model", "created": 0, "owned_by": cr.key} for name in allowed]
        if cred and record is None and not jwt_ok:
            m.auth_failures_c("", "invalid_credentials").inc()
            await self._error(
                send, GatewayError(401, "Invalid API key or token", "authentication_error", "invalid_api_key")
            )
            return
        if not cred and not data:
            m.auth_failures_c("", "missing_api_key").inc()
            await self._error(
                send,
                GatewayError(
                    401,
                    "Missing credentials: send 'Authorization: Bearer <API key or JWT>' or 'x-api-key: <API key>'",
                    "authentication_error",
                    "missing_api_key",
                ),
            )
            return
        await self._send_json(send, 200, orjson.dumps({"object": "list", "data": data}))

    # ---------------------------------------------------------------- proxy

    async def _read_body(self, receive: Receive, length: int | None, limit: int) -> bytes:
        if length is not None and (length > limit or length < 0):
            raise GatewayError(
                413, f"Request body too large: at most {limit} bytes", "invalid_request_error", "request_too_large"
            )
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body  # type: ignore[no-any-return]
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise asyncio.CancelledError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(
                    413,
                    f"Request body too large: at most {limit} bytes",
                    "invalid_request_error",
                    "request_too_large",
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _rate_limit(self, cr: CompiledRoute, caller: Caller, estimate: int, model: str) -> Decision:
        buckets = cr.buckets(caller.ident, caller.record)
        if not buckets:
            return Decision(True, 0, (), (), "none")
        costs = [estimate if b.tokens else 1 for b in buckets]
        decision = await self.limiter.take(buckets, costs)
        if decision is None:
            # Redis unreachable. failMode closed (the default): keep limiting, per replica, with the
            # in-memory limiter; failMode open: admit without limits until Redis returns.
            mode = cr.route.rate_limits.fail_mode
            m.fallback_c(cr.key, mode).inc()
            if mode == "open":
                return Decision(True, 0, (), (), "none")
            decision = self.limiter.take_fallback(buckets, costs)
        if decision.admitted:
            return decision
        headers = ratelimit_headers(decision)
        # Which limit said no: the first bucket below its cost.
        hit = buckets[0]
        for bucket, level, cost in zip(buckets, decision.levels, costs, strict=False):
            if level < cost:
                hit = bucket
                break
        what = "tokens" if hit.tokens else "requests"
        scope = "model" if ":m:" in hit.key else "key"
        m.rate_limited_c(cr.key, model, what).inc()
        if decision.wait_ms < 0:
            raise GatewayError(
                429,
                f"This request needs about {estimate} tokens but the {scope} limit is {hit.per_minute} tokens "
                "per minute; lower max_tokens or the prompt",
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                [(b"retry-after", b"60"), *headers],
            )
        retry = max(1, math.ceil(decision.wait_ms / 1000))
        raise GatewayError(
            429,
            f"Rate limit reached for {what} per minute ({scope} limit {hit.per_minute}/min); retry after {retry} s",
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            [(b"retry-after", str(retry).encode()), *headers],
        )

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        t0 = time.perf_counter()
        cred, xff, length, rid = self._headers(scope)
        compiled = self.compiled
        limits = compiled.config.limits
        self._rid += 1
        rid = rid or f"{self._rid_prefix}-{self._rid}"
        client = self._client(scope, xff)
        route_key = model = ""
        caller: Caller | None = None
        status = 0
        try:
            body = await self._read_body(receive, length, limits.max_body_bytes)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise GatewayError(
                    400, "Request body is not valid JSON", "invalid_request_error", "invalid_json"
                ) from None
            if not isinstance(payload, dict):
                raise GatewayError(400, "Request body must be a JSON object", "invalid_request_error", "invalid_json")
            model_v = payload.get("model")
            if not isinstance(model_v, str) or not model_v:
                raise GatewayError(400, "'model' is required (a string)", "invalid_request_error", "missing_model")
            model = model_v
            cr = compiled.by_model.get(model)
            if cr is None:
                raise GatewayError(
                    404,
                    f"The model '{model}' does not exist or you do not have access to it",
                    "invalid_request_error",
                    "model_not_found",
                )
            route_key = cr.key
            if cr.networks and not address_allowed(client, cr.networks):
                m.auth_failures_c(route_key, "ip_not_allowed").inc()
                raise GatewayError(
                    403,
                    f"Requests from {client} are not allowed for model {model!r} (IP allow-list)",
                    "permission_error",
                    "ip_not_allowed",
                )
            try:
                caller = await self._authenticate(cr, cred, client, model)
            except GatewayError as err:
                m.auth_failures_c(route_key, err.code).inc()
                raise
            embeddings = PROXIED_PATHS[path]
            stream = payload.get("stream") is True
            max_tokens = payload.get("max_tokens")
            if max_tokens is None:
                max_tokens = payload.get("max_completion_tokens")
            estimate = estimate_tokens(len(body), max_tokens, limits.default_max_tokens, embeddings)
            decision = await self._rate_limit(cr, caller, estimate, model)
            injected = False
            if stream:
                opts = payload.get("stream_options")
                if not (isinstance(opts, dict) and opts.get("include_usage") is True):
                    payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
                    body = orjson.dumps(payload)
                    injected = True
            status = await self._forward(
                scope,
                receive,
                send,
                cr,
                body,
                path,
                rid,
                client,
                t0,
                decision,
                caller,
                model,
                estimate,
                stream,
                injected,
                payload if compiled.config.log_prompts else None,
            )
        except GatewayError as err:
            status = err.status
            await self._error(send, err, [(b"x-request-id", rid.encode()), self._overhead_header(t0, 0.0)])
            m.requests_c(route_key, model, str(status)).inc()
            if self.settings.audit:
                self._audit(
                    rid, caller, client, route_key, model, status, None, time.perf_counter() - t0, 0.0, err.code
                )

    @staticmethod
    def _overhead_header(t0: float, upstream: float) -> tuple[bytes, bytes]:
        return (b"x-rayleigh-overhead-ms", _fmt_ms(time.perf_counter() - t0 - upstream))

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        cr: CompiledRoute,
        body: bytes,
        path: str,
        rid: str,
        client: str,
        t0: float,
        decision: Decision,
        caller: Caller,
        model: str,
        estimate: int,
        stream: bool,
        injected: bool,
        prompt: dict[str, Any] | None,
    ) -> int:
        session = self.session
        assert session is not None
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": rid,
            "X-Forwarded-For": client,
        }
        if stream:
            headers["Accept"] = "text/event-stream"
        rl_headers = ratelimit_headers(decision) if decision.buckets else []
        self.in_flight += 1
        m.IN_FLIGHT.inc()
        usage: tuple[int, int] | None = None
        upstream_time = 0.0
        status = 502
        error_code: str | None = None
        try:
            t_up = time.perf_counter()
            try:
                resp_cm = session.post(cr.urls[path], data=body, headers=headers)
                resp = await resp_cm.__aenter__()
            except TimeoutError:
                m.upstream_errors_c(cr.key, "timeout").inc()
                raise GatewayError(
                    504, f"The backend of model {model!r} did not answer in time", "upstream_error", "upstream_timeout"
                ) from None
            except aiohttp.ClientError as exc:
                m.upstream_errors_c(cr.key, "connect").inc()
                raise GatewayError(
                    502,
                    f"The backend of model {model!r} is unreachable: {exc.__class__.__name__}",
                    "upstream_error",
                    "upstream_unavailable",
                ) from None
            try:
                status = resp.status
                is_sse = stream and status == 200 and resp.content_type == "text/event-stream"
                if not is_sse:
                    try:
                        data = await resp.read()
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        m.upstream_errors_c(cr.key, "read").inc()
                        raise GatewayError(
                            502,
                            f"The backend of model {model!r} failed: {exc.__class__.__name__}",
                            "upstream_error",
                            "upstream_failed",
                        ) from None
                    upstream_time = time.perf_counter() - t_up
                    if status >= 500:
                        m.upstream_errors_c(cr.key, "status_5xx").inc()
                    if status == 200:
                        usage = usage_from_json(data)
                    out_headers = self._response_headers(resp, rid, rl_headers)
                    out_headers.append((b"content-length", str(len(data)).encode()))
                    out_headers.append(self._overhead_header(t0, upstream_time))
                    await send({"type": "http.response.start", "status": status, "headers": out_headers})
                    await send({"type": "http.response.body", "body": data})
                else:
                    upstream_time = time.perf_counter() - t_up
                    out_headers = self._response_headers(resp, rid, rl_headers)
                    out_headers.append(self._overhead_header(t0, upstream_time))
                    usage, error_code = await self._stream(receive, send, resp, out_headers, injected, cr, model, t0)
            finally:
                await resp_cm.__aexit__(None, None, None)
        except GatewayError as err:
            status = err.status
            error_code = err.code
            await self._error(send, err, [(b"x-request-id", rid.encode()), self._overhead_header(t0, upstream_time)])
        finally:
            self.in_flight -= 1
            m.IN_FLIGHT.dec()
            elapsed = time.perf_counter() - t0
            m.requests_c(cr.key, model, str(status)).inc()
            m.request_seconds_c(cr.key, model).observe(elapsed)
            m.overhead_c(cr.key).observe(max(0.0, elapsed - upstream_time))
            self._after(decision, caller, model, estimate, usage, status)
            if self.settings.audit:
                self._audit(
                    rid, caller, client, cr.key, model, status, usage, elapsed, upstream_time, error_code, prompt
                )
        return status

    @staticmethod
    def _response_headers(
        resp: aiohttp.ClientResponse, rid: str, rl_headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        out = []
        for k, v in resp.raw_headers:
            name = k.lower()
            if name not in DROP_RESPONSE_HEADERS and not name.startswith(b"x-ratelimit-"):
                out.append((name, v))
        out.append((b"x-request-id", rid.encode()))
        out += rl_headers
        return out

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        resp: aiohttp.ClientResponse,
        out_headers: list[tuple[bytes, bytes]],
        injected: bool,
        cr: CompiledRoute,
        model: str,
        t0: float,
    ) -> tuple[tuple[int, int] | None, str | None]:
        """Pass SSE events through as they arrive; read the usage event; stop on disconnect."""
        task = asyncio.current_task()
        assert task is not None
        state = {"done": False, "disconnected": False}

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        state["disconnected"] = True
                        task.cancel()
                    return

        watcher = asyncio.create_task(watch())
        usage: tuple[int, int] | None = None
        error_code: str | None = None
        pending = b""
        first = True
        try:
            await send({"type": "http.response.start", "status": 200, "headers": out_headers})
            try:
                async for chunk in resp.content.iter_any():
                    data = pending + chunk if pending else chunk
                    cut = data.rfind(b"\n\n")
                    if cut < 0:
                        if len(data) > 1 << 20:  # not SSE framing after all: do not hold it
                            pending = b""
                            await send({"type": "http.response.body", "body": data, "more_body": True})
                        else:
                            pending = data
                        continue
                    if cut + 2 == len(data):  # the usual case: whole events, no copy
                        out, pending = data, b""
                    else:
                        out, pending = data[: cut + 2], data[cut + 2 :]
                    if b'"usage"' in out:
                        out, found = self._scan_usage(out, injected)
                        usage = found or usage
                    if out:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                        if first:
                            first = False
                            m.ttfb_c(cr.key, model).observe(time.perf_counter() - t0)
            except (aiohttp.ClientError, TimeoutError) as exc:
                m.upstream_errors_c(cr.key, "stream_broken").inc()
                error_code = "upstream_stream_broken"
                event = error_body(
                    f"The backend of model {model!r} failed mid-stream: {exc.__class__.__name__}",
                    "upstream_error",
                    "upstream_stream_broken",
                )
                pending = b""
                await send({"type": "http.response.body", "body": SSE_DATA + event + b"\n\n", "more_body": True})
            state["done"] = True
            await send({"type": "http.response.body", "body": pending, "more_body": False})
        except asyncio.CancelledError:
            if not state["disconnected"]:
                raise
            task.uncancel()
            m.disconnects_c(cr.key).inc()
            error_code = "client_disconnected"
            resp.close()  # drop the upstream connection: the backend sees the cancel
        finally:
            state["done"] = True
            watcher.cancel()
        return usage, error_code

    @staticmethod
    def _scan_usage(out: bytes, strip: bool) -> tuple[bytes, tuple[int, int] | None]:
        found: tuple[int, int] | None = None
        kept: list[bytes] = []
        dropped = False
        for event in out.split(b"\n\n"):
            if not event:
                continue
            if b'"usage"' in event:
                line = event.strip()
                if line.startswith(SSE_DATA):
                    try:
                        obj = orjson.loads(line[len(SSE_DATA) :])
                    except orjson.JSONDecodeError:
                        obj = None
                    if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
                        u = obj["usage"]
                        found = (int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                        if strip and not obj.get("choices"):
                            dropped = True
                            continue
            kept.append(event)
        if not dropped:
            return out, found
        return b"".join(e + b"\n\n" for e in kept), found

    # ---------------------------------------------------------------- after the response

    def _after(
        self,
        decision: Decision,
        caller: Caller,
        model: str,
        estimate: int,
        usage: tuple[int, int] | None,
        status: int,
    ) -> None:
        if usage is not None:
            prompt, completion = usage
            m.tokens_c(caller.ident, model, "prompt").inc(prompt)
            m.tokens_c(caller.ident, model, "completion").inc(completion)
            actual = prompt + completion
        else:
            prompt = completion = 0
            actual = 0 if status != 200 else estimate  # no usage reported: keep the estimate
        usage_fields = [(f"{model}|requests", 1)]
        if usage is not None:
            usage_fields += [(f"{model}|prompt_tokens", prompt), (f"{model}|completion_tokens", completion)]
        self.settler.add(decision, estimate - actual, USAGE_PREFIX + caller.ident, usage_fields)

    def _audit(
        self,
        rid: str,
        caller: Caller | None,
        client: str,
        route: str,
        model: str,
        status: int,
        usage: tuple[int, int] | None,
        elapsed: float,
        upstream: float,
        error: str | None,
        prompt: dict[str, Any] | None = None,
    ) -> None:
        if self.audit_file is None:
            return
        record: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": rid,
            "key_id": caller.ident if caller else None,
            "auth": caller.kind if caller else None,
            "client": client,
            "route": route,
            "model": model,
            "status": status,
            "prompt_tokens": usage[0] if usage else None,
            "completion_tokens": usage[1] if usage else None,
            "latency_ms": round(elapsed * 1000, 3),
            "overhead_ms": round((elapsed - upstream) * 1000, 3),
        }
        if error:
            record["error"] = error
        if prompt is not None:
            record["messages"] = prompt.get("messages")
            record["prompt"] = prompt.get("prompt")
        self.audit_lines.append(orjson.dumps(record) + b"\n")
        if len(self.audit_lines) > 10_000:  # the writer is stuck: keep memory bounded
            del self.audit_lines[:5_000]


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
        )
    )

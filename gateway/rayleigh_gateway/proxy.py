"""The upstream call of an admitted request: pooled aiohttp connections to the backends, the
answer passed through (whole, or SSE events as they arrive, usage read on the way), the
request's metrics, then usage and audit through the `Recorder`. Also the answer to a request
that admission refused.

Each backend has its own connection pool (`limits.upstreamConnections` connections), so slow
streams of one model cannot take the connections of the others; and a stream whose client reads
nothing for `limits.sendTimeoutSeconds` is cut, which releases its backend connection (the
backend sees the cancel) instead of holding it for as long as the client likes.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from . import metrics as m
from .asgi import Message, Send, send_error
from .audit import Recorder
from .context import RequestContext
from .errors import GatewayError, error_body
from .hold import Hold
from .policy import ratelimit_headers, usage_from_json
from .routes import Limits
from .server import ABORT

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
Headers = list[tuple[bytes, bytes]]


class ClientTooSlow(Exception):
    """The client read nothing of its answer for the send timeout."""


class Upstream:
    """The backends' connection pools (one per backend) and the requests in flight to them."""

    def __init__(self, recorder: Recorder, wake_url: str | None = None) -> None:
        self.recorder = recorder
        self.sessions: dict[str, aiohttp.ClientSession] = {}  # backend base URL -> its pool
        self.limits = Limits()
        self.in_flight = 0
        self.wake_url = wake_url
        self.hold: Hold | None = None

    def open(self, limits: Limits) -> None:
        self.limits = limits
        if self.hold is not None:
            self.hold.max_queue, self.hold.max_wait = limits.cold_start_queue, limits.cold_start_wait_seconds
        elif limits.cold_start_queue > 0:
            self.hold = Hold(self.probe, self.wake, limits.cold_start_queue, limits.cold_start_wait_seconds)

    async def probe(self, base: str) -> bool:
        """Is the backend `base` serving? (GET /v1/models answered 200)"""
        try:
            async with self.session(base).get(base + "/v1/models", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wake(self, key: str) -> None:
        """Ask the operator to scale `key` (namespace/name) up from zero (POST --wake-url)."""
        if not self.wake_url:
            return
        namespace, _, name = key.partition("/")
        async with self.session(self.wake_url).post(
            self.wake_url, json={"namespace": namespace, "name": name}, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            m.cold_wakes_c(str(resp.status)).inc()
            if resp.status >= 300:
                raise RuntimeError(f"wake endpoint answered {resp.status}")

    def session(self, backend: str) -> aiohttp.ClientSession:
        """The pool of `backend`, made on first use with the limits current then."""
        session = self.sessions.get(backend)
        if session is None:
            limits = self.limits
            connector = aiohttp.TCPConnector(
                limit=limits.upstream_connections,
                limit_per_host=limits.upstream_connections,
                keepalive_timeout=60,
                ttl_dns_cache=60,
                enable_cleanup_closed=False,
            )
            session = self.sessions[backend] = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=limits.connect_timeout_seconds, sock_read=limits.read_timeout_seconds
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return session

    async def close(self) -> None:
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            await session.close()

    async def reject(self, ctx: RequestContext, err: GatewayError) -> None:
        """Answer a request that admission refused; count it and audit it."""
        await send_error(ctx.send, err, [(b"x-request-id", ctx.rid.encode()), ctx.overhead_header(0.0)])
        m.requests_c(ctx.route_key, ctx.model, str(err.status)).inc()
        recorder = self.recorder
        if recorder.enabled:
            recorder.audit(ctx, err.status, None, time.perf_counter() - ctx.t0, 0.0, err.code)

    async def _held(self, hold: Hold, key: str, base: str) -> None:
        m.COLD_HELD.inc()
        t = time.perf_counter()
        try:
            await hold.wait(key, base)
        finally:
            m.COLD_HELD.dec()
            m.COLD_HOLD_SECONDS.observe(time.perf_counter() - t)

    async def forward(self, ctx: RequestContext) -> int:
        """Send an admitted request upstream and its answer to the client; returns the status."""
        cr, decision, model, rid = ctx.route, ctx.decision, ctx.model, ctx.rid
        assert cr is not None and decision is not None
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": rid,
            "X-Forwarded-For": ctx.client,
        }
        if ctx.stream:
            headers["Accept"] = "text/event-stream"
        rl_headers = ratelimit_headers(decision) if decision.buckets else []
        send = ctx.send
        self.in_flight += 1
        m.IN_FLIGHT.inc()
        usage: tuple[int, int] | None = None
        upstream_time = 0.0
        status = 502
        error_code: str | None = None
        try:
            target = cr.pick(ctx.caller.ident if ctx.caller is not None else f"ip:{ctx.client}")
            if target is None:
                raise GatewayError(
                    503,
                    f"Model {model!r} has no backend with a traffic weight above 0",
                    "upstream_error",
                    "no_traffic_weight",
                )
            m.backend_requests_c(cr.key, target.name).inc()
            if cr.route.backends:
                ctx.backend = target.name
            session = self.session(target.base)
            hold = self.hold
            if hold is not None and cr.route.scale_to_zero:
                hold.touch(target.name)  # activity: the operator's idle window restarts
                # A cold start in progress here holds every request for that backend until the probe
                # sees it serve, even once the route's coldStart has cleared: the operator clears it
                # at the wake, and a backend that accepts connections (Serve's proxy) but has no
                # replica yet would queue it without the hold's bounds.
                if cr.route.cold_start or hold.held(target.name):
                    await self._held(hold, target.name, target.base)
            t_up = time.perf_counter()
            try:
                try:
                    resp_cm = session.post(target.urls[ctx.path], data=ctx.body, headers=headers)
                    resp = await resp_cm.__aenter__()
                except aiohttp.ClientConnectorError:
                    if hold is None or not (cr.route.scale_to_zero or cr.route.cold_start):
                        raise
                    # Refused: nothing was sent, so the request can wait for the backend and go again.
                    hold.forget_ready(target.name)
                    await self._held(hold, target.name, target.base)
                    t_up = time.perf_counter()
                    resp_cm = session.post(target.urls[ctx.path], data=ctx.body, headers=headers)
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
                is_sse = ctx.stream and status == 200 and resp.content_type == "text/event-stream"
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
                    out_headers = response_headers(resp, rid, rl_headers)
                    out_headers.append((b"content-length", str(len(data)).encode()))
                    out_headers.append(ctx.overhead_header(upstream_time))
                    await send({"type": "http.response.start", "status": status, "headers": out_headers})
                    await send({"type": "http.response.body", "body": data})
                else:
                    upstream_time = time.perf_counter() - t_up
                    out_headers = response_headers(resp, rid, rl_headers)
                    out_headers.append(ctx.overhead_header(upstream_time))
                    usage, error_code = await relay_sse(ctx, resp, out_headers, self.limits.send_timeout_seconds)
            finally:
                await resp_cm.__aexit__(None, None, None)
        except GatewayError as err:
            status = err.status
            error_code = err.code
            await send_error(send, err, [(b"x-request-id", rid.encode()), ctx.overhead_header(upstream_time)])
        finally:
            self.in_flight -= 1
            m.IN_FLIGHT.dec()
            elapsed = time.perf_counter() - ctx.t0
            m.requests_c(cr.key, model, str(status)).inc()
            m.request_seconds_c(cr.key, model).observe(elapsed)
            m.overhead_c(cr.key).observe(max(0.0, elapsed - upstream_time))
            recorder = self.recorder
            recorder.settle(ctx, usage, status)
            if recorder.enabled:
                recorder.audit(ctx, status, usage, elapsed, upstream_time, error_code)
        return status


def response_headers(resp: aiohttp.ClientResponse, rid: str, rl_headers: Headers) -> Headers:
    """The upstream's headers less hop-by-hop and its own rate-limit ones, plus the gateway's."""
    out = []
    for k, v in resp.raw_headers:
        name = k.lower()
        if name not in DROP_RESPONSE_HEADERS and not name.startswith(b"x-ratelimit-"):
            out.append((name, v))
    out.append((b"x-request-id", rid.encode()))
    out += rl_headers
    return out


class TimedSend:
    """`send` that raises ClientTooSlow when one message has not been taken by the client after
    `seconds` (uvicorn's send waits while the connection's write buffer is full). One watchdog
    timer per stream, not one per message: a message costs two clock reads."""

    __slots__ = ("fired", "handle", "loop", "seconds", "send", "started", "task")

    def __init__(self, send: Send, seconds: float) -> None:
        self.send = send
        self.seconds = seconds
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.started = 0.0  # loop time the send in progress began; 0.0: none
        self.fired = False
        self.handle = self.loop.call_later(seconds, self._check)

    async def __call__(self, message: Message) -> None:
        self.started = self.loop.time()
        try:
            await self.send(message)
        except asyncio.CancelledError:
            if self.fired and self.task is not None:
                self.task.uncancel()
                raise ClientTooSlow from None
            raise
        finally:
            self.started = 0.0

    def _check(self) -> None:
        started = self.started
        if started and self.loop.time() - started >= self.seconds and self.task is not None:
            self.fired = True
            self.task.cancel()  # lands in the blocked send (the only place it can be now)
            return
        wait = self.seconds - (self.loop.time() - started) if started else self.seconds
        self.handle = self.loop.call_later(max(wait, 0.05), self._check)

    def close(self) -> None:
        self.handle.cancel()


async def relay_sse(
    ctx: RequestContext, resp: aiohttp.ClientResponse, out_headers: Headers, send_timeout: float = 30.0
) -> tuple[tuple[int, int] | None, str | None]:
    """Pass SSE events through as they arrive; read the usage event; stop on disconnect, or cut a
    client that does not read for `send_timeout` seconds. Returns (usage, error code)."""
    receive = ctx.receive
    send = timed = TimedSend(ctx.send, send_timeout)
    cr = ctx.route
    assert cr is not None
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
                    out, found = scan_usage(out, ctx.injected)
                    usage = found or usage
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    if first:
                        first = False
                        m.ttfb_c(cr.key, ctx.model).observe(time.perf_counter() - ctx.t0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            m.upstream_errors_c(cr.key, "stream_broken").inc()
            error_code = "upstream_stream_broken"
            event = error_body(
                f"The backend of model {ctx.model!r} failed mid-stream: {exc.__class__.__name__}",
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
    except ClientTooSlow:
        state["done"] = True
        m.disconnects_c(cr.key).inc()
        error_code = "client_too_slow"
        resp.close()  # release the backend connection (the backend sees the cancel)
        abort = ctx.scope.get(ABORT)
        if abort is not None:
            abort()  # drop the client's connection (server.py); elsewhere uvicorn closes it
    finally:
        state["done"] = True
        watcher.cancel()
        timed.close()
    return usage, error_code


def scan_usage(out: bytes, strip: bool) -> tuple[bytes, tuple[int, int] | None]:
    """The usage in whole SSE events `out`; with `strip`, drop a usage-only event (the client
    did not ask for it: the gateway added stream_options.include_usage)."""
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

"""The ASGI middleware in every replica: Rayleigh's request metrics and the SSE stream coalescer.

Imports nothing heavy (Ray's metrics only when a replica creates them), so tests load it alone.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Latency buckets (seconds) for whole requests: streams of a few tokens to minutes-long generations.
LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
# Only these routes get their own label value; anything else is "other" (bounded cardinality).
KNOWN_ROUTES = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/health",
    "/v1/embeddings",
    "/tokenize",
    "/detokenize",
}


def route_label(scope: Scope) -> str:
    """The `route` label of a request: its path within the application (an application on a route
    prefix, e.g. a rollout's second slot `/b`, sees `path` = prefix + route with the prefix in
    `root_path`, as ASGI servers pass it), one of KNOWN_ROUTES, else "other"."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", "")).rstrip("/")
    if root and path.startswith(root + "/"):
        path = path[len(root) :]
    return path if path in KNOWN_ROUTES else "other"


class RequestMetrics:
    """Rayleigh's per-replica request metrics, exported through Ray's metrics agent.

    Ray prefixes application metrics with `ray_` on its Prometheus endpoint, so these appear as
    `ray_rayleigh_serving_*` (documented in docs/metrics/serving.md).
    """

    def __init__(self, model: str) -> None:
        from ray.util import metrics

        self.model = model
        self.in_flight = metrics.Gauge(
            "rayleigh_serving_requests_in_flight",
            description="Requests this replica is processing right now (streams count until they end).",
            tag_keys=("model", "route"),
        )
        self.requests = metrics.Counter(
            "rayleigh_serving_requests",
            description="Requests finished by this replica, by route and HTTP status code.",
            tag_keys=("model", "route", "code"),
        )
        self.errors = metrics.Counter(
            "rayleigh_serving_errors",
            description="Requests that ended with an HTTP error status (4xx/5xx) or a mid-stream error "
            "event or a client disconnect (code 499), by route and code.",
            tag_keys=("model", "route", "code"),
        )
        self.latency = metrics.Histogram(
            "rayleigh_serving_request_duration_seconds",
            description="Time from request arrival at the replica to the last byte of its response.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("model", "route", "code"),
        )
        self._in_flight: dict[str, int] = {}

    def start(self, route: str) -> None:
        n = self._in_flight.get(route, 0) + 1
        self._in_flight[route] = n
        self.in_flight.set(n, tags={"model": self.model, "route": route})

    def finish(self, route: str, code: int, seconds: float) -> None:
        n = max(0, self._in_flight.get(route, 1) - 1)
        self._in_flight[route] = n
        self.in_flight.set(n, tags={"model": self.model, "route": route})
        tags = {"model": self.model, "route": route, "code": str(code)}
        self.requests.inc(1, tags=tags)
        self.latency.observe(seconds, tags=tags)
        if code >= 400:
            self.errors.inc(1, tags=tags)


class StreamCoalescer:
    """Sends an SSE stream's first chunk at once, then at most one body message per interval.

    Every body message a replica sends crosses Ray (replica -> proxy) on its own; at one token per
    message that is most of Ray's per-token cost. Holding later chunks for `interval_s` merges them
    (SSE events are self-delimiting, so concatenated bodies are still valid) without delaying the
    first token. The last message flushes everything immediately.
    """

    def __init__(self, send: Send, interval_s: float) -> None:
        self._send = send
        self._interval = interval_s
        self._buf: list[bytes] = []
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    async def __call__(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            await self._send(message)
            return
        now = self._loop.time()
        if not message.get("more_body", False):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            body = b"".join([*self._buf, message.get("body", b"")])
            self._buf.clear()
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        if not self._buf and now - self._last >= self._interval:
            self._last = now
            await self._send(message)
            return
        self._buf.append(message.get("body", b""))
        if self._timer is None:
            delay = max(0.0, self._interval - (now - self._last))
            self._timer = self._loop.call_later(delay, self._schedule_flush)

    def _schedule_flush(self) -> None:
        self._timer = None
        if self._buf:
            body = b"".join(self._buf)
            self._buf.clear()
            self._last = self._loop.time()
            self._loop.create_task(self._flush(body))

    async def _flush(self, body: bytes) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": True})


class MetricsMiddleware:
    """Counts in-flight requests, latency and errors (including errors inside an SSE stream), and
    coalesces streamed chunks when a batching interval is set."""

    def __init__(self, app: ASGIApp, *, metrics: RequestMetrics, stream_interval_s: float = 0.0) -> None:
        self.app = app
        self.metrics = metrics
        self.stream_interval_s = stream_interval_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope)
        start = time.monotonic()
        status = 500
        stream_error = False
        finished = False
        out: Send = send

        async def send_wrapper(message: Message) -> None:
            nonlocal status, stream_error, finished, out
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.stream_interval_s > 0 and any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                    for k, v in message.get("headers", [])
                ):
                    out = StreamCoalescer(send, self.stream_interval_s)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                # vLLM reports an engine error inside a stream as an SSE event with an "error" key.
                if status == 200 and body.startswith(b'data: {"error"'):
                    stream_error = True
                if not message.get("more_body", False):
                    finished = True
            await out(message)

        self.metrics.start(route)
        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            # Cancelled (client went away) or crashed before the response ended.
            status = 499 if status == 200 or not finished else status
            raise
        finally:
            code = 500 if stream_error and status == 200 else status
            if not finished and code < 400:
                code = 499
            self.metrics.finish(route, code, time.monotonic() - start)

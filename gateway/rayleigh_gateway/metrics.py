"""Prometheus metrics of the gateway (`rayleigh_gateway_*`, documented in docs/metrics/gateway.md).

Every label value comes from the configuration or a fixed set, never from a request as sent: the
`model` label is a configured model name, `UNKNOWN_MODEL` for names no route serves, or "" when
the request named none (or an invalid one); there is no per-caller label (per-caller usage is in
Redis and the audit line). Label children are cached forever, so this is what bounds them.

With several uvicorn workers, `rayleigh gateway` sets PROMETHEUS_MULTIPROC_DIR before the
workers start, and /metrics aggregates every worker's files (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

UNKNOWN_MODEL = "unknown"  # the model label of requests for a (valid) name that no route serves

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)

REQUESTS = Counter("rayleigh_gateway_requests_total", "Requests answered by the gateway.", ["route", "model", "code"])
REQUEST_SECONDS = Histogram(
    "rayleigh_gateway_request_duration_seconds",
    "Time from request received to response end (streams: to the last byte).",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
OVERHEAD_SECONDS = Histogram(
    "rayleigh_gateway_overhead_seconds",
    "Time spent in the gateway itself, upstream time excluded (as in x-rayleigh-overhead-ms).",
    ["route"],
    buckets=OVERHEAD_BUCKETS,
)
TTFB_SECONDS = Histogram(
    "rayleigh_gateway_stream_first_byte_seconds",
    "Streaming requests: time from request received to the first body byte sent to the client.",
    ["route", "model"],
    buckets=LATENCY_BUCKETS,
)
TOKENS = Counter(
    "rayleigh_gateway_tokens_total",
    "Tokens used, from the upstream's usage report, by route and model (per caller: Redis usage, audit).",
    ["route", "model", "kind"],
)
RATE_LIMITED = Counter(
    "rayleigh_gateway_rate_limited_total",
    "Requests rejected with 429 by a rate limit.",
    ["route", "model", "limit"],
)
AUTH_FAILURES = Counter(
    "rayleigh_gateway_auth_failures_total",
    "Requests rejected by authentication or authorization (401/403), by reason.",
    ["route", "reason"],
)
UPSTREAM_ERRORS = Counter(
    "rayleigh_gateway_upstream_errors_total",
    "Upstream failures: connect, timeout, 5xx status, stream broken mid-way.",
    ["route", "kind"],
)
REDIS_ERRORS = Counter("rayleigh_gateway_redis_errors_total", "Failed Redis calls (rate limit take/settle).", ["op"])
RATELIMIT_FALLBACK = Counter(
    "rayleigh_gateway_ratelimit_fallback_total",
    "Requests decided while Redis was unreachable: mode=closed went through the in-memory limiter, "
    "mode=open was admitted without limits.",
    ["route", "mode"],
)
CLIENT_DISCONNECTS = Counter(
    "rayleigh_gateway_client_disconnects_total",
    "Streams whose client went away; the upstream request was cancelled.",
    ["route"],
)
CONFIG_RELOADS = Counter(
    "rayleigh_gateway_config_reloads_total",
    "Reloads of the route config or key file, by result (ok, error).",
    ["file", "result"],
)
BACKEND_REQUESTS = Counter(
    "rayleigh_gateway_backend_requests_total",
    "Requests sent to each backend of a route (a traffic split's live ratio); backend is namespace/name.",
    ["route", "backend"],
)
FAIR_QUEUE = Gauge(
    "rayleigh_gateway_fair_queue_length",
    "Requests waiting in a saturated route's fair-sharing queue, by priority class.",
    ["route", "priority"],
    multiprocess_mode="livesum",
)
FAIR_WAIT_SECONDS = Histogram(
    "rayleigh_gateway_fair_queue_wait_seconds",
    "Time admitted requests waited in a route's fair-sharing queue, by priority class (requests that did "
    "not wait are not observed).",
    ["route", "priority"],
    buckets=LATENCY_BUCKETS,
)
FAIR_REJECTIONS = Counter(
    "rayleigh_gateway_fair_queue_rejections_total",
    "Requests refused by fair sharing: reason=queue_full (429) or queue_timeout (503), by priority class.",
    ["route", "priority", "reason"],
)
IN_FLIGHT = Gauge(
    "rayleigh_gateway_in_flight_requests",
    "Requests being proxied now.",
    multiprocess_mode="livesum",
)
REDIS_UP = Gauge(
    "rayleigh_gateway_redis_up",
    "1 when the rate limiter reaches Redis, 0 while it falls back.",
    multiprocess_mode="livemin",
)
ROUTES = Gauge("rayleigh_gateway_routes", "Routes in the loaded config.", multiprocess_mode="livemax")
ROUTE_CONFLICTS = Gauge(
    "rayleigh_gateway_route_conflicts",
    "Routes of the loaded config that are not served because an older route already serves one of their model names.",
    multiprocess_mode="livemax",
)
COLD_HELD = Gauge(
    "rayleigh_gateway_cold_start_held_requests",
    "Requests held now while their model starts from zero replicas.",
    multiprocess_mode="livesum",
)
COLD_HOLD_SECONDS = Histogram(
    "rayleigh_gateway_cold_start_hold_seconds",
    "How long a request was held for its model's cold start (answered or given up).",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
COLD_WAKES = Counter(
    "rayleigh_gateway_cold_start_wakes_total",
    "Wake signals sent to the operator, by the wake endpoint's HTTP status.",
    ["status"],
)


class LabelCache:
    """`metric.labels(...)` takes a lock and builds tuples; cache the children per label tuple."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        return child


requests_c = LabelCache(REQUESTS)
request_seconds_c = LabelCache(REQUEST_SECONDS)
overhead_c = LabelCache(OVERHEAD_SECONDS)
ttfb_c = LabelCache(TTFB_SECONDS)
tokens_c = LabelCache(TOKENS)
rate_limited_c = LabelCache(RATE_LIMITED)
auth_failures_c = LabelCache(AUTH_FAILURES)
upstream_errors_c = LabelCache(UPSTREAM_ERRORS)
redis_errors_c = LabelCache(REDIS_ERRORS)
fallback_c = LabelCache(RATELIMIT_FALLBACK)
disconnects_c = LabelCache(CLIENT_DISCONNECTS)
reloads_c = LabelCache(CONFIG_RELOADS)
backend_requests_c = LabelCache(BACKEND_REQUESTS)
fair_queue_c = LabelCache(FAIR_QUEUE)
fair_wait_c = LabelCache(FAIR_WAIT_SECONDS)
fair_rejections_c = LabelCache(FAIR_REJECTIONS)
cold_wakes_c = LabelCache(COLD_WAKES)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

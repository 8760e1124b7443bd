"""Rayleigh's Grafana dashboards as code (grafana-foundation-sdk).

    python dashboards/build.py           # write dashboards/*.json and charts/rayleigh/files/dashboards/*.json
    python dashboards/build.py --check   # exit 1 when the checked-in JSON differs from this code

(`python charts/sync.py` runs this too.) Every panel queries metrics documented in docs/metrics/*.md;
tests/chart/test_monitoring.py fails on drift, on a PromQL expression Prometheus cannot parse
(promtool), on an undocumented metric, and on a gateway/operator metric or label the code lacks;
tests/chart/test_prometheus.py runs every expression in a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIRS = (ROOT / "dashboards", ROOT / "charts" / "rayleigh" / "files" / "dashboards")

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# Every dashboard has a `namespace` and a `model` variable; panels filter on them where their metric
# carries the label (docs/METRICS.md lists each metric's labels).
NS = 'namespace=~"$namespace"'
MODEL = f'{NS}, model_name=~"$model"'


def _query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        q = q.legend_format(legend)
    return q


def ts(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str = "short",
    width: int = 12,
    stack: bool = False,
) -> timeseries.Panel:
    """A time series panel; `queries` is a list of (PromQL, legend)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .min(0)
    )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_query(expr, legend, chr(ord("A") + i)))
    if stack:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    return panel


def single(title: str, description: str, expr: str, unit: str = "short", width: int = 6) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(4)
        .with_target(_query(expr))
    )


def _datasource_var() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def _label_var(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _namespace_var(metric: str) -> dashboard.QueryVariable:
    return _label_var("namespace", "Namespace", f"label_values({metric}, namespace)")


def _base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["rayleigh"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(_datasource_var())
    )


def _q(quantile: str, metric: str, selector: str, by: str = "") -> str:
    group = f"le{', ' + by if by else ''}"
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({quantile}, sum by ({group}) (rate({metric}_bucket{matchers}[{RATE}])))"


# --- Rayleigh / Models: vLLM engine metrics exported by Ray (`ray_` prefix) ---------------------


def models() -> dashboard.Dashboard:
    d = _base(
        "rayleigh-models",
        "Rayleigh / Models",
        "Per-model serving: traffic, latency (TTFT, inter-token, end to end), tokens, queues, KV cache and replicas.",
    )
    d = d.with_variable(_namespace_var("ray_vllm_num_requests_running"))
    d = d.with_variable(
        _label_var("model", "Model", f"label_values(ray_vllm_num_requests_running{{{NS}}}, model_name)")
    )
    d = d.with_row(dashboard.Row("Traffic"))
    d = d.with_panel(
        ts(
            "Requests/s",
            "Finished requests per second, by model and finish reason (vLLM).",
            [
                (
                    f"sum by (model_name, finished_reason) (rate(ray_vllm_request_success_total{{{MODEL}}}[{RATE}]))",
                    "{{model_name}} {{finished_reason}}",
                )
            ],
            unit="reqps",
        )
    )
    d = d.with_panel(
        ts(
            "Tokens/s",
            "Prompt tokens processed and tokens generated per second.",
            [
                (
                    f"sum by (model_name) (rate(ray_vllm_generation_tokens_total{{{MODEL}}}[{RATE}]))",
                    "{{model_name}} generated",
                ),
                (
                    f"sum by (model_name) (rate(ray_vllm_prompt_tokens_total{{{MODEL}}}[{RATE}]))",
                    "{{model_name}} prompt",
                ),
            ],
            unit="short",
        )
    )
    d = d.with_row(dashboard.Row("Latency"))
    d = d.with_panel(
        ts(
            "Time to first token p50 / p99",
            "From request arrival at the engine to the first generated token.",
            [
                (_q("0.5", "ray_vllm_time_to_first_token_seconds", MODEL, "model_name"), "{{model_name}} p50"),
                (_q("0.99", "ray_vllm_time_to_first_token_seconds", MODEL, "model_name"), "{{model_name}} p99"),
            ],
            unit="s",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Inter-token latency p50 / p99",
            "Time between two generated tokens of one stream.",
            [
                (_q("0.5", "ray_vllm_inter_token_latency_seconds", MODEL, "model_name"), "{{model_name}} p50"),
                (_q("0.99", "ray_vllm_inter_token_latency_seconds", MODEL, "model_name"), "{{model_name}} p99"),
            ],
            unit="s",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "End-to-end latency p50 / p99",
            "From arrival to the last token (engine view); queue time shown separately.",
            [
                (_q("0.5", "ray_vllm_e2e_request_latency_seconds", MODEL, "model_name"), "{{model_name}} p50"),
                (_q("0.99", "ray_vllm_e2e_request_latency_seconds", MODEL, "model_name"), "{{model_name}} p99"),
                (_q("0.99", "ray_vllm_request_queue_time_seconds", MODEL, "model_name"), "{{model_name}} queue p99"),
            ],
            unit="s",
            width=8,
        )
    )
    d = d.with_row(dashboard.Row("Capacity"))
    d = d.with_panel(
        ts(
            "Running / waiting requests",
            "Requests in the engine's batch and requests queued for it: a growing queue means scale out.",
            [
                (f"sum by (model_name) (ray_vllm_num_requests_running{{{MODEL}}})", "{{model_name}} running"),
                (f"sum by (model_name) (ray_vllm_num_requests_waiting{{{MODEL}}})", "{{model_name}} waiting"),
            ],
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "KV-cache usage",
            "Fraction of the KV cache in use, per replica (1 = full: requests get preempted). vLLM's CPU "
            "backend reports on another scale (3.58 was read with one request running): only GPU replicas "
            "read as a fraction here and in the RayleighKVCacheNearlyFull alert.",
            [
                (
                    f"max by (model_name, ReplicaId) (ray_vllm_kv_cache_usage_perc{{{MODEL}}})",
                    "{{model_name}} {{ReplicaId}}",
                )
            ],
            unit="percentunit",
            width=8,
        ).max(1)
    )
    d = d.with_panel(
        ts(
            "Replicas",
            "Healthy Serve replicas per application (one per ModelDeployment) and deployment. Serve's "
            "metrics carry no served model name: the model filter goes through the vLLM gauge of the same "
            "ModelDeployment (label model_deployment, set by the operator's PodMonitor).",
            [
                (
                    f"sum by (namespace, application, deployment) (ray_serve_deployment_replica_healthy{{{NS}}}"
                    " * on (namespace, model_deployment) group_left () "
                    f"(max by (namespace, model_deployment) (ray_vllm_num_requests_running{{{MODEL}}}) * 0 + 1))",
                    "{{namespace}}/{{application}} {{deployment}}",
                )
            ],
            width=8,
        )
    )
    d = d.with_row(dashboard.Row("Engine and replica health"))
    d = d.with_panel(
        ts(
            "Preemptions/s",
            "Requests preempted for lack of KV cache (recomputed later: latency rises).",
            [
                (
                    f"sum by (model_name) (rate(ray_vllm_request_num_preemptions_sum{{{MODEL}}}[{RATE}]))",
                    "{{model_name}}",
                )
            ],
            unit="ops",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Prefix-cache hit rate per replica",
            "Share of prompt tokens found in each replica's prefix cache (vLLM's prefix_cache_hits / "
            "prefix_cache_queries). Prefix-aware routing (spec.routing) keeps conversations where their "
            "prefix is cached.",
            [
                (
                    f"sum by (model_name, ReplicaId) (rate(ray_vllm_prefix_cache_hits_total{{{MODEL}}}[{RATE}])) "
                    f"/ clamp_min(sum by (model_name, ReplicaId) (rate(ray_vllm_prefix_cache_queries_total"
                    f"{{{MODEL}}}[{RATE}])), 1e-9)",
                    "{{model_name}} {{ReplicaId}}",
                )
            ],
            unit="percentunit",
            width=8,
        ).max(1)
    )
    d = d.with_panel(
        ts(
            "Requests per replica, routing decisions/s",
            "How requests spread over the replicas: completed requests per replica (vLLM's counter; "
            "prefix-aware routing keeps each conversation on one). Under --serve-ingress proxy, also the picks "
            "of Rayleigh's Serve router by reason: affinity, spill (above the load bound), no_key, least_loaded, "
            "round_robin, replica_full (under HAProxy, HAProxy picks and this series is empty).",
            [
                (
                    f"sum by (model_name, ReplicaId) (rate(ray_vllm_request_success_total{{{MODEL}}}[{RATE}]))",
                    "{{model_name}} {{ReplicaId}}",
                ),
                (
                    f"sum by (app, reason) (rate(ray_rayleigh_routing_decisions_total{{{NS}}}[{RATE}]))",
                    "{{app}} {{reason}}",
                ),
            ],
            unit="ops",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Replica errors by code",
            "Requests the replicas ended with 4xx/5xx, a mid-stream error (500) or a client disconnect (499).",
            [
                (
                    f'sum by (model, code) (rate(ray_rayleigh_serving_errors_total{{{NS}, model=~"$model"}}[{RATE}]))',
                    "{{model}} {{code}}",
                )
            ],
            unit="reqps",
            width=8,
        )
    )
    return d


# --- Rayleigh / Gateway ------------------------------------------------------------------------

GW = f'{NS}, route=~"$route"'
GW_MODEL = f'{GW}, model=~"$model"'


def gateway() -> dashboard.Dashboard:
    d = _base(
        "rayleigh-gateway",
        "Rayleigh / Gateway",
        "The OpenAI-compatible gateway: traffic by status, overhead it adds, auth and rate-limit rejections, "
        "upstream and Redis errors. A route is one ModelDeployment. The model filter applies to the panels "
        "whose metric has a model label (requests, latency, tokens, rate limits); the others filter by route.",
    )
    d = d.with_variable(_namespace_var("rayleigh_gateway_requests_total"))
    d = d.with_variable(_label_var("model", "Model", f"label_values(rayleigh_gateway_requests_total{{{NS}}}, model)"))
    d = d.with_variable(_label_var("route", "Route", f"label_values(rayleigh_gateway_requests_total{{{NS}}}, route)"))
    d = d.with_row(dashboard.Row("Traffic"))
    d = d.with_panel(
        single(
            "Requests/s",
            "All requests the gateway answered.",
            f"sum(rate(rayleigh_gateway_requests_total{{{GW_MODEL}}}[{RATE}]))",
            unit="reqps",
            width=5,
        )
    )
    d = d.with_panel(
        single(
            "Error ratio (5xx)",
            "Share of requests answered with a 5xx status.",
            f'sum(rate(rayleigh_gateway_requests_total{{{GW_MODEL}, code=~"5.."}}[{RATE}])) '
            f"/ clamp_min(sum(rate(rayleigh_gateway_requests_total{{{GW_MODEL}}}[{RATE}])), 1e-9)",
            unit="percentunit",
            width=5,
        )
    )
    d = d.with_panel(
        single(
            "In flight",
            "Requests the gateway is proxying right now (streams count until they end).",
            f"sum(rayleigh_gateway_in_flight_requests{{{NS}}})",
            width=5,
        )
    )
    d = d.with_panel(
        single(
            "Gateway pods up",
            "Gateway pods that answer Prometheus' scrapes (job rayleigh-gateway); 0 or no data: model "
            "traffic is cut (alert RayleighGatewayDown).",
            f'sum(up{{job="rayleigh-gateway", {NS}}})',
            width=4,
        )
    )
    d = d.with_panel(
        single(
            "Redis reachable",
            "1 when every gateway pod's rate limiter reaches Redis, 0 while one falls back.",
            f"min(rayleigh_gateway_redis_up{{{NS}}})",
            width=5,
        )
    )
    d = d.with_panel(
        ts(
            "Requests by status code",
            "Requests answered per second, by HTTP status code.",
            [(f"sum by (code) (rate(rayleigh_gateway_requests_total{{{GW_MODEL}}}[{RATE}]))", "{{code}}")],
            unit="reqps",
            stack=True,
        )
    )
    d = d.with_panel(
        ts(
            "Added overhead p50 / p99",
            "Time the gateway itself adds to a request (auth, limits, routing, proxying), upstream time excluded.",
            [
                (_q("0.5", "rayleigh_gateway_overhead_seconds", GW), "p50"),
                (_q("0.99", "rayleigh_gateway_overhead_seconds", GW), "p99"),
            ],
            unit="s",
        )
    )
    d = d.with_panel(
        ts(
            "Latency p50 / p99 and stream first byte p99",
            "Request duration as clients see it (streams: to the last byte), and time to the first streamed byte.",
            [
                (_q("0.5", "rayleigh_gateway_request_duration_seconds", GW_MODEL), "p50"),
                (_q("0.99", "rayleigh_gateway_request_duration_seconds", GW_MODEL), "p99"),
                (_q("0.99", "rayleigh_gateway_stream_first_byte_seconds", GW_MODEL), "first byte p99"),
            ],
            unit="s",
        )
    )
    d = d.with_panel(
        ts(
            "Tokens/s by model",
            "Tokens used, from the upstream's usage reports, by model and kind (prompt, completion).",
            [
                (
                    f'sum by (model, kind) (rate(rayleigh_gateway_tokens_total{{{NS}, model=~"$model"}}[{RATE}]))',
                    "{{model}} {{kind}}",
                )
            ],
        )
    )
    d = d.with_panel(
        ts(
            "Traffic split: share of requests by backend",
            "Per route, each backend's share of the requests sent upstream (a backend is the ModelDeployment "
            "behind it). A traffic split (spec.traffic) shows its live ratio next to the weights in "
            "status.traffic.share; a one-backend route stays at 100%.",
            [
                (
                    f"sum by (route, backend) (rate(rayleigh_gateway_backend_requests_total{{{GW}}}[{RATE}])) "
                    f"/ ignoring(backend) group_left sum by (route) "
                    f"(rate(rayleigh_gateway_backend_requests_total{{{GW}}}[{RATE}]))",
                    "{{route}} -> {{backend}}",
                )
            ],
            unit="percentunit",
            width=24,
        )
    )
    d = d.with_row(dashboard.Row("Fair sharing at saturation"))
    d = d.with_panel(
        ts(
            "Fair-sharing queue length by priority",
            "Requests waiting in the gateway for a slot on a saturated route (routes with spec.gateway.fairness), "
            "by priority class. Steadily non-zero: the route's maxInFlight is reached; add replicas or raise it.",
            [
                (
                    f"sum by (route, priority) (rayleigh_gateway_fair_queue_length{{{GW}}})",
                    "{{route}} {{priority}}",
                )
            ],
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Fair-sharing queue wait p95 by priority",
            "95th percentile of the time admitted requests waited in the fair-sharing queue, by priority class.",
            [
                (
                    f"histogram_quantile(0.95, sum by (route, priority, le) "
                    f"(rate(rayleigh_gateway_fair_queue_wait_seconds_bucket{{{GW}}}[{RATE}])))",
                    "{{route}} {{priority}}",
                )
            ],
            unit="s",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Fair-sharing rejections",
            "Requests refused by fair sharing: queue_full (429), queue_timeout (503), client_gone (left while queued).",
            [
                (
                    f"sum by (route, priority, reason) "
                    f"(rate(rayleigh_gateway_fair_queue_rejections_total{{{GW}}}[{RATE}]))",
                    "{{route}} {{priority}} {{reason}}",
                )
            ],
            unit="reqps",
            width=8,
        )
    )
    d = d.with_row(dashboard.Row("Rejections and errors"))
    d = d.with_panel(
        ts(
            "Rate-limit rejections",
            "Requests refused with 429, by the limit that refused them.",
            [
                (
                    f"sum by (route, limit) (rate(rayleigh_gateway_rate_limited_total{{{GW_MODEL}}}[{RATE}]))",
                    "{{route}} {{limit}}",
                )
            ],
            unit="reqps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Auth failures by reason",
            "401/403 answers, by reason (missing or unknown key, expired, bad JWT, CIDR, model not allowed).",
            [(f"sum by (reason) (rate(rayleigh_gateway_auth_failures_total{{{GW}}}[{RATE}]))", "{{reason}}")],
            unit="reqps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Upstream errors",
            "Failed calls to model backends (connect, timeout, 5xx, stream broken), by route and kind.",
            [
                (
                    f"sum by (route, kind) (rate(rayleigh_gateway_upstream_errors_total{{{GW}}}[{RATE}]))",
                    "{{route}} {{kind}}",
                )
            ],
            unit="reqps",
            width=8,
        )
    )
    d = d.with_panel(
        ts(
            "Redis errors",
            "Failed Redis calls of the rate limiter by operation, and requests decided without Redis "
            "(open: in-memory limiter, closed: 503).",
            [
                (f"sum by (op) (rate(rayleigh_gateway_redis_errors_total{{{NS}}}[{RATE}]))", "errors {{op}}"),
                (
                    f"sum by (mode) (rate(rayleigh_gateway_ratelimit_fallback_total{{{GW}}}[{RATE}]))",
                    "fallback {{mode}}",
                ),
            ],
            unit="ops",
        )
    )
    d = d.with_panel(
        ts(
            "Client disconnects and config reloads",
            "Streams whose client went away (upstream request cancelled); reloads of the route config and key file.",
            [
                (f"sum(rate(rayleigh_gateway_client_disconnects_total{{{GW}}}[{RATE}]))", "client disconnects"),
                (
                    f"sum by (file, result) (increase(rayleigh_gateway_config_reloads_total{{{NS}}}[{RATE}]))",
                    "reload {{file}} {{result}}",
                ),
            ],
        )
    )
    return d


# --- Rayleigh / Operator -----------------------------------------------------------------------


def operator() -> dashboard.Dashboard:
    d = _base(
        "rayleigh-operator",
        "Rayleigh / Operator",
        "The operator's reconciles, their durations and results, Ray Serve deployments, and each "
        "ModelDeployment's phase. Namespace: the operator's own namespace (its release).",
    )
    d = d.with_variable(_namespace_var("rayleigh_operator_reconciles_total"))
    d = d.with_variable(
        _label_var(
            "model",
            "ModelDeployment",
            f"label_values(rayleigh_operator_model_deployment_phase{{{NS}}}, model_deployment)",
        )
    )
    d = d.with_panel(
        single(
            "Operator up",
            "Operator pods that answer Prometheus' scrapes (job rayleigh-operator); 0 or no data: "
            "nothing is reconciled (alert RayleighOperatorDown).",
            f'sum(up{{job="rayleigh-operator", {NS}}})',
        )
    )
    d = d.with_panel(
        single(
            "ModelDeployments not Ready",
            "ModelDeployments in a phase other than Ready.",
            f'sum(rayleigh_operator_model_deployments{{{NS}, phase!="Ready"}})',
        )
    )
    d = d.with_panel(
        ts(
            "Reconciles/s by result",
            "Reconciles of ModelDeployments per second, by result.",
            [(f"sum by (result) (rate(rayleigh_operator_reconciles_total{{{NS}}}[{RATE}]))", "{{result}}")],
            unit="ops",
            stack=True,
        )
    )
    d = d.with_panel(
        ts(
            "Reconcile duration p50 / p99",
            "Time one reconcile takes (render, server-side apply, status).",
            [
                (_q("0.5", "rayleigh_operator_reconcile_duration_seconds", NS), "p50"),
                (_q("0.99", "rayleigh_operator_reconcile_duration_seconds", NS), "p99"),
            ],
            unit="s",
        )
    )
    d = d.with_panel(
        ts(
            "Serve deploys by result",
            "Serve config pushes to the Ray dashboard (PUT /api/serve/applications/), by result.",
            [(f"sum by (result) (increase(rayleigh_operator_serve_deploys_total{{{NS}}}[{RATE}]))", "{{result}}")],
            unit="short",
        )
    )
    d = d.with_panel(
        ts(
            "Children restored",
            "Children re-applied because they were deleted or edited by hand (drift), by kind.",
            [(f"sum by (kind) (increase(rayleigh_operator_child_restores_total{{{NS}}}[{RATE}]))", "{{kind}}")],
            unit="short",
        )
    )
    d = d.with_panel(
        ts(
            "ModelDeployments by phase",
            "How many ModelDeployments are in each phase.",
            [(f"sum by (phase) (rayleigh_operator_model_deployments{{{NS}}})", "{{phase}}")],
            stack=True,
        )
    )
    d = d.with_panel(
        ts(
            "Phase per ModelDeployment",
            "The phase of each ModelDeployment (one series per model, 1 while in that phase), from the "
            "operator's per-model gauge; the ModelDeployment filter applies here.",
            [
                (
                    "max by (model_namespace, model_deployment, phase) (rayleigh_operator_model_deployment_phase"
                    f'{{{NS}, model_deployment=~"$model"}})',
                    "{{model_namespace}}/{{model_deployment}} {{phase}}",
                )
            ],
            width=24,
        )
    )
    return d


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "rayleigh-models": models,
    "rayleigh-gateway": gateway,
    "rayleigh-operator": operator,
}


def render(name: str) -> str:
    """The JSON text of one dashboard, deterministic (sorted keys, fixed indentation)."""
    built = DASHBOARDS[name]().build()
    data = json.loads(json.dumps(built, cls=JSONEncoder))
    # Grafana wants unique panel ids; the SDK leaves them 0. Empty `options` are dropped.
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
        if panel.get("options") is None:
            panel.pop("options", None)
    for variable in data.get("templating", {}).get("list", []):
        variable.pop("id", None)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_all() -> dict[str, str]:
    return {f"{name}.json": render(name) for name in DASHBOARDS}


def panel_queries(data: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable of a dashboard.

    A variable's `label_values(METRIC, label)` becomes the selector `METRIC`."""
    out: list[tuple[str, str]] = []
    for panel in data.get("panels", []):
        for target in panel.get("targets", []) or []:
            if "expr" in target:
                out.append((f"panel {panel.get('title', '')!r}", target["expr"]))
    for variable in data.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query.strip())
            out.append((f"variable ${variable['name']}", m.group(1) if m else query))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the checked-in JSON is out of date")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for filename, text in render_all().items():
        for out_dir in OUT_DIRS:
            path = out_dir / filename
            current = path.read_text() if path.exists() else None
            if current == text:
                continue
            if args.check:
                stale.append(str(path.relative_to(ROOT)))
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("out of date (run `python dashboards/build.py`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

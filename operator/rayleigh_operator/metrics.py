"""The operator's Prometheus metrics (documented in docs/metrics/operator.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "rayleigh_operator_reconciles_total",
    "ModelDeployment reconciles (children applied) by result: applied, invalid, error.",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "rayleigh_operator_reconcile_duration_seconds",
    "Time to render and server-side apply a ModelDeployment's children and write its status.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SERVE_DEPLOYS = Counter(
    "rayleigh_operator_serve_deploys_total",
    "PUTs of a Serve config to a Ray dashboard by result: accepted, rejected, unreachable, unauthorized, conflict.",
    ["result"],
)
CHILD_RESTORES = Counter(
    "rayleigh_operator_child_restores_total",
    "Children re-applied because they were deleted or edited by hand, by kind.",
    ["kind"],
)
MODEL_DEPLOYMENTS = Gauge(
    "rayleigh_operator_model_deployments",
    "ModelDeployments this operator tracks, by phase.",
    ["phase"],
)
MODEL_DEPLOYMENT_PHASE = Gauge(
    "rayleigh_operator_model_deployment_phase",
    "1 for each ModelDeployment this operator tracks, labelled with its current phase (one series per "
    "object: the previous phase's series is removed on a transition, all on delete).",
    ["model_namespace", "model_deployment", "phase"],
)
COLD_START_SECONDS = Histogram(
    "rayleigh_operator_cold_start_seconds",
    "Scale to zero: seconds from a wake signal (a held request) to the first ready replica.",
    buckets=(1, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1200),
)
SCALE_TO_ZERO = Counter(
    "rayleigh_operator_scale_to_zero_total",
    "Scale-to-zero moves of a ModelDeployment's replicas, by direction: down (idle), up (woken).",
    ["direction"],
)

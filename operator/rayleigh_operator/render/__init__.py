"""Pure renderers: one ModelDeployment -> the Kubernetes objects the operator applies.

Everything here is a pure function of (ModelDeployment, RenderOptions): no I/O, no clock, no
randomness, so `rayleigh render` prints exactly what the operator would apply and golden files
pin the output. The operator applies each object with server-side apply (field manager
`rayleigh-operator`); every child carries the `app.kubernetes.io/*` labels, the
`serving.rayleigh.dev/model-deployment` label and, when the ModelDeployment has a uid (it always
has one in a cluster), an ownerReference to it so that deleting the ModelDeployment deletes them.

Children of a ModelDeployment `NAME`:
  Deployment  NAME-head            Ray head (GCS, dashboard, Serve controller + HTTP proxy)
  Secret      NAME-ray-token       Ray's auth token (rendered without data: the operator creates it once)
  Service     NAME-head            GCS 6379, dashboard 8265, Serve HTTP 8000, metrics 8080 (no Ray Client)
  Service     NAME-serve           Serve HTTP 8000 on every Ray pod (what the gateway calls)
  Deployment  NAME-workers         one pod per Serve replica, each with resources.gpus GPUs
  PodDisruptionBudget NAME-workers
  NetworkPolicy NAME               only the gateway (Serve HTTP) and the operator (dashboard) get in
  ConfigMap   rayleigh-route-NAME  the gateway's route (backend, served names, auth, CIDRs, limits)
  HorizontalPodAutoscaler NAME     only with spec.autoscaling, targets the ModelDeployment's scale
  PodMonitor  NAME                 only when the monitoring.coreos.com CRDs exist

Modules: `options` (RenderOptions, RenderError), `names` (names, labels, ports, metadata),
`pods` (the Ray head and workers), `security` (the Ray token Secret and auth env, pod security
contexts), `policies` (HPA, PDB, NetworkPolicy, PodMonitor), `route`
(the gateway route ConfigMap); `render()` itself is here. Import this package, not its modules:
`from rayleigh_operator import render as r; r.render(md, options=r.RenderOptions())`.
"""

from __future__ import annotations

from typing import Any

import rayleigh_api as api
from rayleigh_operator.render.names import (
    CLIENT_PORT,
    DASHBOARD_PORT,
    DELETION_COST_ANNOTATION,
    FIELD_MANAGER,
    GCS_PORT,
    MD_LABEL,
    METRICS_PORT,
    RAYLET_HEALTH_PORT,
    ROUTE_LABEL,
    SERVE_PORT,
    SPEC_HASH_ANNOTATION,
    STANDARD_LABEL_KEYS,
    TOKEN_RESTART_ANNOTATION,
    child_key,
    child_name,
    labels,
    owner_references,
    selector_labels,
    serve_backend_url,
    worker_selector,
)
from rayleigh_operator.render.options import RenderError, RenderOptions
from rayleigh_operator.render.pods import (
    cpu_count,
    deletion_costs,
    pod_spec_hash,
    render_head,
    render_workers,
    worker_pod_spec,
)
from rayleigh_operator.render.policies import (
    AUTOSCALING_METRICS,
    DEFAULT_TARGETS,
    autoscaling_metric,
    render_hpa,
    render_network_policy,
    render_pdb,
    render_pod_monitor,
)
from rayleigh_operator.render.route import ROUTE_KEY, render_route
from rayleigh_operator.render.security import RAY_TOKEN_KEY, render_ray_token_secret

__all__ = [
    "AUTOSCALING_METRICS",
    "CLIENT_PORT",
    "DASHBOARD_PORT",
    "DEFAULT_TARGETS",
    "DELETION_COST_ANNOTATION",
    "FIELD_MANAGER",
    "GCS_PORT",
    "MD_LABEL",
    "METRICS_PORT",
    "RAYLET_HEALTH_PORT",
    "RAY_TOKEN_KEY",
    "ROUTE_KEY",
    "ROUTE_LABEL",
    "SERVE_PORT",
    "SPEC_HASH_ANNOTATION",
    "STANDARD_LABEL_KEYS",
    "TOKEN_RESTART_ANNOTATION",
    "RenderError",
    "RenderOptions",
    "autoscaling_metric",
    "child_key",
    "child_name",
    "cpu_count",
    "deletion_costs",
    "labels",
    "owner_references",
    "pod_spec_hash",
    "render",
    "render_head",
    "render_hpa",
    "render_network_policy",
    "render_pdb",
    "render_pod_monitor",
    "render_ray_token_secret",
    "render_route",
    "render_workers",
    "selector_labels",
    "serve_backend_url",
    "worker_pod_spec",
    "worker_selector",
]


def render(md: api.ModelDeployment, *, options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """Every child object of a ModelDeployment, in a stable order: the route, the Ray token Secret,
    the head and its Services, the workers, PDB, NetworkPolicy, then the HPA and PodMonitor when they apply.

    The order is what `rayleigh render` prints and the golden files pin; it is not an apply
    order. No child needs another to exist when it is applied (the operator applies them
    concurrently: see `rayleigh_operator.apply`).
    """
    options = options or RenderOptions()
    if not md.name:
        raise RenderError([("metadata.name", "required")])
    if not options.route_prefix.startswith("/"):
        raise RenderError([("route_prefix", f"must start with '/', got {options.route_prefix!r}")])
    out: list[dict[str, Any]] = [
        render_route(md, options),
        render_ray_token_secret(md),
        *render_head(md, options),
        render_workers(md, options),
        render_pdb(md),
        render_network_policy(md, options),
    ]
    if options.autoscaling_metric_available is not False:
        hpa = render_hpa(md)
        if hpa is not None:
            out.append(hpa)
    if options.monitoring:
        out.append(render_pod_monitor(md, options))
    return out

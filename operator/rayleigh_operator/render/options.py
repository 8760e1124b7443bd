"""The render inputs besides the spec: `RenderOptions` (cluster-level settings) and `RenderError`."""

from __future__ import annotations

from dataclasses import dataclass, field

from rayleigh_api.errors import FieldErrors
from rayleigh_serving.ingress import DEFAULT_INGRESS


class RenderError(FieldErrors):
    """A spec the renderers cannot turn into working objects; `problems` lists (field, message)."""


@dataclass(frozen=True)
class RenderOptions:
    """Cluster-level settings of the operator (flags of `rayleigh operator`), not per-model spec.

    `rayleigh operator` and `rayleigh render` build these from the same flags
    (`rayleigh_operator.flags`); the operator then sets the per-object fields (`route_prefix`,
    `monitoring`, `autoscaling_metric_available`) for each ModelDeployment.
    """

    image: str = "ghcr.io/rayleigh-llm/rayleigh-replica:0.1.0"  # CPU replicas: vLLM's CPU build
    gpu_image: str = "ghcr.io/rayleigh-llm/rayleigh-replica-cuda:0.1.0"  # resources.gpus > 0: vLLM's CUDA build
    operator_namespace: str = "rayleigh-system"
    gateway_namespace: str = "rayleigh-system"
    gateway_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "rayleigh", "app.kubernetes.io/component": "gateway"}
    )
    operator_pod_labels: dict[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "rayleigh", "app.kubernetes.io/component": "operator"}
    )
    # Namespaces whose pods may scrape the metrics port (Prometheus); empty: any namespace.
    metrics_namespaces: tuple[str, ...] = ()
    # Extra labels on every PodMonitor (e.g. release: kube-prometheus-stack, which a default
    # kube-prometheus-stack's podMonitorSelector requires); never one of the standard labels.
    podmonitor_labels: dict[str, str] = field(default_factory=dict)
    route_prefix: str = "/"
    # Render PodMonitor (set by the operator when monitoring.coreos.com/v1 is served).
    monitoring: bool = False
    # None: not checked (offline render) -> render the HPA; False: metric missing -> no HPA.
    autoscaling_metric_available: bool | None = None
    # GCS fault tolerance: Ray head state in an external Redis ("host:port").
    gcs_redis_address: str | None = None
    gcs_redis_password_secret: str | None = None  # Secret name, key "password"
    model_cache_size: str = "200Gi"
    # How HTTP reaches the replicas (rayleigh_serving.ingress): "haproxy" or "proxy" (--serve-ingress).
    serve_ingress: str = DEFAULT_INGRESS
    shm_size: str | None = None  # default: half of resources.memory, else 8Gi

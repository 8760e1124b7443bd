"""Pure renderers: one ModelDeployment -> the Kubernetes objects the operator applies.

Everything here is a pure function of (ModelDeployment, RenderOptions): no I/O, no clock, no
randomness, so `rayleigh render` prints exactly what the operator would apply and golden files
pin the output. The operator applies each object with server-side apply (field manager
`rayleigh-operator`); every child carries the `app.kubernetes.io/*` labels, the
`serving.rayleigh.dev/model-deployment` label and, when the ModelDeployment has a uid (it always
has one in a cluster), an ownerReference to it so that deleting the ModelDeployment deletes them.

Children of a ModelDeployment `NAME`:
  Deployment  NAME-head            Ray head (GCS, dashboard, Serve controller + HTTP proxy)
  Service     NAME-head            GCS 6379, dashboard 8265, Serve HTTP 8000, metrics 8080, client 10001
  Service     NAME-serve           Serve HTTP 8000 on every Ray pod (what the gateway calls)
  Deployment  NAME-workers         one pod per Serve replica, each with resources.gpus GPUs
  PodDisruptionBudget NAME-workers
  NetworkPolicy NAME               only the gateway (Serve HTTP) and the operator (dashboard) get in
  ConfigMap   rayleigh-route-NAME  the gateway's route (backend, served names, auth, CIDRs, limits)
  HorizontalPodAutoscaler NAME     only with spec.autoscaling, targets the ModelDeployment's scale
  PodMonitor  NAME                 only when the monitoring.coreos.com CRDs exist
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rayleigh_gateway.routes import RouteError, route_for
import rayleigh_api as api
from rayleigh_api.errors import FieldErrors
from rayleigh_serving.config import HF_CACHE_DIR, PVC_MOUNT_ROOT

FIELD_MANAGER = "rayleigh-operator"
MD_LABEL = "serving.rayleigh.dev/model-deployment"
ROUTE_LABEL = "serving.rayleigh.dev/route"
SPEC_HASH_ANNOTATION = "serving.rayleigh.dev/pod-spec-hash"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"

GCS_PORT = 6379
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
METRICS_PORT = 8080
CLIENT_PORT = 10001
RAYLET_HEALTH_PORT = 52365  # the dashboard agent's port on every Ray node

ROUTE_KEY = "route.json"

# Custom metric names served by prometheus-adapter (rules in docs/OPERATOR.md and the chart):
# vLLM's gauges as exported by Ray (`ray_` prefix), averaged per worker pod.
AUTOSCALING_METRICS: dict[str, str] = {
    "queueDepth": "ray_vllm_num_requests_waiting",
    "inFlightRequests": "rayleigh_inflight_requests",
    "kvCacheUsage": "ray_vllm_kv_cache_usage_perc",
}
DEFAULT_TARGETS: dict[str, float] = {"queueDepth": 2.0, "inFlightRequests": 16.0, "kvCacheUsage": 0.8}


class RenderError(FieldErrors):
    """A spec the renderers cannot turn into working objects; `problems` lists (field, message)."""


@dataclass(frozen=True)
class RenderOptions:
    """Cluster-level settings of the operator (flags of `rayleigh operator`), not per-model spec."""

    image: str = "ghcr.io/rayleigh-llm/rayleigh-replica:0.1.0"
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
    route_prefix: str = "/"
    # Render PodMonitor (set by the operator when monitoring.coreos.com/v1 is served).
    monitoring: bool = False
    # None: not checked (offline render) -> render the HPA; False: metric missing -> no HPA.
    autoscaling_metric_available: bool | None = None
    # GCS fault tolerance: Ray head state in an external Redis ("host:port").
    gcs_redis_address: str | None = None
    gcs_redis_password_secret: str | None = None  # Secret name, key "password"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    model_cache_size: str = "200Gi"
    shm_size: str | None = None  # default: half of resources.memory, else 8Gi


def child_name(md: api.ModelDeployment, component: str) -> str:
    names = {
        "head": f"{md.name}-head",
        "serve": f"{md.name}-serve",
        "workers": f"{md.name}-workers",
        "route": f"rayleigh-route-{md.name}",
        "network-policy": md.name,
        "autoscaler": md.name,
        "pdb": f"{md.name}-workers",
        "pod-monitor": md.name,
    }
    return names[component]


def selector_labels(md: api.ModelDeployment, component: str | None = None) -> dict[str, str]:
    out = {MD_LABEL: md.name}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def worker_selector(md: api.ModelDeployment) -> str:
    """`status.selector` for the scale subresource: the worker pods the HPA averages over."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md, "workers").items()))


def labels(md: api.ModelDeployment, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "rayleigh-model",
        "app.kubernetes.io/instance": md.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/part-of": "rayleigh",
        MD_LABEL: md.name,
    }


def owner_references(md: api.ModelDeployment) -> list[dict[str, Any]]:
    uid = md.metadata.get("uid")
    if not uid:
        return []
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": md.name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(md: api.ModelDeployment, name: str, component: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": md.namespace, "labels": labels(md, component)}
    refs = owner_references(md)
    if refs:
        meta["ownerReferences"] = refs
    meta.update(extra)
    return meta


def serve_backend_url(md: api.ModelDeployment, options: RenderOptions) -> str:
    """Where the gateway sends this model's requests (the Serve HTTP proxies of its Ray cluster)."""
    prefix = options.route_prefix.rstrip("/")
    return f"http://{child_name(md, 'serve')}.{md.namespace}.svc:{SERVE_PORT}{prefix}"


# --- pods -------------------------------------------------------------------------------------


def _pvc_claims(md: api.ModelDeployment) -> list[str]:
    claims: list[str] = []
    for source in [md.spec.model.source, *(a.source for a in md.spec.adapters)]:
        if source.startswith("pvc://"):
            claim = source[len("pvc://") :].split("/", 1)[0]
            if claim not in claims:
                claims.append(claim)
    return claims


def _volumes(md: api.ModelDeployment, options: RenderOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shm_size = options.shm_size or _half_quantity(md.spec.resources.memory) or "8Gi"
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        {"name": "model-cache", "emptyDir": {"sizeLimit": options.model_cache_size}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model-cache", "mountPath": HF_CACHE_DIR},
    ]
    for i, claim in enumerate(_pvc_claims(md)):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def _half_quantity(memory: str | None) -> str | None:
    """Half of a memory quantity ('32Gi' -> '16Gi'), for /dev/shm; None if not a plain integer."""
    if not memory:
        return None
    digits = "".join(ch for ch in memory if ch.isdigit())
    suffix = memory[len(digits) :]
    if not digits or digits + suffix != memory or int(digits) < 2:
        return None
    return f"{int(digits) // 2}{suffix}"


def _env(md: api.ModelDeployment, options: RenderOptions) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
        {"name": "HF_HOME", "value": HF_CACHE_DIR},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    if md.spec.resources.gpus == 0:
        env.append({"name": "VLLM_TARGET_DEVICE", "value": "cpu"})
    ref = md.spec.model.token_secret_ref
    if ref is not None:
        var = "HF_TOKEN" if md.spec.model.source.startswith("hf://") else "AWS_SESSION_TOKEN"
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return env


def _gcs_env(md: api.ModelDeployment, options: RenderOptions) -> list[dict[str, Any]]:
    if not options.gcs_redis_address:
        return []
    env: list[dict[str, Any]] = [
        {"name": "RAY_REDIS_ADDRESS", "value": options.gcs_redis_address},
        # One Redis can hold several Ray clusters: key them by the ModelDeployment.
        {"name": "RAY_external_storage_namespace", "value": f"{md.namespace}.{md.name}"},
        # Workers keep running while the head restarts (default 60 s is too short for a pull).
        {"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "300"},
    ]
    if options.gcs_redis_password_secret:
        env.append(
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": options.gcs_redis_password_secret, "key": "password"}},
            }
        )
    return env


def cpu_count(quantity: str | None) -> int:
    """Logical CPUs Ray should advertise for a CPU request ('500m' -> 1, '2.5' -> 3, None -> 1)."""
    if not quantity:
        return 1
    if quantity.endswith("m"):
        return max(1, -(-int(quantity[:-1]) // 1000))
    try:
        return max(1, math.ceil(float(quantity)))
    except ValueError:
        return 1


def _probe(command: str, *, period: int, failures: int, initial: int = 10) -> dict[str, Any]:
    return {
        "exec": {"command": ["bash", "-c", command]},
        "initialDelaySeconds": initial,
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


_RAYLET_OK = f"wget -T 4 -q -O- http://localhost:{RAYLET_HEALTH_PORT}/api/local_raylet_healthz | grep success"
_GCS_OK = f"wget -T 4 -q -O- http://localhost:{DASHBOARD_PORT}/api/gcs_healthz | grep success"


def _pod_common(md: api.ModelDeployment) -> dict[str, Any]:
    pod: dict[str, Any] = {"serviceAccountName": "default", "automountServiceAccountToken": False}
    if md.spec.image.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in md.spec.image.pull_secrets]
    return pod


def _image(md: api.ModelDeployment, options: RenderOptions) -> str:
    return md.spec.image.name or options.image


def render_head(md: api.ModelDeployment, options: RenderOptions) -> list[dict[str, Any]]:
    volumes, mounts = _volumes(md, options)
    head_cmd = (
        f"ray start --head --block --port={GCS_PORT} --dashboard-host=0.0.0.0 "
        f"--dashboard-port={DASHBOARD_PORT} --metrics-export-port={METRICS_PORT} "
        f"--ray-client-server-port={CLIENT_PORT} --num-gpus=0 --num-cpus={cpu_count(options.head_cpu)} "
        "--disable-usage-stats"
    )
    container = {
        "name": "ray-head",
        "image": _image(md, options),
        "imagePullPolicy": md.spec.image.pull_policy,
        "command": ["bash", "-c", head_cmd],
        "env": [
            *_env(md, options),
            *_gcs_env(md, options),
        ],
        "ports": [
            {"name": "gcs", "containerPort": GCS_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "serve", "containerPort": SERVE_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
            {"name": "client", "containerPort": CLIENT_PORT},
        ],
        "resources": {
            "requests": {"cpu": options.head_cpu, "memory": options.head_memory},
            "limits": {"memory": options.head_memory},
        },
        "readinessProbe": _probe(f"{_RAYLET_OK} && {_GCS_OK}", period=5, failures=10),
        "livenessProbe": _probe(f"{_RAYLET_OK} && {_GCS_OK}", period=5, failures=120, initial=30),
        "lifecycle": {"preStop": {"exec": {"command": ["ray", "stop"]}}},
        "volumeMounts": mounts,
    }
    pod = {
        **_pod_common(md),
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    }
    if md.spec.resources.priority_class_name:
        pod["priorityClassName"] = md.spec.resources.priority_class_name
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, child_name(md, "head"), "head"),
        "spec": {
            "replicas": 1,
            # One head per Ray cluster, never two at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(md, "head")},
            "template": {"metadata": {"labels": labels(md, "head")}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, child_name(md, "head"), "head"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(md, "head"),
            "ports": [
                {"name": "gcs", "port": GCS_PORT, "targetPort": GCS_PORT},
                {"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT},
                {"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
                {"name": "client", "port": CLIENT_PORT, "targetPort": CLIENT_PORT},
            ],
        },
    }
    serve_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, child_name(md, "serve"), "serve"),
        "spec": {
            "type": "ClusterIP",
            # Serve runs an HTTP proxy on every Ray node: head and workers.
            "selector": selector_labels(md),
            "ports": [{"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT}],
        },
    }
    return [deployment, service, serve_service]


def worker_pod_spec(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    res = md.spec.resources
    volumes, mounts = _volumes(md, options)
    gpus = res.gpus
    # Each worker pod advertises exactly one replica's worth of GPUs (tensorParallelSize x
    # pipelineParallelSize), so Ray places one Serve replica per pod.
    worker_cmd = (
        f"ray start --block --address={child_name(md, 'head')}:{GCS_PORT} "
        f"--metrics-export-port={METRICS_PORT} --num-gpus={gpus} --num-cpus={cpu_count(res.cpu)} "
        "--disable-usage-stats"
    )
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = res.memory
        limits["memory"] = res.memory
    if gpus:
        requests[res.gpu_resource_name] = str(gpus)
        limits[res.gpu_resource_name] = str(gpus)
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": _image(md, options),
        "imagePullPolicy": md.spec.image.pull_policy,
        "command": ["bash", "-c", worker_cmd],
        "env": _env(md, options),
        "ports": [
            {"name": "serve", "containerPort": SERVE_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": {"requests": requests, "limits": limits},
        # Ready once the node joined the Ray cluster; serving readiness comes from Serve's own
        # replica states, which the operator folds into status.readyReplicas.
        "readinessProbe": _probe(_RAYLET_OK, period=5, failures=10),
        "livenessProbe": _probe(_RAYLET_OK, period=10, failures=30, initial=60),
        "lifecycle": {"preStop": {"exec": {"command": ["ray", "stop"]}}},
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        **_pod_common(md),
        "containers": [container],
        "volumes": volumes,
        # In-flight requests get Serve's graceful shutdown (60 s) plus a margin.
        "terminationGracePeriodSeconds": 90,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(md, "workers")},
            }
        ],
    }
    if res.node_selector:
        pod["nodeSelector"] = dict(sorted(res.node_selector.items()))
    if res.tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in res.tolerations]
    if res.affinity:
        pod["affinity"] = res.affinity
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    return pod


def pod_spec_hash(pod_spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(pod_spec, sort_keys=True).encode()).hexdigest()[:16]


def render_workers(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    pod = worker_pod_spec(md, options)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, child_name(md, "workers"), "workers"),
        "spec": {
            "replicas": md.spec.replicas,
            "selector": {"matchLabels": selector_labels(md, "workers")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxUnavailable": md.spec.rollout.max_unavailable,
                    "maxSurge": md.spec.rollout.max_surge,
                },
            },
            # Model loads take minutes: do not call a rollout stuck too early.
            "progressDeadlineSeconds": 1800,
            "template": {
                "metadata": {
                    "labels": labels(md, "workers"),
                    "annotations": {SPEC_HASH_ANNOTATION: pod_spec_hash(pod)},
                },
                "spec": pod,
            },
        },
    }


# --- autoscaling, disruption, network ---------------------------------------------------------


def autoscaling_metric(md: api.ModelDeployment) -> str | None:
    """The custom metric (prometheus-adapter name) the HPA scales on, or None without autoscaling."""
    auto = md.spec.autoscaling
    return AUTOSCALING_METRICS[auto.metric] if auto else None


def _quantity(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def render_hpa(md: api.ModelDeployment) -> dict[str, Any] | None:
    auto = md.spec.autoscaling
    if auto is None:
        return None
    target = auto.target if auto.target is not None else DEFAULT_TARGETS[auto.metric]
    metrics: list[dict[str, Any]] = [_pods_metric(AUTOSCALING_METRICS[auto.metric], target)]
    if auto.metric != "inFlightRequests":
        # Second signal: requests in flight per replica (a queue can stay empty while every
        # replica is saturated; KV usage can plateau while requests pile up).
        metrics.append(_pods_metric(AUTOSCALING_METRICS["inFlightRequests"], DEFAULT_TARGETS["inFlightRequests"]))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(md, child_name(md, "autoscaler"), "autoscaler"),
        "spec": {
            "scaleTargetRef": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": md.name},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": auto.scale_up_stabilization_seconds,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": auto.scale_down_stabilization_seconds,
                    "selectPolicy": "Min",
                    # One replica at a time: a removed replica takes minutes to come back.
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _pods_metric(name: str, target: float) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {"metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": _quantity(target)}},
    }


def render_pdb(md: api.ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(md, child_name(md, "pdb"), "workers"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md, "workers")},
            # A replica still loading its model is not serving: let drains evict it.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _ns_selector(namespace: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def render_network_policy(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    metrics_from: list[dict[str, Any]]
    if options.metrics_namespaces:
        metrics_from = [{"namespaceSelector": _ns_selector(ns)} for ns in options.metrics_namespaces]
    else:
        metrics_from = [{"namespaceSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(md, child_name(md, "network-policy"), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(md)},
            "policyTypes": ["Ingress"],
            "ingress": [
                # Ray's own traffic (GCS, object store, raylets) stays inside this Ray cluster.
                {"from": [{"podSelector": {"matchLabels": selector_labels(md)}}]},
                # Only the gateway calls the Serve HTTP port.
                {
                    "from": [
                        {
                            "namespaceSelector": _ns_selector(options.gateway_namespace),
                            "podSelector": {"matchLabels": dict(options.gateway_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
                },
                # Only the operator calls the dashboard (Serve REST API).
                {
                    "from": [
                        {
                            "namespaceSelector": _ns_selector(options.operator_namespace),
                            "podSelector": {"matchLabels": dict(options.operator_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                },
                # Prometheus scrapes the metrics port.
                {"from": metrics_from, "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }


def render_pod_monitor(md: api.ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _metadata(md, child_name(md, "pod-monitor"), "monitoring"),
        "spec": {
            "selector": {"matchLabels": selector_labels(md)},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": "15s",
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_" + _prom_label(MD_LABEL)],
                            "targetLabel": "model_deployment",
                        },
                    ],
                }
            ],
        },
    }


def _prom_label(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


# --- gateway route ----------------------------------------------------------------------------


def render_route(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    try:
        route = route_for(md, serve_backend_url(md, options))
    except RouteError as exc:
        raise RenderError(exc.problems) from None
    body = route.model_dump(mode="json", by_alias=True)
    meta = _metadata(md, child_name(md, "route"), "route")
    meta["labels"][ROUTE_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {ROUTE_KEY: json.dumps(body, indent=2, sort_keys=True) + "\n"},
    }


# --- everything -------------------------------------------------------------------------------


def render(md: api.ModelDeployment, *, options: RenderOptions | None = None) -> list[dict[str, Any]]:
    """Every child object of a ModelDeployment, in apply order (dependencies first)."""
    options = options or RenderOptions()
    if not md.name:
        raise RenderError([("metadata.name", "required")])
    if not options.route_prefix.startswith("/"):
        raise RenderError([("route_prefix", f"must start with '/', got {options.route_prefix!r}")])
    out: list[dict[str, Any]] = [
        render_route(md, options),
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
        out.append(render_pod_monitor(md))
    return out


def deletion_costs(pods: list[dict[str, Any]], replicas: list[dict[str, Any]]) -> dict[str, str]:
    """`controller.kubernetes.io/pod-deletion-cost` per worker pod, from Serve's replica states.

    The Deployment controller removes the pods with the lowest cost first on scale-down: a pod
    without a Serve replica (idle) costs 0, one whose replica is still starting 100, one serving
    1000. Returns only pods whose annotation must change.
    """
    by_ip: dict[str, int] = {}
    for replica in replicas:
        ip = replica.get("node_ip")
        if ip:
            cost = 1000 if replica.get("state") == "RUNNING" else 100
            by_ip[ip] = max(by_ip.get(ip, 0), cost)
    out: dict[str, str] = {}
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        want = str(by_ip.get(ip, 0)) if ip else "0"
        have = ((pod.get("metadata") or {}).get("annotations") or {}).get(DELETION_COST_ANNOTATION)
        if have != want:
            out[pod["metadata"]["name"]] = want
    return out


def child_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name) identifying a child within its namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]

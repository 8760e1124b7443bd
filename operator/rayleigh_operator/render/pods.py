"""The Ray pods: head Deployment + Services, worker Deployment, and their pod-deletion costs.

The head runs GCS, the dashboard (Serve REST API), the Serve controller and an HTTP proxy; each
worker pod advertises exactly one Serve replica's GPUs, so Ray places one replica per pod.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import rayleigh_api as api
from rayleigh_operator.render.names import (
    DASHBOARD_PORT,
    DELETION_COST_ANNOTATION,
    GCS_PORT,
    METRICS_PORT,
    RAYLET_HEALTH_PORT,
    SERVE_PORT,
    SPEC_HASH_ANNOTATION,
    child_name,
    labels,
    metadata,
    selector_labels,
)
from rayleigh_operator.render.options import RenderOptions
from rayleigh_operator.render.security import (
    container_security_context,
    pod_security_context,
    ray_auth_env,
    writable_dirs,
)
from rayleigh_serving.adapter_sources import ADAPTER_SECRETS_ROOT
from rayleigh_serving.config import HF_CACHE_DIR, PVC_MOUNT_ROOT
from rayleigh_serving.ingress import ray_env


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
    writable_volumes, writable_mounts = writable_dirs()  # the root filesystem is read-only
    volumes += writable_volumes
    mounts += writable_mounts
    for i, claim in enumerate(_pvc_claims(md)):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": True})
    # Adapter download credentials: files the replica reads at download time (a rotated Secret is
    # picked up by the kubelet, no restart); the values never enter the Serve config. Default file
    # mode 0644: the pods run without fsGroup, as a non-root user that must read them.
    for i, secret in enumerate(sorted({a.secret_ref for a in md.spec.adapters if a.secret_ref})):
        volumes.append({"name": f"adapter-secret-{i}", "secret": {"secretName": secret}})
        mounts.append(
            {"name": f"adapter-secret-{i}", "mountPath": f"{ADAPTER_SECRETS_ROOT}/{secret}", "readOnly": True}
        )
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
        *ray_auth_env(md),
        # The Serve ingress and Rayleigh's Ray settings, the same as `rayleigh up` and the benchmark run:
        # on every Ray pod (the controller on the head and the replicas on the workers read them).
        *({"name": k, "value": v} for k, v in ray_env(options.serve_ingress).items()),
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
    pod: dict[str, Any] = {
        "serviceAccountName": "default",
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
    }
    if md.spec.image.pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in md.spec.image.pull_secrets]
    return pod


def _image(md: api.ModelDeployment, options: RenderOptions) -> str:
    """spec.image.name, else the CUDA replica image for GPU models and the CPU one otherwise (one
    image for the whole Ray cluster: head and workers run the same Ray and Python)."""
    if md.spec.image.name:
        return md.spec.image.name
    return options.gpu_image if md.spec.resources.gpus > 0 else options.image


def render_head(md: api.ModelDeployment, options: RenderOptions) -> list[dict[str, Any]]:
    volumes, mounts = _volumes(md, options)
    head = md.spec.resources.head
    # No Ray Client port (10001) in the container ports or the Service. `ray start` cannot switch the
    # Ray Client server off: with grpc installed (ray[serve] needs it) a missing
    # --ray-client-server-port becomes 10001 and 0 is refused (< 1024) (ray/scripts/scripts.py
    # `has_ray_client`, ray/_private/parameter.py). It still listens inside the pod, behind token auth
    # (its gRPC interceptor) and the NetworkPolicy (only this Ray cluster's own pods).
    # The head advertises no CPU to Ray: no Serve replica ever lands on it (they need one CPU, or
    # GPUs), so spec.resources.head only sizes GCS, the dashboard, the Serve controller and proxy.
    head_cmd = (
        f"ray start --head --block --port={GCS_PORT} --dashboard-host=0.0.0.0 "
        f"--dashboard-port={DASHBOARD_PORT} --metrics-export-port={METRICS_PORT} "
        f"--num-gpus=0 --num-cpus=0 "
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
        ],
        "resources": {
            "requests": {"cpu": head.cpu, "memory": head.memory},
            "limits": {"memory": head.memory},
        },
        "readinessProbe": _probe(f"{_RAYLET_OK} && {_GCS_OK}", period=5, failures=10),
        "livenessProbe": _probe(f"{_RAYLET_OK} && {_GCS_OK}", period=5, failures=120, initial=30),
        "lifecycle": {"preStop": {"exec": {"command": ["ray", "stop"]}}},
        "securityContext": container_security_context(),
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
        "metadata": metadata(md, child_name(md, "head"), "head"),
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
        "metadata": metadata(md, child_name(md, "head"), "head"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(md, "head"),
            "ports": [
                {"name": "gcs", "port": GCS_PORT, "targetPort": GCS_PORT},
                {"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT},
                {"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT},
            ],
        },
    }
    serve_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(md, child_name(md, "serve"), "serve"),
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
        "securityContext": container_security_context(),
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
        "metadata": metadata(md, child_name(md, "workers"), "workers"),
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

"""Names, labels, ports and metadata every child of a ModelDeployment shares."""

from __future__ import annotations

from typing import Any

import rayleigh_api as api
from rayleigh_operator.render.options import RenderOptions

FIELD_MANAGER = "rayleigh-operator"
MD_LABEL = "serving.rayleigh.dev/model-deployment"
ROUTE_LABEL = "serving.rayleigh.dev/route"
SPEC_HASH_ANNOTATION = "serving.rayleigh.dev/pod-spec-hash"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# Set on the Ray pod templates (merge patch, not applied) when the token Secret had to be created again.
TOKEN_RESTART_ANNOTATION = "serving.rayleigh.dev/ray-token-restarted-at"

GCS_PORT = 6379
DASHBOARD_PORT = 8265
SERVE_PORT = 8000
METRICS_PORT = 8080
CLIENT_PORT = 10001  # Ray Client: never exposed (render/pods.py render_head)
RAYLET_HEALTH_PORT = 52365  # the dashboard agent's port on every Ray node


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
        "ray-token": f"{md.name}-ray-token",
    }
    return names[component]


def child_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name) identifying a child within its namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def selector_labels(md: api.ModelDeployment, component: str | None = None) -> dict[str, str]:
    out = {MD_LABEL: md.name}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def worker_selector(md: api.ModelDeployment) -> str:
    """`status.selector` for the scale subresource: the worker pods the HPA averages over."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(md, "workers").items()))


# The labels `labels()` puts on every child (the operator lists its children by them): extra labels
# from flags (`--podmonitor-label`) may not replace them.
STANDARD_LABEL_KEYS = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/component",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/part-of",
        MD_LABEL,
    }
)


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


def metadata(md: api.ModelDeployment, name: str, component: str, **extra: Any) -> dict[str, Any]:
    """A child's metadata: name, namespace, labels and (with a uid) the ownerReference."""
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

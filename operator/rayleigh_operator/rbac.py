"""The operator's least-privilege RBAC, in one table that the code checks against.

`PERMISSIONS` is the only place that says what the operator may do. It generates
manifests/rbac/operator.yaml (`python -m rayleigh_operator.rbac > manifests/rbac/operator.yaml`),
the KubeClient refuses any request outside it (so a new call cannot ship without a rule), and
a test replays every request the operator (kopf included) made against the emulated API during a
full reconcile and checks each is granted by the checked-in ClusterRole.

What the operator never gets: Secrets (Hugging Face tokens reach pods through secretKeyRef; the
operator only names the Secret), pods/exec, delete on anything (children go with their owner
through garbage collection), cluster-scoped writes.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

GROUP = "serving.rayleigh.dev"
NAME = "rayleigh-operator"
NAMESPACE = "rayleigh-system"

# (apiGroup, resource) -> verbs
PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    # The API it serves: kopf lists/watches, patches its own annotations; status is written by
    # the operator through the subresource.
    (GROUP, "modeldeployments"): ("get", "list", "watch", "patch"),
    (GROUP, "modeldeployments/status"): ("get", "patch"),
    # kopf discovers custom resources (and their changes) through the CRDs.
    ("apiextensions.k8s.io", "customresourcedefinitions"): ("list", "watch"),
    # Children, all written by server-side apply (PATCH) and read for drift and status.
    ("apps", "deployments"): ("get", "list", "watch", "patch"),
    ("", "services"): ("get", "list", "patch"),
    ("", "configmaps"): ("get", "list", "patch"),
    ("policy", "poddisruptionbudgets"): ("get", "list", "patch"),
    ("networking.k8s.io", "networkpolicies"): ("get", "list", "patch"),
    ("autoscaling", "horizontalpodautoscalers"): ("get", "list", "patch"),
    ("monitoring.coreos.com", "podmonitors"): ("get", "list", "patch"),
    # Worker pods: pod-deletion-cost so that scale-down removes idle replicas first.
    ("", "pods"): ("list", "patch"),
    # Events on every status transition (core v1 Events, as kubectl describe shows them).
    ("", "events"): ("create",),
    # GPU check: which GPU counts the nodes offer.
    ("", "nodes"): ("list",),
}

# Non-resource URLs (discovery) every authenticated identity may GET (system:discovery).
DISCOVERY_PREFIXES = ("/api", "/apis", "/version")


class Forbidden(PermissionError):
    """The code asked for something the operator's ClusterRole does not grant."""


def allowed(group: str, resource: str, verb: str) -> bool:
    return verb in PERMISSIONS.get((group, resource), ())


def check(group: str, resource: str, verb: str) -> None:
    if not allowed(group, resource, verb):
        raise Forbidden(
            f"the operator's ClusterRole does not grant {verb} on {resource}.{group or 'core'}: add it to "
            "rayleigh_operator.rbac.PERMISSIONS and regenerate manifests/rbac/operator.yaml"
        )


def check_non_resource(path: str) -> None:
    if not path.startswith(DISCOVERY_PREFIXES):
        raise Forbidden(f"non-resource URL {path} is not a discovery endpoint")


def cluster_role() -> dict[str, Any]:
    by_group: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (group, resource), verbs in PERMISSIONS.items():
        by_group.setdefault((group, verbs), []).append(resource)
    rules = [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        for (group, verbs), resources in sorted(by_group.items())
    ]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": _labels()},
        "rules": rules,
    }


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "rayleigh",
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/part-of": "rayleigh",
    }


def manifests(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": _labels()},
        },
        cluster_role(),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": NAME, "labels": _labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
    ]


HEADER = (
    "# Generated from rayleigh_operator/rbac.py (PERMISSIONS). Do not edit by hand:\n"
    "#   python -m rayleigh_operator.rbac > manifests/rbac/operator.yaml\n"
)


def manifests_yaml(namespace: str = NAMESPACE) -> str:
    return HEADER + "".join("---\n" + yaml.safe_dump(m, sort_keys=False) for m in manifests(namespace))


def granted_by(role: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    """Whether a ClusterRole document grants verb on group/resource (RBAC's own matching)."""
    for rule in role.get("rules", []):
        if (
            (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
            and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
        ):
            return True
    return False


if __name__ == "__main__":
    sys.stdout.write(manifests_yaml())

"""The operator's least-privilege RBAC, in one table that the code checks against.

`PERMISSIONS` is the only place that says what the operator may do. It generates
manifests/rbac/operator.yaml (`python -m rayleigh_operator.rbac > manifests/rbac/operator.yaml`) and
the chart's charts/rayleigh/files/operator-rules.yaml (`python charts/sync.py`); the KubeClient
refuses any request outside it (so a new call cannot ship without a rule); and the operator tests
run the operator with a service-account token that the emulated API server authorizes against the
chart-rendered roles (tests/operator/test_rbac_enforced.py), as a real cluster does.

Scope. Each permission is either namespaced (granted in every namespace the operator watches: a
Role + RoleBinding per namespace when the chart's `operator.watchNamespaces` is set, one ClusterRole
when it watches them all) or needs cluster scope (cluster-scoped resources: nodes for the GPU
preflight, the CRDs kopf watches), which stays in a small ClusterRole. The gateway routes ConfigMap
is the one object written outside the watched namespaces: a Role in the gateway's namespace grants
it by name (`ROUTES_VERBS`).

Server-side apply creates children with PATCH, and kube-apiserver authorizes a PATCH that creates
its object as `create` as well (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go,
`createAuthorizerAttributes`): every kind the operator applies has `create` and `patch`.

Namespaces: `list` + `watch` (names and labels) only when watching a list of namespaces: kopf observes
them then, and a 403 makes it retry for about a minute before it watches anything.

Pods: `list` + `patch` in the watched namespaces only, for the `controller.kubernetes.io/
pod-deletion-cost` annotation on worker pods (so that scale-down removes idle replicas first). RBAC
cannot narrow a patch to one annotation; the chart's ValidatingAdmissionPolicy does
(templates/operator-rbac.yaml, `operator.rbac.podPatchPolicy`): the operator's service account may
change nothing else of a pod. No `get` on pods: the operator never reads one pod alone.

Secrets: `create` + `get` in the watched namespaces, for one Secret per ModelDeployment, the Ray
cluster's auth token (`NAME-ray-token`): created once with a random token (a POST that fails with 409
when it exists: never patched, so never overwritten) and read to call the Ray dashboard with it. RBAC
cannot narrow either to these Secrets: `resourceNames` cannot restrict `create` (the name is not
part of a create request's URL) and the names follow the ModelDeployments, so `get` would need a
rule edited per object; so the role can read any Secret in a watched namespace by name. No `list`,
`watch`, `patch` or `update` on Secrets: the operator never lists them (its resync GETs each token
Secret by name) and never changes one. Other Secrets (Hugging Face tokens, Redis passwords) reach
pods through secretKeyRef; the operator only names them.

What the operator never gets: pods/exec, delete on anything (children go with their owner through
garbage collection), writes to cluster-scoped objects.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import yaml

GROUP = "serving.rayleigh.dev"
NAME = "rayleigh-operator"
NAMESPACE = "rayleigh-system"
ROUTES_CONFIGMAP = "rayleigh-gateway-routes"
APPLY = ("get", "list", "create", "patch")  # read for drift and status, written by server-side apply


@dataclass(frozen=True)
class Permission:
    group: str
    resource: str
    verbs: tuple[str, ...]
    cluster: bool = False  # a cluster-scoped resource: needs a ClusterRole even when watching namespaces
    why: str = ""
    watching_some_only: bool = False  # needed only when the operator watches a list of namespaces


TABLE: tuple[Permission, ...] = (
    Permission(GROUP, "modeldeployments", ("get", "list", "watch", "patch"), why="kopf lists, watches, patches"),
    Permission(GROUP, "modeldeployments/status", ("get", "patch"), why="status through the subresource"),
    Permission(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        ("list", "watch"),
        cluster=True,
        why="kopf discovers the custom resources it serves",
    ),
    Permission("apps", "deployments", ("get", "list", "watch", "create", "patch"), why="Ray head and workers"),
    Permission("", "services", APPLY, why="Ray head and Serve Services"),
    Permission("", "configmaps", APPLY, why="per-model ConfigMaps"),
    Permission("policy", "poddisruptionbudgets", APPLY),
    Permission("networking.k8s.io", "networkpolicies", APPLY),
    Permission("autoscaling", "horizontalpodautoscalers", APPLY),
    Permission("monitoring.coreos.com", "podmonitors", APPLY),
    Permission("", "pods", ("list", "patch"), why="pod-deletion-cost annotation on worker pods"),
    Permission("", "secrets", ("get", "create"), why="the Ray auth token Secret: created once, read for the dashboard"),
    Permission("", "events", ("create",), why="an Event on every status transition"),
    Permission("", "nodes", ("list",), cluster=True, why="GPU preflight: which GPU counts nodes offer"),
    Permission(
        "",
        "namespaces",
        ("list", "watch"),
        cluster=True,
        watching_some_only=True,
        why="kopf observes the namespaces it is given; refused, it retries for about a minute before it "
        "starts watching anything (kopf error_backoffs 1+1+2+3+5+8+13+21 s)",
    ),
)

# (apiGroup, resource) -> verbs: everything the operator may do somewhere (the client's check).
PERMISSIONS: dict[tuple[str, str], tuple[str, ...]] = {(p.group, p.resource): p.verbs for p in TABLE}

# The gateway routes ConfigMap in the gateway's namespace, by name (server-side apply + merge patch).
ROUTES_VERBS: tuple[str, ...] = ("get", "create", "patch")

# Non-resource URLs (discovery) every authenticated identity may GET (system:discovery).
DISCOVERY_PREFIXES = ("/api", "/apis", "/version")


class Forbidden(PermissionError):
    """The code asked for something the operator's roles do not grant."""


def allowed(group: str, resource: str, verb: str) -> bool:
    return verb in PERMISSIONS.get((group, resource), ())


def check(group: str, resource: str, verb: str) -> None:
    if not allowed(group, resource, verb):
        raise Forbidden(
            f"the operator's roles do not grant {verb} on {resource}.{group or 'core'}: add it to "
            "rayleigh_operator.rbac.TABLE and regenerate manifests/rbac/operator.yaml and the chart's rules "
            "(python charts/sync.py)"
        )


def check_non_resource(path: str) -> None:
    if not path.startswith(DISCOVERY_PREFIXES):
        raise Forbidden(f"non-resource URL {path} is not a discovery endpoint")


def _rules(permissions: list[Permission]) -> list[dict[str, Any]]:
    """PolicyRules, one per (apiGroup, verbs), resources sorted: a stable, compact rendering."""
    by_group: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for p in permissions:
        by_group.setdefault((p.group, p.verbs), []).append(p.resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        for (group, verbs), resources in sorted(by_group.items())
    ]


def all_rules() -> list[dict[str, Any]]:
    """The ClusterRole when the operator watches every namespace."""
    return _rules([p for p in TABLE if not p.watching_some_only])


def cluster_rules() -> list[dict[str, Any]]:
    """The ClusterRole when it watches some namespaces: cluster-scoped resources only."""
    return _rules([p for p in TABLE if p.cluster])


def namespaced_rules() -> list[dict[str, Any]]:
    """The Role in each watched namespace."""
    return _rules([p for p in TABLE if not p.cluster])


def routes_rules(configmap: str = ROUTES_CONFIGMAP) -> list[dict[str, Any]]:
    """The Role in the gateway's namespace (when it is not watched): the routes ConfigMap only."""
    return [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [configmap], "verbs": list(ROUTES_VERBS)}]


def cluster_role() -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": NAME, "labels": _labels()},
        "rules": all_rules(),
    }


def _labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "rayleigh",
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/part-of": "rayleigh",
    }


def _binding(kind: str, name: str, role_kind: str, namespace: str, sa_namespace: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels()}
    if kind == "RoleBinding":
        meta = {"name": name, "namespace": namespace, "labels": _labels()}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": sa_namespace}],
    }


def manifests(
    namespace: str = NAMESPACE,
    watch_namespaces: tuple[str, ...] = (),
    gateway_namespace: str | None = None,
    routes_configmap: str = ROUTES_CONFIGMAP,
) -> list[dict[str, Any]]:
    """ServiceAccount and roles: one ClusterRole for every namespace, or a small ClusterRole plus a
    Role per watched namespace (and one for the routes ConfigMap if its namespace is not watched)."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": NAME, "namespace": namespace, "labels": _labels()},
        }
    ]
    role = cluster_role()
    if not watch_namespaces:
        return [*docs, role, _binding("ClusterRoleBinding", NAME, "ClusterRole", "", namespace)]
    role["rules"] = cluster_rules()
    docs += [role, _binding("ClusterRoleBinding", NAME, "ClusterRole", "", namespace)]
    for ns in watch_namespaces:
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": NAME, "namespace": ns, "labels": _labels()},
                "rules": namespaced_rules(),
            }
        )
        docs.append(_binding("RoleBinding", NAME, "Role", ns, namespace))
    gateway_namespace = gateway_namespace or namespace
    if gateway_namespace not in watch_namespaces:
        routes = f"{NAME}-routes"
        docs.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": routes, "namespace": gateway_namespace, "labels": _labels()},
                "rules": routes_rules(routes_configmap),
            }
        )
        docs.append(_binding("RoleBinding", routes, "Role", gateway_namespace, namespace))
    return docs


def all_manifests(
    namespace: str = NAMESPACE, watch_namespaces: tuple[str, ...] = (), pod_patch_policy_enabled: bool = True
) -> list[dict[str, Any]]:
    """`manifests` plus the pod patch policy (what manifests/rbac/operator.yaml holds)."""
    docs = manifests(namespace, watch_namespaces)
    if pod_patch_policy_enabled:
        docs += pod_patch_policy(f"system:serviceaccount:{namespace}:{NAME}")
    return docs


# The ValidatingAdmissionPolicy that narrows the operator's pod patches to one annotation: RBAC can
# grant `patch` on pods, not "patch this annotation only". Evaluated by the API server (Kubernetes
# >= 1.30) on every UPDATE of a pod by the operator's service account.
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
POD_PATCH_POLICY = f"{NAME}-pod-patches"


def _same(field: str) -> str:
    """CEL: a metadata field is unchanged (absent on both sides, or equal)."""
    return (
        f"has(object.metadata.{field}) == has(oldObject.metadata.{field}) && "
        f"(!has(object.metadata.{field}) || object.metadata.{field} == oldObject.metadata.{field})"
    )


POD_PATCH_VALIDATIONS: list[dict[str, str]] = [
    {
        "expression": "object.spec == oldObject.spec",
        "message": f"the Rayleigh operator may change only the {DELETION_COST} annotation of a pod (spec changed)",
    },
    {
        "expression": " && ".join(_same(f) for f in ("labels", "ownerReferences", "finalizers")),
        "message": f"the Rayleigh operator may change only the {DELETION_COST} annotation of a pod "
        "(labels, ownerReferences or finalizers changed)",
    },
    {
        "expression": (
            "(!has(object.metadata.annotations) || object.metadata.annotations.all(k, "
            f"k == '{DELETION_COST}' || (has(oldObject.metadata.annotations) && "
            "k in oldObject.metadata.annotations && oldObject.metadata.annotations[k] == object.metadata.annotations[k])))"
            " && (!has(oldObject.metadata.annotations) || oldObject.metadata.annotations.all(k, "
            f"k == '{DELETION_COST}' || (has(object.metadata.annotations) && k in object.metadata.annotations)))"
        ),
        "message": f"the Rayleigh operator may change only the {DELETION_COST} annotation of a pod "
        "(another annotation changed)",
    },
]
POD_PATCH_MATCH: dict[str, Any] = {
    "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}]
}


def pod_patch_policy(username: str) -> list[dict[str, Any]]:
    """The policy and its binding for the operator's user (`system:serviceaccount:NS:NAME`)."""
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POD_PATCH_POLICY, "labels": _labels()},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": POD_PATCH_MATCH,
                "matchConditions": [
                    {"name": "rayleigh-operator", "expression": f"request.userInfo.username == '{username}'"}
                ],
                "validations": POD_PATCH_VALIDATIONS,
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POD_PATCH_POLICY, "labels": _labels()},
            "spec": {"policyName": POD_PATCH_POLICY, "validationActions": ["Deny"]},
        },
    ]


HEADER = (
    "# Generated from rayleigh_operator/rbac.py (TABLE). Do not edit by hand:\n"
    "#   python -m rayleigh_operator.rbac > manifests/rbac/operator.yaml\n"
)


def manifests_yaml(namespace: str = NAMESPACE, watch_namespaces: tuple[str, ...] = ()) -> str:
    return HEADER + "".join(
        "---\n" + yaml.safe_dump(m, sort_keys=False, width=1000) for m in all_manifests(namespace, watch_namespaces)
    )


def granted_by(role: dict[str, Any], group: str, resource: str, verb: str, name: str = "") -> bool:
    """Whether a Role/ClusterRole document grants verb on group/resource (RBAC's own matching:
    plugin/pkg/auth/authorizer/rbac/rbac.go RuleAllows)."""
    for rule in role.get("rules", []):
        names = rule.get("resourceNames") or []
        if (
            (group in rule.get("apiGroups", []) or "*" in rule.get("apiGroups", []))
            and (resource in rule.get("resources", []) or "*" in rule.get("resources", []))
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", []))
            and (not names or name in names)
        ):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the operator's ServiceAccount and RBAC manifests.")
    parser.add_argument("--namespace", default=NAMESPACE, help="the operator's namespace")
    parser.add_argument(
        "--watch-namespace", action="append", default=[], help="watched namespace (repeatable); default: all"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(manifests_yaml(args.namespace, tuple(args.watch_namespace)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

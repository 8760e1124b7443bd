"""The chart's operator RBAC is exactly rayleigh_operator.rbac, in both scopes, and least privilege.

Rendered by the real helm binary. Watching every namespace: one ClusterRole with the whole table.
Watching some (`operator.watchNamespaces`): a ClusterRole with cluster-scoped reads only, a Role and
RoleBinding per watched namespace, and a Role for the routes ConfigMap by name in the gateway's
namespace. Whether the roles are enough is checked by running the operator under them against the
emulated API server, which enforces RBAC (tests/operator/test_rbac_enforced.py).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from rayleigh_operator import rbac
from tests.chart.helpers import CHART, NAMESPACE, render

pytestmark = pytest.mark.timeout(120)

RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
SA = "rayleigh-operator"
SUBJECT = [{"kind": "ServiceAccount", "name": SA, "namespace": NAMESPACE}]


def rbac_docs(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    return [d for d in render(values, *extra) if d["kind"] in RBAC_KINDS and "operator" in d["metadata"]["name"]]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_watching_every_namespace_is_one_cluster_role_with_the_whole_table() -> None:
    docs = rbac_docs()
    (role,) = by_kind(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert role["rules"] == rbac.all_rules()
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"] == SUBJECT
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []


def test_watching_some_namespaces_is_a_role_in_each_and_cluster_scope_only_for_cluster_resources() -> None:
    docs = rbac_docs({"operator.watchNamespaces": ["ml", "research"]})
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == rbac.cluster_rules()
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"nodes", "customresourcedefinitions", "namespaces"}
    assert not any(set(rule["verbs"]) - {"get", "list", "watch"} for rule in cluster_role["rules"])  # read-only
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in by_kind(docs, "Role")}
    assert set(roles) == {("ml", SA), ("research", SA), (NAMESPACE, f"{SA}-routes")}
    for ns in ("ml", "research"):
        assert roles[(ns, SA)]["rules"] == rbac.namespaced_rules()
    assert roles[(NAMESPACE, f"{SA}-routes")]["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["rayleigh-gateway-routes"],
            "verbs": list(rbac.ROUTES_VERBS),
        }
    ]
    bindings = {(d["metadata"]["namespace"], d["roleRef"]["name"]) for d in by_kind(docs, "RoleBinding")}
    assert bindings == set(roles)
    assert all(d["subjects"] == SUBJECT for d in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"))
    assert not any(d["metadata"].get("namespace") == "kube-system" for d in docs)


def test_no_routes_role_when_the_gateway_namespace_is_watched() -> None:
    docs = rbac_docs({"operator.watchNamespaces": ["ml", NAMESPACE]})
    assert {d["metadata"]["namespace"] for d in by_kind(docs, "Role")} == {"ml", NAMESPACE}
    assert all(d["metadata"]["name"] == SA for d in by_kind(docs, "Role"))


def test_every_kind_written_by_server_side_apply_can_be_created() -> None:
    """Finding 1: kube-apiserver authorizes an apply that creates its object as `create`."""
    applied = {(p.group, p.resource) for p in rbac.TABLE if "patch" in p.verbs and "/" not in p.resource}
    applied -= {(rbac.GROUP, "modeldeployments"), ("", "pods")}  # patched, never created by the operator
    for role in by_kind(rbac_docs(), "ClusterRole"):
        for group, resource in applied:
            assert rbac.granted_by(role, group, resource, "create"), (group, resource)
            assert rbac.granted_by(role, group, resource, "patch"), (group, resource)


def test_never_granted_secret_lists_or_writes_delete_exec_or_cluster_scoped_writes() -> None:
    for values in ({}, {"operator.watchNamespaces": ["ml"]}):
        for role in by_kind(rbac_docs(values), "ClusterRole") + by_kind(rbac_docs(values), "Role"):
            for rule in role["rules"]:
                # Secrets: only the Ray token Secrets, created once and read by name (rbac.py).
                assert "secrets" not in rule["resources"] or rule["verbs"] == ["get", "create"], rule
                assert "secrets" not in rule["resources"] or role["kind"] == "Role" or not values
                assert "pods/exec" not in rule["resources"]
                assert not {"delete", "deletecollection", "*", "escalate", "bind", "impersonate"} & set(rule["verbs"])
                assert "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    pods = [r for r in rbac.all_rules() if "pods" in r["resources"]]
    assert [r["verbs"] for r in pods] == [["list", "patch"]]


def test_the_pod_patch_policy_binds_the_operators_user_only() -> None:
    docs = render()
    (policy,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    (binding,) = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert policy["spec"]["validations"] == rbac.POD_PATCH_VALIDATIONS
    assert policy["spec"]["matchConstraints"] == rbac.POD_PATCH_MATCH
    assert policy["spec"]["matchConditions"] == [
        {
            "name": "rayleigh-operator",
            "expression": f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{SA}'",
        }
    ]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    plain = [
        d for d in yaml.safe_load_all((CHART.parents[1] / "manifests" / "rbac" / "operator.yaml").read_text()) if d
    ]
    (plain_policy,) = [d for d in plain if d["kind"] == "ValidatingAdmissionPolicy"]
    assert plain_policy["spec"] == policy["spec"]


@pytest.mark.parametrize(
    ("values", "extra"),
    [({"operator.rbac.podPatchPolicy": False}, ()), ({}, ("--kube-version", "1.29.0"))],
    ids=["disabled", "kubernetes-1.29"],
)
def test_the_pod_patch_policy_can_be_left_out(values: dict[str, Any], extra: tuple[str, ...]) -> None:
    docs = render(values, *extra)
    assert not [d for d in docs if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_plain_manifests_are_the_table_for_both_scopes() -> None:
    docs = rbac.manifests(watch_namespaces=("ml",))
    assert {(d["kind"], d["metadata"].get("namespace", "")) for d in docs} == {
        ("ServiceAccount", NAMESPACE),
        ("ClusterRole", ""),
        ("ClusterRoleBinding", ""),
        ("Role", "ml"),
        ("RoleBinding", "ml"),
        ("Role", NAMESPACE),
        ("RoleBinding", NAMESPACE),
    }

"""Faults and invalid input: the real operator process against the emulated Kubernetes API.

No Ray here (the dashboard URL points at a closed loopback port); the Serve deploy failure with
a real Ray head is in test_operator_ray.py.

Emulator limits (see tests/plugins/kube.py): no CRD schema/CEL enforcement (so a spec the API
server would reject can reach the operator: that is how the operator's own checks are tested),
no kubelet (readiness is set by the tests), emulated garbage collection, no real SSA ownership.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from rayleigh_operator import rbac
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

FAST = [
    "--dashboard-url",
    "http://127.0.0.1:9",
    "--local-base",
    str(REPO_ROOT),
    "--poll-seconds",
    "0.3",
    "--resync-seconds",
    "1",
]


def tiny_doc(name: str, **spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": "default"}
    doc["spec"].update(spec)
    return doc


def apply_docs(kube: Kube, *docs: dict[str, Any]) -> None:
    kube.kubectl(
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        "-",
        input="".join("---\n" + yaml.safe_dump(d) for d in docs),
    )


PATHS = {
    "deployment": "/apis/apps/v1/namespaces/default/deployments",
    "service": "/api/v1/namespaces/default/services",
    "configmap": "/api/v1/namespaces/default/configmaps",
    "poddisruptionbudget": "/apis/policy/v1/namespaces/default/poddisruptionbudgets",
    "networkpolicy": "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies",
    "secret": "/api/v1/namespaces/default/secrets",
}


def all_children(kube: Kube) -> dict[str, dict[str, list[str]]]:
    """model deployment -> kind -> child names, from one list per kind."""
    out: dict[str, dict[str, list[str]]] = {}
    for kind, path in PATHS.items():
        for obj in kube.api(path)["items"]:
            owner = (obj["metadata"].get("labels") or {}).get("serving.rayleigh.dev/model-deployment")
            if owner:
                out.setdefault(owner, {k: [] for k in PATHS})[kind].append(obj["metadata"]["name"])
    for kinds in out.values():
        for names in kinds.values():
            names.sort()
    return out


def children(kube: Kube, name: str) -> dict[str, list[str]]:
    return all_children(kube).get(name, {k: [] for k in PATHS})


EXPECTED = {
    "deployment": ["{n}-head", "{n}-workers"],
    "service": ["{n}-head", "{n}-serve"],
    "configmap": ["rayleigh-route-{n}"],
    "poddisruptionbudget": ["{n}-workers"],
    "networkpolicy": ["{n}"],
    "secret": ["{n}-ray-token"],
}


def expected(name: str) -> dict[str, list[str]]:
    return {k: sorted(v.format(n=name) for v in vs) for k, vs in EXPECTED.items()}


def md_path(name: str) -> str:
    return f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments/{name}"


def phase_of(kube: Kube, name: str) -> str | None:
    md = kube.api(md_path(name))
    return None if md is None else (md.get("status") or {}).get("phase")


def condition(kube: Kube, name: str, ctype: str) -> dict[str, Any] | None:
    md = kube.api(md_path(name)) or {}
    return next((c for c in (md.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)


def test_deleted_children_are_restored(kube: Kube, operator_factory: Callable[..., OperatorProcess]) -> None:
    operator_factory(*FAST)
    apply_docs(kube, tiny_doc("drift-del"))
    wait_for(lambda: children(kube, "drift-del") == expected("drift-del"), 30, what="children")
    kube.kubectl("delete", "deployment", "drift-del-workers")
    kube.kubectl("delete", "service", "drift-del-serve")
    kube.kubectl("delete", "configmap", "rayleigh-route-drift-del")
    kube.kubectl("delete", "secret", "drift-del-ray-token")
    # Deployments come back from their watch event; the rest within the resync bound (1 s here).
    wait_for(lambda: children(kube, "drift-del") == expected("drift-del"), 15, what="children restored")


def test_gateway_routes_configmap_gathers_every_model_and_drops_deleted_ones(
    kube: Kube, operator_factory: Callable[..., OperatorProcess], tmp_path: Any
) -> None:
    """The gateway mounts one ConfigMap as its routes directory; the gateway's own loader reads it."""
    from rayleigh_gateway.routes import load_config

    operator_factory(*FAST, "--routes-configmap", "rayleigh-gateway-routes")
    docs = [tiny_doc(n) for n in ("routes-a", "routes-b")]
    for d in docs:
        d["spec"]["model"]["servedModelName"] = f"{d['metadata']['name']}-model"
    apply_docs(kube, *docs)
    path = "/api/v1/namespaces/rayleigh-system/configmaps/rayleigh-gateway-routes"
    keys = {"default_routes-a.json", "default_routes-b.json"}

    def data() -> dict[str, str]:
        return dict(((kube.api(path) or {}).get("data") or {}).items())

    wait_for(lambda: keys <= set(data()), 30, what="both routes in the gateway's ConfigMap")
    for key, text in data().items():
        (tmp_path / key).write_text(text)
    config = load_config(tmp_path)
    assert {m for r in config.routes for m in r.models} >= {"routes-a-model", "routes-b-model"}
    kube.kubectl("delete", "modeldeployment", "routes-b")
    wait_for(lambda: "default_routes-b.json" not in data(), 30, what="deleted model's route removed")
    assert "default_routes-a.json" in data()


def test_ray_token_secret_is_created_once_kept_and_recreated_when_deleted(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    op = operator_factory(*FAST)
    apply_docs(kube, tiny_doc("token"))
    path = "/api/v1/namespaces/default/secrets/token-ray-token"
    wait_for(lambda: kube.api(path) is not None, 30, what="the Ray token Secret")
    first = kube.api(path)
    token = base64.b64decode(first["data"]["token"]).decode()
    assert len(token) == 64 and int(token, 16) >= 0  # 256 random bits, hex, as Ray generates them
    assert first["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    # A spec change applies every child again, and so does a restarted operator: the token stays.
    apply_docs(kube, tiny_doc("token", replicas=2))
    wait_for(
        lambda: kube.get("deployment", "token-workers")["spec"]["replicas"] == 2,  # type: ignore[index]
        15,
        what="the spec change applied",
    )
    op.kill()
    operator_factory(*FAST)
    time.sleep(3)  # its first apply and a few resyncs (1 s)
    assert kube.api(path)["data"] == first["data"]
    kube.kubectl("delete", "secret", "token-ray-token")
    wait_for(lambda: kube.api(path) is not None, 15, what="the token Secret created again")
    assert kube.api(path)["data"]["token"] != first["data"]["token"]

    def restarted(name: str) -> bool:
        template = kube.get("deployment", name)["spec"]["template"]  # type: ignore[index]
        return "serving.rayleigh.dev/ray-token-restarted-at" in (template["metadata"].get("annotations") or {})

    # The running Ray pods hold the old token: the head and the workers are rolled.
    wait_for(lambda: restarted("token-head") and restarted("token-workers"), 15, what="Ray pods restarted")
    time.sleep(2)  # resyncs and re-applies keep the annotation (not applied: no apply removes it)
    assert restarted("token-head") and restarted("token-workers")


def test_hand_edited_children_are_restored(kube: Kube, operator_factory: Callable[..., OperatorProcess]) -> None:
    operator_factory(*FAST)
    apply_docs(kube, tiny_doc("drift-edit"))
    wait_for(lambda: children(kube, "drift-edit") == expected("drift-edit"), 30, what="children")
    kube.kubectl("patch", "deployment", "drift-edit-workers", "--type=merge", "-p", '{"spec":{"replicas":7}}')
    kube.kubectl(
        "patch", "configmap", "rayleigh-route-drift-edit", "--type=merge", "-p", '{"data":{"route.json":"{}"}}'
    )
    wait_for(
        lambda: kube.get("deployment", "drift-edit-workers")["spec"]["replicas"] == 1,
        15,  # type: ignore[index]
        what="worker replicas back to spec.replicas",
    )
    wait_for(
        lambda: (
            json.loads(kube.get("configmap", "rayleigh-route-drift-edit")["data"]["route.json"]).get("models")  # type: ignore[index]
            == ["tiny-qwen"]
        ),
        15,
        what="route restored",
    )


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    names = [f"crash-{i:02d}" for i in range(40)]
    op = operator_factory(*FAST, "--log-level", "WARNING")
    time.sleep(1.5)  # kopf is listening
    apply_docs(kube, *(tiny_doc(n) for n in names))

    def some_children() -> int:
        with urllib.request.urlopen(f"{kube.url}/apis/apps/v1/namespaces/default/deployments", timeout=5) as r:
            return sum(1 for o in json.loads(r.read())["items"] if o["metadata"]["name"].startswith("crash-"))

    wait_for(lambda: some_children() > 0, 30, interval=0.01, what="the first children")
    op.kill()
    at_kill = some_children()
    unreported = sum(1 for n in names if not (kube.get("modeldeployment", n) or {}).get("status"))
    # Mid-reconcile: children still missing, or statuses not yet written (on a quiet machine the
    # children of all 40 can be applied before the first list returns).
    assert at_kill < 2 * len(names) or unreported > 0, "the operator finished before it could be killed"
    operator_factory(*FAST, "--log-level", "WARNING")

    def converged() -> bool:
        found = all_children(kube)
        return all(found.get(n) == expected(n) for n in names)

    wait_for(converged, 60, what="every child of every ModelDeployment")

    def phases() -> set[Any]:
        items = kube.api("/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments")["items"]
        return {(o.get("status") or {}).get("phase") for o in items if o["metadata"]["name"] in names}

    wait_for(lambda: phases() == {"Pending"}, 30, what="every status written")
    # Exactly the expected objects: nothing created twice under another name.
    deployments = [o["metadata"]["name"] for o in kube.list("deployment") if o["metadata"]["name"].startswith("crash-")]
    assert len(deployments) == len(set(deployments)) == 2 * len(names)
    kube.kubectl("delete", "md", *names, "--wait=false")


def test_invalid_spec_fails_with_field_path_and_creates_nothing(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    operator_factory(*FAST)
    # A rule beyond the CRD's: extraArgs must be flags the replica's vLLM knows.
    apply_docs(kube, tiny_doc("bad-spec", engine={"extraArgs": ["--no-such-flag=1"]}))
    wait_for(lambda: phase_of(kube, "bad-spec") == "Failed", 20, what="phase Failed")
    ready = condition(kube, "bad-spec", "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "spec.engine.extraArgs[0]" in ready["message"] and "--no-such-flag" in ready["message"]
    assert children(kube, "bad-spec") == {k: [] for k in EXPECTED}


def test_spec_the_crd_schema_rejects_is_refused_at_admission_and_reaches_no_one(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    """The API server validates a ModelDeployment against the CRD's structural schema before it is
    stored (the emulator does the same: tests/emulator_admission.py), so the operator never sees it
    and kubectl names the field."""
    operator_factory(*FAST)
    with pytest.raises(AssertionError, match=r'spec\.replicas: Invalid value: "many".*must be of type integer'):
        apply_docs(kube, tiny_doc("bad-type", replicas="many"))
    assert kube.get("modeldeployment", "bad-type", "default") is None
    assert children(kube, "bad-type") == {k: [] for k in EXPECTED}


def test_gpu_count_no_node_offers_is_insufficient_gpu(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}}
    apply_docs(kube, node)
    kube.kubectl(
        "patch",
        "node",
        "gpu-node-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"allocatable":{"nvidia.com/gpu":"1","cpu":"16"}}}',
    )
    try:
        operator_factory(*FAST)
        doc = yaml.safe_load((EXAMPLES_DIR / "qwen7b-tp2-autoscale.yaml").read_text())
        doc["metadata"] = {"name": "too-big", "namespace": "default"}
        apply_docs(kube, doc)
        wait_for(lambda: phase_of(kube, "too-big") == "Failed", 20, what="phase Failed")
        ready = condition(kube, "too-big", "Ready")
        assert ready is not None and ready["reason"] == "InsufficientGPU", ready
        assert children(kube, "too-big") == {k: [] for k in EXPECTED}
        events = [e for e in kube.list("events") if e["involvedObject"].get("name") == "too-big"]
        assert [e["type"] for e in events] == ["Warning"] and events[0]["reason"] == "InsufficientGPU"
    finally:
        kube.kubectl("delete", "node", "gpu-node-1", "--ignore-not-found")


def test_autoscaling_without_the_metric_sets_a_condition_instead_of_an_hpa(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    operator_factory(*FAST)
    apply_docs(kube, tiny_doc("auto", autoscaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_for(lambda: children(kube, "auto") == expected("auto"), 30, what="children")
    missing = wait_for(lambda: condition(kube, "auto", "AutoscalingMetricMissing"), 20, what="metric condition")
    assert missing["status"] == "True" and missing["reason"] == "CustomMetricsAPIUnavailable"
    assert kube.list("hpa", selector="serving.rayleigh.dev/model-deployment=auto") == []


def test_hpa_is_created_once_the_metric_exists(kube: Kube, operator_factory: Callable[..., OperatorProcess]) -> None:
    """prometheus-adapter is stood in for by the emulator's discovery of custom.metrics.k8s.io."""
    operator_factory(*FAST)
    apply_docs(kube, tiny_doc("auto-later", autoscaling={"minReplicas": 1, "maxReplicas": 3}))
    wait_for(
        lambda: (c := condition(kube, "auto-later", "AutoscalingMetricMissing")) and c["status"] == "True",
        20,
        what="metric missing first",
    )
    kube.serve_custom_metrics("ray_vllm_num_requests_waiting", "rayleigh_inflight_requests")
    # Rechecked every resync (1 s here): the HPA appears and the condition clears.
    wait_for(lambda: kube.list("hpa", selector="serving.rayleigh.dev/model-deployment=auto-later"), 20, what="the HPA")
    wait_for(
        lambda: (c := condition(kube, "auto-later", "AutoscalingMetricMissing")) and c["status"] == "False",
        20,
        what="condition cleared",
    )
    hpa = kube.get("hpa", "auto-later")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["kind"] == "ModelDeployment"


def test_status_reports_replicas_and_selector_for_the_scale_subresource(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    operator_factory(*FAST)
    apply_docs(kube, tiny_doc("scaled"))
    wait_for(lambda: children(kube, "scaled") == expected("scaled"), 30, what="children")
    kube.kubectl("scale", "md/scaled", "--replicas=3")
    wait_for(
        lambda: kube.get("deployment", "scaled-workers")["spec"]["replicas"] == 3,
        15,  # type: ignore[index]
        what="workers scaled",
    )
    kube.set_deployment_ready("scaled-workers", 2, replicas=3)
    scale = wait_for(
        lambda: (
            (
                s := json.loads(
                    kube.kubectl(
                        "get",
                        "--raw",
                        "/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments/scaled/scale",
                    )
                )
            )
            and s["status"]["replicas"] == 3
            and s
        ),
        15,
        what="status.replicas 3",
    )
    assert scale["spec"]["replicas"] == 3
    assert (
        scale["status"]["selector"]
        == "app.kubernetes.io/component=workers,serving.rayleigh.dev/model-deployment=scaled"
    )


def test_every_request_the_operator_makes_is_granted_by_its_cluster_role(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    """Replays the emulator's request log (kopf's and the operator's own requests) against
    manifests/rbac/operator.yaml. The emulator does not enforce RBAC itself."""
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-2"}}
    apply_docs(kube, node)
    kube.kubectl(
        "patch",
        "node",
        "gpu-node-2",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"allocatable":{"nvidia.com/gpu":"2"}}}',
    )
    skip = len(kube.requests_log())
    op = operator_factory(*FAST)
    doc = yaml.safe_load((EXAMPLES_DIR / "qwen7b-tp2-autoscale.yaml").read_text())
    doc["metadata"] = {"name": "rbac-check", "namespace": "default"}
    apply_docs(kube, doc)
    wait_for(lambda: children(kube, "rbac-check") == expected("rbac-check"), 30, what="children")
    kube.kubectl("delete", "service", "rbac-check-serve")
    kube.set_deployment_ready("rbac-check-head", 1)
    wait_for(lambda: kube.get("service", "rbac-check-serve"), 15, what="restored service")
    kube.kubectl("scale", "md/rbac-check", "--replicas=2")
    wait_for(
        lambda: kube.get("deployment", "rbac-check-workers")["spec"]["replicas"] == 2,
        15,  # type: ignore[index]
        what="scaled",
    )
    kube.kubectl("delete", "md", "rbac-check")
    kube.kubectl("delete", "node", "gpu-node-2")
    op.stop()
    role = next(
        d
        for d in yaml.safe_load_all((REPO_ROOT / "manifests/rbac/operator.yaml").read_text())
        if d and d["kind"] == "ClusterRole"
    )
    checked = set()
    for req in kube.requests_log()[skip:]:
        if not req["userAgent"].startswith(("kopf/", "rayleigh-operator/")):
            continue
        need = request_permission(req)
        if need is None:
            continue  # discovery: granted to every authenticated identity (system:discovery)
        checked.add(need)
        assert rbac.granted_by(role, *need), f"{req['method']} {req['path']} needs {need}, not in the ClusterRole"
    assert ("apps", "deployments", "patch") in checked and (
        "serving.rayleigh.dev",
        "modeldeployments",
        "watch",
    ) in checked


def request_permission(req: dict[str, str]) -> tuple[str, str, str] | None:
    parts = req["path"].strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    method = req["method"]
    if method == "GET":
        verb = "watch" if "watch=true" in req["query"] or "watch=1" in req["query"] else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return group, resource, verb


def test_checked_in_rbac_matches_the_generated_one() -> None:
    assert (REPO_ROOT / "manifests" / "rbac" / "operator.yaml").read_text() == rbac.manifests_yaml()


def test_client_refuses_a_call_the_role_does_not_grant() -> None:
    with pytest.raises(rbac.Forbidden, match="secrets"):
        rbac.check("", "secrets", "list")  # token Secrets are read by name, never listed
    with pytest.raises(rbac.Forbidden, match="secrets"):
        rbac.check("", "secrets", "patch")  # and never changed once created

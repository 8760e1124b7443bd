"""Renderers: golden files for every example, and the properties every child must have.

Golden files live in tests/operator/golden/<example>.yaml and hold exactly what
`rayleigh render -f manifests/examples/<example>.yaml` prints. After an intended change,
regenerate them with `RAYLEIGH_UPDATE_GOLDEN=1 pytest tests/operator/test_render.py` and review
the diff.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from rayleigh_api.validation import validate_document
from rayleigh_gateway.routes import GatewayConfig
from rayleigh_operator import render as r
from rayleigh_operator.render_cli import render as render_cmd
from rayleigh_serving.adapter_sources import ADAPTER_SECRETS_ROOT
from rayleigh_serving.config import HF_CACHE_DIR, PVC_MOUNT_ROOT, build_serve_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
GOLDEN = Path(__file__).parent / "golden"
UID = "5f0c8a4e-2b1d-4c3e-9f7a-000000000001"
K8S_VERSION = "1.33.0"


def load(path: Path, uid: str | None = UID) -> Any:
    doc = yaml.safe_load(path.read_text())
    if uid:
        doc["metadata"]["uid"] = uid
    return validate_document(doc)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def workers(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in by_kind(objs, "Deployment") if o["metadata"]["name"].endswith("-workers"))


def test_every_example_has_a_golden_file() -> None:
    assert EXAMPLES, "no examples found"
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(p.stem for p in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_cli_output_matches_golden_file(example: Path) -> None:
    result = CliRunner().invoke(render_cmd, ["-f", str(example)])
    assert result.exit_code == 0, result.output
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("RAYLEIGH_UPDATE_GOLDEN") == "1":
        golden.write_text(result.output)
    assert result.output == golden.read_text(), f"{golden} differs: rerun with RAYLEIGH_UPDATE_GOLDEN=1 and review"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_child_has_standard_labels_and_owner_reference(example: Path) -> None:
    md = load(example)
    for obj in r.render(md):
        meta = obj["metadata"]
        assert meta["namespace"] == md.namespace
        for key in ("name", "instance", "component", "managed-by", "part-of"):
            assert f"app.kubernetes.io/{key}" in meta["labels"], (obj["kind"], key)
        assert meta["labels"][r.MD_LABEL] == md.name
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "serving.rayleigh.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": md.name,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_children_have_no_owner_reference_without_a_uid() -> None:
    md = load(REPO / "manifests" / "examples" / "tiny.yaml", uid=None)
    assert all("ownerReferences" not in o["metadata"] for o in r.render(md))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_built_in_children_validate_against_the_kubernetes_schema(example: Path) -> None:
    for obj in r.render(load(example), options=r.RenderOptions(monitoring=True)):
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # a CRD, not in the upstream schema set
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_worker_pod_requests_tensor_parallel_gpus_and_spec_scheduling() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen7b-tp2-autoscale.yaml")
    pod = workers(r.render(md))["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "2" == res["requests"]["nvidia.com/gpu"]
    assert pod["priorityClassName"] == "llm-serving"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_worker_pod_gets_node_selector_tolerations_and_token_secret() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen7b-awq.yaml")
    pod = workers(r.render(md))["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "token"}}


def test_worker_pod_mounts_shm_cache_and_pvc_where_the_serve_config_looks() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen-lora.yaml")
    pod = workers(r.render(md))["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/dev/shm", HF_CACHE_DIR, f"{PVC_MOUNT_ROOT}/lora-adapters"} <= mounts
    serve = json.dumps(build_serve_config(md))
    assert f"{PVC_MOUNT_ROOT}/lora-adapters/sql-assistant" in serve
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["medium"] == "Memory"


def test_worker_pod_mounts_each_adapter_secret_once_where_the_replica_reads_it() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen-lora.yaml")
    md.spec.adapters.append(md.spec.adapters[-1].model_copy(update={"name": "de-translate-v2"}))
    pod = workers(r.render(md))["spec"]["template"]["spec"]
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert sorted(secret_volumes.values()) == ["hf-token", "lora-store-creds"]
    for volume, secret in secret_volumes.items():
        assert mounts[volume]["mountPath"] == f"{ADAPTER_SECRETS_ROOT}/{secret}"
        assert mounts[volume]["readOnly"] is True
    # The Serve config names the Secret, never its content.
    user_config = build_serve_config(md)["applications"][0]["deployments"][0]["user_config"]
    assert [a["secret"] for a in user_config["adapters"]][2:] == ["hf-token", "lora-store-creds", "lora-store-creds"]


def test_workers_replicas_follow_spec_and_rollout_knobs() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen-lora.yaml")
    dep = workers(r.render(md))
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


def test_pod_template_hash_changes_with_image_not_with_replicas() -> None:
    md = load(REPO / "manifests" / "examples" / "tiny.yaml")
    base = workers(r.render(md))["spec"]["template"]["metadata"]["annotations"][r.SPEC_HASH_ANNOTATION]
    scaled = md.model_copy(deep=True)
    scaled.spec.replicas = 3
    assert workers(r.render(scaled))["spec"]["template"]["metadata"]["annotations"][r.SPEC_HASH_ANNOTATION] == base
    new_image = md.model_copy(deep=True)
    new_image.spec.image.name = "example.com/replica:2"
    assert workers(r.render(new_image))["spec"]["template"]["metadata"]["annotations"][r.SPEC_HASH_ANNOTATION] != base


def test_hpa_targets_the_scale_subresource_with_queue_depth_then_in_flight() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen7b-tp2-autoscale.yaml")
    (hpa,) = by_kind(r.render(md), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "serving.rayleigh.dev/v1alpha1",
        "kind": "ModelDeployment",
        "name": "qwen7b-tp2",
    }
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names == ["ray_vllm_num_requests_waiting", "rayleigh_inflight_requests"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600


def test_kv_cache_target_is_rendered_as_a_milli_quantity() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen7b-tp2-autoscale.yaml")
    assert md.spec.autoscaling is not None
    md.spec.autoscaling.metric = "kvCacheUsage"
    md.spec.autoscaling.target = 0.8
    (hpa,) = by_kind(r.render(md), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "800m"


def test_no_hpa_without_autoscaling_or_when_the_metric_is_missing() -> None:
    assert not by_kind(r.render(load(REPO / "manifests" / "examples" / "tiny.yaml")), "HorizontalPodAutoscaler")
    md = load(REPO / "manifests" / "examples" / "qwen7b-tp2-autoscale.yaml")
    opts = r.RenderOptions(autoscaling_metric_available=False)
    assert not by_kind(r.render(md, options=opts), "HorizontalPodAutoscaler")


def test_pod_monitor_only_when_monitoring_crds_exist() -> None:
    md = load(REPO / "manifests" / "examples" / "tiny.yaml")
    assert not by_kind(r.render(md), "PodMonitor")
    assert by_kind(r.render(md, options=r.RenderOptions(monitoring=True)), "PodMonitor")


def test_network_policy_admits_only_gateway_to_serve_and_operator_to_dashboard() -> None:
    md = load(REPO / "manifests" / "examples" / "tiny.yaml")
    (np,) = by_kind(r.render(md), "NetworkPolicy")
    rules = {tuple(p["port"] for p in rule.get("ports", [])): rule["from"] for rule in np["spec"]["ingress"]}
    assert rules[(r.SERVE_PORT,)][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert rules[(r.DASHBOARD_PORT,)][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    # Every rule with a port names one port; the port-less rule admits only this Ray cluster's pods.
    assert rules[()] == [{"podSelector": {"matchLabels": {r.MD_LABEL: "tiny"}}}]


def test_route_config_map_lists_adapters_and_parses_as_gateway_config() -> None:
    md = load(REPO / "manifests" / "examples" / "qwen-lora.yaml")
    (cm,) = by_kind(r.render(md), "ConfigMap")
    assert cm["metadata"]["labels"][r.ROUTE_LABEL] == "true"
    route = json.loads(cm["data"][r.ROUTE_KEY])
    assert route["models"] == ["qwen-1.8b", "sql-assistant", "support-tone", "legal-summary", "de-translate"]
    assert route["backend"] == "http://qwen-lora-serve.llm.svc:8000"
    GatewayConfig.model_validate({"routes": [route]})


def test_route_carries_auth_cidrs_and_limits() -> None:
    md = load(REPO / "manifests" / "examples" / "locked-down.yaml")
    (cm,) = by_kind(r.render(md), "ConfigMap")
    route = json.loads(cm["data"][r.ROUTE_KEY])
    assert route["allowedCIDRs"] == ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"]
    assert route["auth"]["apiKeys"] is False
    assert route["auth"]["jwt"]["jwksUrl"] == "https://login.example.com/.well-known/jwks.json"
    assert route["rateLimits"]["tokensPerMinute"] == 20000


def test_jwt_secret_refs_are_rejected_with_the_field_path() -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "locked-down.yaml").read_text())
    jwt = doc["spec"]["gateway"]["auth"]["jwt"]
    del jwt["jwksUrl"]
    jwt["hmacSecretRef"] = {"name": "jwt-key"}
    jwt["algorithms"] = ["HS256"]
    with pytest.raises(r.RenderError) as err:
        r.render(validate_document(doc))
    assert err.value.problems[0][0] == "spec.gateway.auth.jwt"


def test_render_cli_names_the_field_of_an_invalid_spec(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "manifests" / "examples" / "tiny.yaml").read_text())
    bad = copy.deepcopy(doc)
    bad["spec"]["replicas"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(render_cmd, ["-f", str(path)])
    assert result.exit_code == 1
    assert "spec.replicas" in result.output


def test_render_cli_prints_the_serve_config() -> None:
    example = REPO / "manifests" / "examples" / "qwen7b-awq.yaml"
    result = CliRunner().invoke(render_cmd, ["-f", str(example), "--serve-config", "-o", "json"])
    assert result.exit_code == 0, result.output
    app = json.loads(result.output)["applications"][0]
    assert app["args"]["llm_config"]["model_loading_config"]["model_id"] == "qwen2.5-7b-instruct"


def test_cpu_count_rounds_quantities_up() -> None:
    assert [r.cpu_count(q) for q in (None, "500m", "2", "2.5", "1500m")] == [1, 1, 2, 3, 2]


def test_deletion_cost_makes_idle_worker_pods_go_first() -> None:
    pods = [
        {"metadata": {"name": "serving"}, "status": {"podIP": "10.0.0.1"}},
        {"metadata": {"name": "starting"}, "status": {"podIP": "10.0.0.2"}},
        {
            "metadata": {"name": "idle", "annotations": {r.DELETION_COST_ANNOTATION: "1000"}},
            "status": {"podIP": "10.0.0.3"},
        },
        {"metadata": {"name": "unchanged", "annotations": {r.DELETION_COST_ANNOTATION: "0"}}, "status": {}},
    ]
    replicas = [{"node_ip": "10.0.0.1", "state": "RUNNING"}, {"node_ip": "10.0.0.2", "state": "STARTING"}]
    assert r.deletion_costs(pods, replicas) == {"serving": "1000", "starting": "100", "idle": "0"}

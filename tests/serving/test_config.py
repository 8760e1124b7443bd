"""The pure mapping from a ModelDeployment spec to the Ray Serve config (no Ray, no vLLM needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rayleigh_api import ModelDeployment
from rayleigh_serving.config import (
    HF_CACHE_DIR,
    IMPORT_PATH,
    PVC_MOUNT_ROOT,
    ServeConfigError,
    build_serve_config,
    engine_kwargs_for,
    parse_extra_args,
)

LOCAL = Path("/work/here")


def md(**spec: Any) -> ModelDeployment:
    base: dict[str, Any] = {"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct"}}
    for key, value in spec.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ns"}, "spec": base})


def llm(cfg: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = cfg["applications"][0]["args"]["llm_config"]
    return result


def kwargs(**spec: Any) -> dict[str, Any]:
    return engine_kwargs_for(md(**spec))


def test_application_points_at_rayleigh_builder_with_name_and_route() -> None:
    cfg = build_serve_config(md(), route_prefix="/m", app_name="ns-m")
    app = cfg["applications"][0]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("ns-m", "/m", IMPORT_PATH)


def test_app_name_defaults_to_metadata_name() -> None:
    assert build_serve_config(md())["applications"][0]["name"] == "m"


def test_config_is_json_serialisable_for_the_dashboard_rest_api() -> None:
    cfg = build_serve_config(md(adapters=[{"name": "a", "source": "pvc://loras/a"}]))
    assert json.loads(json.dumps(cfg)) == cfg


def test_served_model_name_defaults_to_metadata_name() -> None:
    assert llm(build_serve_config(md()))["model_loading_config"]["model_id"] == "m"


def test_served_model_name_becomes_model_id() -> None:
    cfg = build_serve_config(md(model={"servedModelName": "qwen-7b"}))
    assert llm(cfg)["model_loading_config"]["model_id"] == "qwen-7b"


def test_hf_source_becomes_repo_id_downloaded_into_cluster_cache() -> None:
    cfg = build_serve_config(md())
    assert llm(cfg)["model_loading_config"]["model_source"] == "Qwen/Qwen2.5-7B-Instruct"
    assert llm(cfg)["engine_kwargs"]["download_dir"] == HF_CACHE_DIR


def test_hf_source_in_local_mode_uses_the_users_cache() -> None:
    cfg = build_serve_config(md(), local_base=LOCAL)
    assert "download_dir" not in llm(cfg)["engine_kwargs"]


def test_hf_hub_offline_reaches_the_replicas_env() -> None:
    cfg = build_serve_config(md(), hf_hub_offline=True)
    assert llm(cfg)["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_token_is_never_part_of_the_serve_config() -> None:
    spec = md(model={"tokenSecretRef": {"name": "hf-token"}})
    assert "hf-token" not in json.dumps(build_serve_config(spec))


def test_relative_file_source_resolves_against_local_base() -> None:
    cfg = build_serve_config(md(model={"source": "file://.cache/models/tiny"}), local_base=LOCAL)
    assert llm(cfg)["model_loading_config"]["model_source"] == "/work/here/.cache/models/tiny"


def test_relative_file_source_outside_local_mode_is_an_error() -> None:
    with pytest.raises(ServeConfigError, match=r"spec\.model\.source"):
        build_serve_config(md(model={"source": "file://models/tiny"}))


def test_absolute_file_source_is_used_as_is() -> None:
    cfg = build_serve_config(md(model={"source": "file:///models/tiny"}))
    assert llm(cfg)["model_loading_config"]["model_source"] == "/models/tiny"


def test_pvc_source_becomes_mount_path() -> None:
    cfg = build_serve_config(md(model={"source": "pvc://weights/qwen/7b"}))
    assert llm(cfg)["model_loading_config"]["model_source"] == f"{PVC_MOUNT_ROOT}/weights/qwen/7b"


def test_s3_source_is_passed_to_ray_as_a_mirror_uri() -> None:
    cfg = build_serve_config(md(model={"source": "s3://bucket/qwen"}))
    assert llm(cfg)["model_loading_config"]["model_source"] == "s3://bucket/qwen"


@pytest.mark.parametrize(
    ("spec", "key", "value"),
    [
        ({"model": {"quantization": "awq", "dtype": "float16"}}, "quantization", "awq"),
        ({"model": {"dtype": "bfloat16"}}, "dtype", "bfloat16"),
        ({"model": {"maxModelLen": 8192}}, "max_model_len", 8192),
        ({"model": {"revision": "abc123"}}, "revision", "abc123"),
        ({"model": {"chatTemplate": "{{ messages }}"}}, "chat_template", "{{ messages }}"),
        ({"engine": {"kvCacheDtype": "fp8"}}, "kv_cache_dtype", "fp8"),
        ({"engine": {"enablePrefixCaching": False}}, "enable_prefix_caching", False),
        ({"engine": {"tensorParallelSize": 2}, "resources": {"gpus": 2}}, "tensor_parallel_size", 2),
        ({"engine": {"pipelineParallelSize": 2}, "resources": {"gpus": 2}}, "pipeline_parallel_size", 2),
        ({"engine": {"gpuMemoryUtilization": 0.8}}, "gpu_memory_utilization", 0.8),
        ({"engine": {"maxNumSeqs": 64}}, "max_num_seqs", 64),
        ({"engine": {"maxNumBatchedTokens": 4096}}, "max_num_batched_tokens", 4096),
        ({"engine": {"extraArgs": ["--max-logprobs=8"]}}, "max_logprobs", 8),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_spec_field_reaches_engine_kwargs(spec: dict[str, Any], key: str, value: Any) -> None:
    assert kwargs(**spec)[key] == value


def test_quantization_none_is_not_passed_to_vllm() -> None:
    assert "quantization" not in kwargs()


def test_rope_scaling_becomes_hf_override() -> None:
    kw = kwargs(
        model={
            "maxModelLen": 131072,
            "ropeScaling": {"type": "yarn", "factor": 4.0, "originalMaxPositionEmbeddings": 32768},
        }
    )
    assert kw["hf_overrides"] == {
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
        # vLLM reads YaRN's max_position_embeddings as the scaled length (131072 = 4 x 32768).
        "max_position_embeddings": 131072,
    }


def test_linear_rope_scaling_leaves_max_position_embeddings_to_vllm() -> None:
    kw = kwargs(model={"ropeScaling": {"type": "linear", "factor": 2.0}})
    assert kw["hf_overrides"] == {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}


def test_cpu_replicas_get_cpu_accelerator_and_eager_mode() -> None:
    cfg = llm(build_serve_config(md(resources={"gpus": 0})))
    assert cfg["accelerator_config"] == {"kind": "cpu"}
    assert cfg["engine_kwargs"]["enforce_eager"] is True
    assert cfg["runtime_env"]["env_vars"]["VLLM_TARGET_DEVICE"] == "cpu"


def test_gpu_replicas_leave_accelerator_to_ray_default() -> None:
    cfg = llm(build_serve_config(md()))
    assert "accelerator_config" not in cfg
    assert "enforce_eager" not in cfg["engine_kwargs"]


def test_adapters_turn_lora_on_and_their_paths_reach_the_user_config() -> None:
    mdl = md(adapters=[{"name": "sql", "source": "pvc://loras/sql"}, {"name": "tone", "source": "pvc://loras/t"}])
    app = build_serve_config(mdl)["applications"][0]
    kw = app["args"]["llm_config"]["engine_kwargs"]
    assert kw["enable_lora"] is True and "lora_modules" not in kw
    adapters = app["deployments"][0]["user_config"]["adapters"]
    assert [(a["name"], a["location"]) for a in adapters] == [
        ("sql", f"{PVC_MOUNT_ROOT}/loras/sql"),
        ("tone", f"{PVC_MOUNT_ROOT}/loras/t"),
    ]


def test_adapter_from_an_unknown_scheme_is_rejected_by_the_api_with_its_field() -> None:
    """The schema says which sources an adapter may have before anything is deployed."""
    with pytest.raises(ValidationError, match=r"adapters\.0\.source"):
        kwargs(adapters=[{"name": "a", "source": "gs://bucket/a"}])


def test_replicas_and_max_ongoing_requests_reach_deployment_config() -> None:
    config = build_serve_config(md(replicas=3, serving={"maxOngoingRequests": 32}))
    assert llm(config)["deployment_config"]["max_ongoing_requests"] == 32
    (dep,) = config["applications"][0]["deployments"]
    assert (dep["num_replicas"], dep["autoscaling_config"]) == (3, None)


def test_the_replica_count_is_outside_the_args_so_a_scale_restarts_no_replica() -> None:
    """Serve hashes `args` into the application's code version: a new one replaces every replica."""
    one, three = (build_serve_config(md(replicas=n))["applications"][0] for n in (1, 3))
    assert one["args"] == three["args"]
    assert "num_replicas" not in one["args"]["llm_config"]["deployment_config"]


def test_stream_batching_interval_reaches_experimental_configs() -> None:
    cfg = llm(build_serve_config(md(serving={"streamBatchingIntervalMs": 5})))
    assert cfg["experimental_configs"] == {"stream_batching_interval_ms": 5}


def test_health_check_tolerates_a_busy_replica() -> None:
    dep = llm(build_serve_config(md()))["deployment_config"]
    assert dep["health_check_timeout_s"] * 3 >= 60


def test_unknown_extra_arg_is_a_clear_error_naming_the_field() -> None:
    with pytest.raises(ServeConfigError, match=r"spec\.engine\.extraArgs\[0\].*--no-such-flag"):
        kwargs(engine={"extraArgs": ["--no-such-flag=1"]})


def test_extra_arg_duplicating_a_spec_field_is_rejected() -> None:
    with pytest.raises(ServeConfigError, match="enable-prefix-caching"):
        kwargs(engine={"extraArgs": ["--enable-prefix-caching"]})


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("--max-logprobs=4", {"max_logprobs": 4}),
        ("--enforce-eager", {"enforce_eager": True}),
        ("--no-enforce-eager", {"enforce_eager": False}),
        ("--block-size=16", {"block_size": 16}),
        ("--tool-call-parser=hermes", {"tool_call_parser": "hermes"}),
        ('--override-generation-config={"temperature": 0.5}', {"override_generation_config": {"temperature": 0.5}}),
    ],
)
def test_extra_args_parse_to_typed_engine_kwargs(arg: str, expected: dict[str, Any]) -> None:
    assert parse_extra_args([arg]) == (expected, [])


def test_bad_route_prefix_is_rejected() -> None:
    with pytest.raises(ServeConfigError, match="route_prefix"):
        build_serve_config(md(), route_prefix="m")


def test_config_module_imports_neither_ray_nor_vllm() -> None:
    code = (
        "import sys, rayleigh_serving.config as c; "
        "bad=[m for m in ('ray','vllm','torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zero_replicas_is_a_serve_autoscaling_range_that_starts_at_zero() -> None:
    """Serve refuses num_replicas 0: scale to zero stops the replica through autoscaling 0..1 from 0."""
    auto = {"minReplicas": 0, "maxReplicas": 2, "idleSeconds": 60}
    (dep,) = build_serve_config(md(replicas=0, autoscaling=auto))["applications"][0]["deployments"]
    assert dep["num_replicas"] is None
    assert dep["autoscaling_config"] == {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1}


def test_routing_is_serves_request_router_only_under_the_proxy_ingress() -> None:
    spec = md(routing={"strategy": "least-loaded", "balanceFactor": 2.0})
    router = llm(build_serve_config(spec, ingress="proxy"))["deployment_config"]["request_router_config"]
    assert router["request_router_class"] == "rayleigh_serving.router.RayleighRouter"
    assert router["request_router_kwargs"] == {"strategy": "least-loaded", "balance_factor": 2.0}
    # Ray refuses a custom router on an HAProxy ingress deployment; HAProxy's balance carries it there.
    assert "request_router_config" not in llm(build_serve_config(spec, ingress="haproxy"))["deployment_config"]

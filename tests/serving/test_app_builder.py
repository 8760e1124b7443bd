"""The Serve application builder: Ray Serve LLM's deployment options without importing vLLM.

Serve runs the builder in a fresh worker before any replica starts; what it imports is paid on
every start. These tests hold the builder to the options Ray Serve LLM's own builder computes, for
every shape of config Rayleigh writes, and to importing neither vLLM nor torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray")

from rayleigh_api import ModelDeployment
from rayleigh_serving.app import REPLICA_IMPORT_PATH, build_app, deployment_options
from rayleigh_serving.config import build_serve_config


def llm_config(hf_hub_offline: bool | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, **spec}
    md = ModelDeployment.model_validate({"metadata": {"name": "m", "namespace": "ns"}, "spec": base})
    cfg = build_serve_config(md, hf_hub_offline=hf_hub_offline)
    result: dict[str, Any] = cfg["applications"][0]["args"]["llm_config"]
    return result


SHAPES = {
    "cpu": {"resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"}},
    "cpu-tp2": {"resources": {"gpus": 0, "cpu": "4", "memory": "8Gi"}, "engine": {"tensorParallelSize": 2}},
    "gpu": {"resources": {"gpus": 1}},
    "gpu-tp2-pp2": {"resources": {"gpus": 4}, "engine": {"tensorParallelSize": 2, "pipelineParallelSize": 2}},
    "replicas-and-queue": {"resources": {"gpus": 1}, "replicas": 3, "serving": {"maxOngoingRequests": 64}},
    "stream-batching": {"resources": {"gpus": 0}, "serving": {"streamBatchingIntervalMs": 20}},
}


def _deployment(app: Any) -> Any:
    return app._bound_deployment


def _options(app: Any) -> dict[str, Any]:
    d = _deployment(app)
    rc = d._replica_config
    return {
        "name": d.name,
        "bundles": rc.placement_group_bundles,
        "strategy": rc.placement_group_strategy,
        "actor_options": rc.ray_actor_options,
        "deployment_config": d._deployment_config.model_dump(),
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_builder_options_equal_ray_serve_llm_builder_options(shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.serve.llm import LLMConfig

    from rayleigh_serving.replica import RayleighServer

    cfg = llm_config(hf_hub_offline=True, **SHAPES[shape])
    # Inside Serve's build task the builder's runtime env is the application's; stand it in here
    # (both builders read it the same way) instead of starting a Ray cluster for a pure computation.
    app_env = {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(
        ray, "get_runtime_context", lambda: SimpleNamespace(runtime_env=json.loads(json.dumps(app_env)))
    )

    ours = build_app({"llm_config": json.loads(json.dumps(cfg))})
    ray_cfg = LLMConfig.model_validate(json.loads(json.dumps(cfg)))
    theirs = build_llm_deployment(ray_cfg, deployment_cls=RayleighServer, override_serve_options={"name": "LLMServer"})

    assert _deployment(ours).func_or_class == REPLICA_IMPORT_PATH
    assert _options(ours) == _options(theirs)


def test_replica_import_path_loads_the_ingress_server_class_as_serve_does() -> None:
    from ray.serve._private.http_util import ASGIAppReplicaWrapper
    from ray.serve._private.replica import _load_deployment_def_from_import_path

    from rayleigh_serving.replica import RayleighLLMServer

    cls = _load_deployment_def_from_import_path(REPLICA_IMPORT_PATH)
    assert issubclass(cls, RayleighLLMServer) and issubclass(cls, ASGIAppReplicaWrapper)


def test_builder_imports_neither_vllm_nor_torch() -> None:
    cfg = llm_config(resources={"gpus": 0, "cpu": "2", "memory": "4Gi"})
    code = (
        "import json, sys\n"
        "from rayleigh_serving.app import build_app\n"
        f"build_app({{'llm_config': json.loads({json.dumps(json.dumps(cfg))})}})\n"
        "print(json.dumps(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_config_of_another_shape_goes_through_ray_serve_llm_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(runtime_env={}))
    cfg = llm_config(resources={"gpus": 1})
    cfg["placement_group_config"] = {"bundles": [{"GPU": 1, "CPU": 4}]}
    assert deployment_options(cfg) is None
    app = build_app({"llm_config": cfg})
    assert _deployment(app).func_or_class != REPLICA_IMPORT_PATH
    assert _deployment(app)._replica_config.placement_group_bundles == [{"GPU": 1, "CPU": 5}]

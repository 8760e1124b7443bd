"""The Serve application builder (`import_path: rayleigh_serving.app:build_app`).

Serve runs the builder of every application in a fresh Ray worker (a task with `max_calls=1`)
before it starts any replica, so whatever the builder imports is paid on every start, in series
with the replica's own imports. Ray Serve LLM's builder (`build_llm_deployment`) imports vLLM,
torch and transformers only to work out a deployment's options: about 10 CPU-seconds that a 2-core
machine pays before the replica is even scheduled (docs/benchmarks/local_start.md).

For the configs Rayleigh writes (`rayleigh_serving.config`: CPU or GPU, tensor and pipeline
parallel, no placement-group or data-parallel overrides), `deployment_options` computes the same
options as Ray Serve LLM's `LLMServer.get_deployment_options` and builder defaults (a test checks
them against Ray's for each shape), and the deployment names the replica class by import path
(`rayleigh_serving.replica.RayleighServer`), so this module imports neither vLLM nor torch. Any
other LLMConfig goes through Ray Serve LLM's own builder.
"""

from __future__ import annotations

from typing import Any

from rayleigh_serving.config import DEPLOYMENT_NAME

# The replica class, loaded by the replica's worker (replica.py imports vLLM); Serve's form of an
# import path for a deployment class is dotted (module.attribute), not module:attribute.
REPLICA_IMPORT_PATH = "rayleigh_serving.replica.RayleighServer"
# LLMConfig fields `rayleigh_serving.config.build_llm_config` writes; anything else: Ray's builder.
_LIGHT_FIELDS = frozenset(
    {
        "model_loading_config",
        "engine_kwargs",
        "log_engine_metrics",
        "deployment_config",
        "experimental_configs",
        "accelerator_config",
        "runtime_env",
    }
)
_LIGHT_DEPLOYMENT_FIELDS = frozenset(
    {
        "name",
        "num_replicas",
        "health_check_period_s",
        "health_check_timeout_s",
        "graceful_shutdown_timeout_s",
        "max_ongoing_requests",
    }
)
# Engine arguments that change Ray Serve LLM's deployment shape (data parallel, KV-aware routing).
_SHAPE_ENGINE_ARGS = ("data_parallel_size", "kv_events_config")


def deployment_options(llm_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Serve LLM's deployment options for an LLMConfig dict Rayleigh wrote, without vLLM.

    The same as `LLMServer.get_deployment_options` followed by `build_llm_deployment`'s defaults
    and name: the placement group is one bundle per device (tensor x pipeline parallel) of the
    accelerator, the replica actor's `{"CPU": 1, "GPU": 0}` added to the first, PACK; the runtime
    env is the builder's own plus Ray Serve LLM's worker setup hook plus the config's. None when
    the config is of a shape Ray decides otherwise (placement-group or accelerator overrides, TPU,
    data parallel, KV-aware routing, actor options).
    """
    import ray
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.constants import (
        DEFAULT_HEALTH_CHECK_PERIOD_S,
        DEFAULT_HEALTH_CHECK_TIMEOUT_S,
        DEFAULT_MAX_ONGOING_REQUESTS,
        DEFAULT_MAX_TARGET_ONGOING_REQUESTS,
        ENABLE_WORKER_PROCESS_SETUP_HOOK,
    )

    if not set(llm_config) <= _LIGHT_FIELDS:
        return None
    deployment_config = dict(llm_config.get("deployment_config") or {})
    if not set(deployment_config) <= _LIGHT_DEPLOYMENT_FIELDS:
        return None
    accelerator = llm_config.get("accelerator_config") or {"kind": "gpu"}
    if set(accelerator) != {"kind"} or accelerator["kind"] not in ("cpu", "gpu"):
        return None
    engine_kwargs = llm_config.get("engine_kwargs") or {}
    if any(engine_kwargs.get(k) not in (None, 1) for k in _SHAPE_ENGINE_ARGS):
        return None
    devices = int(engine_kwargs.get("tensor_parallel_size", 1)) * int(engine_kwargs.get("pipeline_parallel_size", 1))
    device_bundle = {"CPU": 1} if accelerator["kind"] == "cpu" else {"GPU": 1}
    replica_bundle = {"CPU": 1, "GPU": 0}
    first = {
        k: device_bundle.get(k, 0) + replica_bundle.get(k, 0) for k in device_bundle.keys() | replica_bundle.keys()
    }
    # Inside Serve's build task Ray is up; elsewhere (tests, a script) asking would start a Ray.
    runtime_env = dict(ray.get_runtime_context().runtime_env) if ray.is_initialized() else {}
    if ENABLE_WORKER_PROCESS_SETUP_HOOK:
        runtime_env["worker_process_setup_hook"] = "ray.llm._internal.serve._worker_process_setup_hook"
    runtime_env.update(llm_config.get("runtime_env") or {})
    options = {
        **deployment_config,
        "placement_group_bundles": [first] + [dict(device_bundle) for _ in range(devices - 1)],
        "placement_group_strategy": "PACK",
        "ray_actor_options": {"runtime_env": runtime_env},
        "name": deployment_config.get("name", DEPLOYMENT_NAME),
    }
    defaults = {
        "max_ongoing_requests": DEFAULT_MAX_ONGOING_REQUESTS,
        "health_check_period_s": DEFAULT_HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": DEFAULT_HEALTH_CHECK_TIMEOUT_S,
        "autoscaling_config": {"target_ongoing_requests": DEFAULT_MAX_TARGET_ONGOING_REQUESTS},
    }
    merged: dict[str, Any] = maybe_apply_llm_deployment_config_defaults(defaults, options)
    return merged


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder: `args` is the application's `args` from the Serve config,
    `{"llm_config": {...}}` (see rayleigh_serving.config)."""
    if "llm_config" not in args:
        raise ValueError("rayleigh_serving.app:build_app needs args.llm_config (see rayleigh_serving.config)")
    llm_config = args["llm_config"]
    options = deployment_options(llm_config) if isinstance(llm_config, dict) else None
    if options is not None:
        from ray import serve

        # Serve loads a deployment given as an import path in the replica (ReplicaConfig takes a str).
        return serve.deployment(**options)(REPLICA_IMPORT_PATH).bind(llm_config=llm_config)  # type: ignore[arg-type]
    # Any other shape: Ray Serve LLM's own builder (imports vLLM here).
    from ray.llm._internal.serve.core.server.builder import build_llm_deployment
    from ray.serve.llm import LLMConfig

    from rayleigh_serving.replica import RayleighServer

    cfg = LLMConfig.model_validate(llm_config)
    return build_llm_deployment(
        cfg,
        deployment_cls=RayleighServer,
        override_serve_options={"name": cfg.deployment_config.get("name", DEPLOYMENT_NAME)},
    )

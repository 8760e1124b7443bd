"""The replica: Ray Serve LLM's `LLMServer` serving vLLM's own OpenAI app as the Serve ingress.

Stock `ray.serve.llm.build_openai_app` puts an `OpenAiIngress` deployment in front of the
`LLMServer` deployment: every request and every batch of streamed chunks crosses two Ray hops
(proxy -> ingress replica -> engine replica), and chunks are held back up to 50 ms to batch them.
Rayleigh makes the `LLMServer` replica itself the ASGI ingress (Ray's `__serve_build_asgi_app__`
late binding) running vLLM's own FastAPI application on the engine it started:

- one hop (proxy -> engine replica), no extra ingress replicas to schedule or keep idle;
- vLLM's OpenAI layer does everything OpenAI: chat templates, tokenization, tool-call parsing,
  sampling parameters, SSE, usage, `stream_options.include_usage`, OpenAI-style error JSON,
  `/health`, and cancellation (its handlers watch the client and abort the engine request);
- LoRA adapters come from the deployment's user_config and load/unload on the live replica
  (`reconfigure`, adapters.py), listed in `/v1/models` and selected by `model`;
- Rayleigh adds an ASGI middleware for its own request metrics (`rayleigh_serving_*`, middleware.py).

The Ray Serve LLM pieces it reuses: `LLMConfig`, the `LLMServer` lifecycle (engine start with
placement groups, CPU/GPU accelerator handling, health checks) and `VLLMEngine`.

This module imports vLLM and torch (about 11 CPU-seconds): only replicas import it. The Serve
application builder (app.py) names it by import path.
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve
from ray._common.usage.usage_lib import usage_stats_enabled
from ray.llm._internal.common.callbacks.base import CallbackBase, CallbackConfig
from ray.llm._internal.common.utils.cloud_utils import is_remote_path
from ray.llm._internal.serve.core.server.llm_server import LLMServer, _add_openai_models_retrieve_route
from ray.serve.llm import LLMConfig

from rayleigh_serving.adapters import AdapterManager
from rayleigh_serving.gauges import keep_gauges_exported
from rayleigh_serving.hf_overrides import merge_hf_overrides
from rayleigh_serving.middleware import MetricsMiddleware, RequestMetrics

# Streamed chunks are coalesced for this long after the first one (0 disables); chosen by
# measurement (docs/benchmarks/serving_overhead.md). spec.serving.streamBatchingIntervalMs overrides.
DEFAULT_STREAM_BATCHING_INTERVAL_MS = float(os.environ.get("RAYLEIGH_STREAM_BATCHING_INTERVAL_MS", "0"))


class LocalWeightsCallback(CallbackBase):  # type: ignore[misc]
    """Skips Ray Serve LLM's node initialisation when it has nothing to download.

    Before the engine starts, Ray Serve LLM runs one Ray task per node of the replica's placement
    group to download the weights. Only a cloud mirror (s3://, gs://, ...) is downloaded there; for a
    local or mounted path or a Hugging Face repo id (vLLM downloads it itself) the task only makes
    torch's kernel cache folder and returns the path it was given. That task needs a fresh Ray
    worker that imports vLLM first: 10-12 s of a 2-core machine's start for nothing
    (docs/benchmarks/local_start.md). The replica shares the node with its placement group's
    bundles, so making that folder here is what the task would have done.
    """

    async def on_before_node_init(self) -> None:
        engine_config = self.llm_config.get_engine_config()
        assert engine_config is not None
        if engine_config.mirror_config is not None or is_remote_path(engine_config.actual_hf_model_id):
            return
        import torch.hub

        os.makedirs(os.path.join(torch.hub._get_torch_home(), "kernels"), exist_ok=True)
        self.ctx.run_init_node = False


class RayleighLLMServer(LLMServer):  # type: ignore[misc]
    """Ray Serve LLM's LLMServer, serving vLLM's OpenAI app directly as the Serve ingress."""

    async def __init__(self, llm_config: LLMConfig | dict[str, Any]) -> None:  # type: ignore[misc]
        if isinstance(llm_config, dict):
            llm_config = LLMConfig.model_validate(llm_config)
        # Before the engine creates vLLM's gauges: idle gauges must stay exported (see gauges.py).
        keep_gauges_exported()
        merge_hf_overrides(llm_config.engine_kwargs)
        # The builder cached an engine config with the plain dicts: derive it again.
        llm_config._engine_config = None
        self._rayleigh_adapters: AdapterManager | None = None
        if llm_config.callback_config.callback_class is CallbackBase:
            llm_config.callback_config = CallbackConfig(
                callback_class=LocalWeightsCallback,
                callback_kwargs=llm_config.callback_config.callback_kwargs,
                raise_error_on_callback=llm_config.callback_config.raise_error_on_callback,
            )
            llm_config._callback_instance = None
        await super().__init__(llm_config)

    async def _start_engine(self) -> None:
        """Ray Serve LLM's engine start, without its usage-telemetry push where usage stats are off.

        Once the engine is up, Ray Serve LLM's LLMServer reports the model to a detached
        `TelemetryAgent` actor on the head node and waits for it (`push_telemetry_report_for_all_models`),
        even with RAY_USAGE_STATS_ENABLED=0, which `rayleigh up` and the operator's Ray pods set.
        The first replica of a Ray head thereby waits for a fresh Ray worker to start (4 s of the
        replica's start in a py-spy timeline; `rayleigh up`'s first answer 0.9-3.2 s sooner without
        it in alternating pairs, docs/benchmarks/local_start.md). With usage stats on, Ray's own path runs.
        """
        if usage_stats_enabled():
            await super()._start_engine()
            return
        if self.engine is None:
            raise ValueError("Engine is not set")
        await self.engine.start()

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Serve calls this after __init__ and on each user_config change: the adapter list (adapters.py)."""
        if self._rayleigh_adapters is None:
            # VLLMEngine's OpenAIServingModels: the registry vLLM's HTTP handlers resolve `model` in.
            models = getattr(self.engine, "_oai_models", None)
            if models is None:
                raise RuntimeError("the vLLM engine has no OpenAI model registry (engine not started?)")
            self._rayleigh_adapters = AdapterManager(models, self._llm_config.model_id)
        await self._rayleigh_adapters.apply(user_config)

    async def __serve_build_asgi_app__(self) -> Any:
        assert self.engine is not None, "the engine starts in __init__"
        app = await self.engine.build_asgi_app()
        _add_openai_models_retrieve_route(app, self._llm_config)
        metrics = RequestMetrics(self._llm_config.model_id)
        interval_ms = self._llm_config.experimental_configs.get("stream_batching_interval_ms")
        engine_client = getattr(self.engine, "_engine_client", None)

        @app.get("/rayleigh/stats")
        async def _stats() -> dict[str, Any]:
            """This replica's live counts: HTTP requests in flight and requests alive in the engine."""
            engine_requests = None
            if engine_client is not None and hasattr(engine_client, "output_processor"):
                engine_requests = engine_client.output_processor.get_num_unfinished_requests()
            return {
                "model": self._llm_config.model_id,
                "http_requests_in_flight": sum(metrics._in_flight.values()),
                "engine_requests": engine_requests,
            }

        @app.get("/rayleigh/adapters")
        async def _adapters() -> dict[str, Any]:
            """The LoRA adapters this replica serves, and those that failed to load (and why)."""
            manager = self._rayleigh_adapters
            return manager.describe() if manager else {"model": self._llm_config.model_id, "loaded": [], "failed": {}}

        # vLLM's build_app builds its middleware stack eagerly: reset it so ours is included.
        app.middleware_stack = None
        app.add_middleware(
            MetricsMiddleware,
            metrics=metrics,
            stream_interval_s=(DEFAULT_STREAM_BATCHING_INTERVAL_MS if interval_ms is None else interval_ms) / 1000,
        )
        return app


# The Serve deployment class (`rayleigh_serving.replica:RayleighServer`): the server as ASGI ingress.
RayleighServer = serve.ingress()(RayleighLLMServer)

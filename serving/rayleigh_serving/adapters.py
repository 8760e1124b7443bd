"""Hot LoRA adapters on a live replica: `reconfigure(user_config)` loads and unloads them.

Ray Serve calls the replica's `reconfigure()` once after the constructor (before the replica gets
traffic) and again whenever the deployment's `user_config` changes, on the running replica,
without restarting it (ray/serve/_private/version.py: user_config is a reconfigure-only field).
The adapter list is that user_config (adapter_sources.adapters_user_config), so:

- an adapter new to the list is fetched (hf:// / s3:// downloads run in a thread: requests keep
  flowing) and registered with vLLM's own model registry (`OpenAIServingModels.load_lora_adapter`,
  which also preloads it into the engine), after which `model: <name>` reaches it and `/v1/models`
  lists it;
- an adapter that left the list is unregistered (`unload_lora_adapter`): new requests for it get
  vLLM's OpenAI-style 404 (`NotFoundError`), requests already running finish with it;
- an adapter whose entry changed (source, revision, credentials) is loaded again in place.

vLLM's HTTP routes for this (`/v1/load_lora_adapter`, gated by VLLM_ALLOW_RUNTIME_LORA_UPDATING)
stay off: clients must not be able to load weights onto the replicas; only the spec does.

An adapter that fails to fetch or load does not fail the replica (a typo in one adapter must not
take the model down): it is logged, counted in the `rayleigh_serving_adapters{state="failed"}`
gauge, listed by `GET /rayleigh/adapters`, answered 404 like any unknown model, and tried again at
the next change of the list.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rayleigh_serving.adapter_fetch import fetch_adapter
from rayleigh_serving.adapter_sources import AdapterSpec

log = logging.getLogger("ray.serve")


class AdapterManager:
    """The adapters registered with one replica's vLLM frontend, kept equal to the user_config."""

    def __init__(self, serving_models: Any, model: str) -> None:
        self.models = serving_models  # vllm OpenAIServingModels (shared with the HTTP handlers)
        self.model = model
        self.loaded: dict[str, AdapterSpec] = {}
        self.failed: dict[str, str] = {}  # name -> why
        self._lock = asyncio.Lock()
        from ray.util import metrics

        self._gauge = metrics.Gauge(
            "rayleigh_serving_adapters",
            description="LoRA adapters on this replica by state: loaded (served), failed (listed in the spec "
            "but not fetched or loaded; see GET /rayleigh/adapters).",
            tag_keys=("model", "state"),
        )
        self._export()

    def _export(self) -> None:
        self._gauge.set(len(self.loaded), tags={"model": self.model, "state": "loaded"})
        self._gauge.set(len(self.failed), tags={"model": self.model, "state": "failed"})

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "loaded": sorted(self.loaded),
            "failed": dict(sorted(self.failed.items())),
        }

    async def apply(self, user_config: dict[str, Any] | None) -> None:
        """Make the registered adapters equal to `user_config["adapters"]`."""
        wanted = [AdapterSpec.from_json(a) for a in (user_config or {}).get("adapters", [])]
        async with self._lock:
            names = {a.name for a in wanted}
            for name in [n for n in self.loaded if n not in names]:
                await self._unload(name)
            for name in [n for n in self.failed if n not in names]:
                del self.failed[name]
            for spec in wanted:
                if self.loaded.get(spec.name) == spec:
                    continue
                await self._load(spec, base_model=(user_config or {}).get("base_model"))
            self._export()

    async def _unload(self, name: str) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import UnloadLoRAAdapterRequest

        result = await self.models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name, lora_int_id=None))
        if isinstance(result, ErrorResponse) and name in self.models.lora_requests:
            log.warning("adapter %r: unloading failed: %s", name, result.error.message)
            return
        del self.loaded[name]
        log.info("adapter %r unloaded", name)

    async def _load(self, spec: AdapterSpec, *, base_model: str | None) -> None:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        try:
            path = await asyncio.to_thread(fetch_adapter, spec)
        except Exception as e:  # any fetch failure is this adapter's, reported as such
            self._fail(spec.name, str(e))
            return
        request = LoadLoRAAdapterRequest(
            lora_name=spec.name, lora_path=str(path), load_inplace=spec.name in self.models.lora_requests
        )
        result = await self.models.load_lora_adapter(request, base_model_name=base_model)
        if isinstance(result, ErrorResponse):
            self._fail(spec.name, f"vLLM refused it: {result.error.message}")
            return
        self.loaded[spec.name] = spec
        self.failed.pop(spec.name, None)
        log.info("adapter %r loaded from %s", spec.name, path)

    def _fail(self, name: str, why: str) -> None:
        self.failed[name] = why
        log.error("adapter %r not loaded: %s", name, why)

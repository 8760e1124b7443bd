"""Hugging Face config overrides that merge into the model's own config instead of replacing it.

vLLM applies a dict-valued `hf_overrides` entry by replacing the whole attribute: the
`{"rope_parameters": {"rope_type": "yarn", ...}}` that `spec.model.ropeScaling` renders to would
drop the checkpoint's own `rope_theta` (10000 for the tiny model, 500000 for Llama 3), and vLLM's
Qwen2 then falls back to a default base of 1000000: positions silently encoded with the wrong
frequencies. vLLM also accepts a callable, applied to the loaded config before it standardizes the
RoPE parameters; the replica turns the rendered dict into `MergeHfOverrides` (picklable, so it
reaches vLLM's engine-core process) so that the spec's keys are merged into the model's own.

The Serve config keeps the plain dict (it is JSON and the operator renders it without vLLM);
`rayleigh_serving.replica` converts it when the replica starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MergeHfOverrides:
    """Set each key on the model's (text) config; dict values are merged into the existing dict."""

    overrides: dict[str, Any] = field(default_factory=dict)

    def __call__(self, config: Any) -> Any:
        # vLLM also calls this on an empty PretrainedConfig to learn the model type: be lenient.
        target = config.get_text_config() if hasattr(config, "get_text_config") else config
        for key, value in self.overrides.items():
            current = getattr(target, key, None)
            if isinstance(value, dict) and isinstance(current, dict) and current:
                if all(isinstance(v, dict) for v in current.values()):
                    # Per-layer-type parameters (e.g. {"full_attention": {...}, "sliding_attention": {...}}).
                    merged: dict[str, Any] = {k: {**v, **value} for k, v in current.items()}
                else:
                    merged = {**current, **value}
                setattr(target, key, merged)
            else:
                setattr(target, key, value)
        return config


def merge_hf_overrides(engine_kwargs: dict[str, Any]) -> None:
    """Replace a dict `hf_overrides` in `engine_kwargs` by its merging callable (in place)."""
    overrides = engine_kwargs.get("hf_overrides")
    if isinstance(overrides, dict) and overrides:
        engine_kwargs["hf_overrides"] = MergeHfOverrides(dict(overrides))

"""spec.model.ropeScaling through vLLM's own config loading (no engine start): the context the engine
derives, and the model's RoPE base kept. The engine itself runs it in test_engine_fields.py."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from rayleigh_api import ModelDeployment
from rayleigh_serving.config import engine_kwargs_for
from rayleigh_serving.hf_overrides import MergeHfOverrides, merge_hf_overrides
from tests.serving.model_variants import short_context_copy

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def model_512(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return short_context_copy(tiny_model_dir, tmp_path_factory.mktemp("m512"), positions=512)


def engine_model_config(model_dir: Path, rope: dict[str, Any]) -> Any:
    """vLLM's ModelConfig for a spec with this ropeScaling, built the way the replica builds it."""
    from vllm.config import ModelConfig

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {"model": {"source": f"file://{model_dir}", "dtype": "float32", "ropeScaling": rope}},
        }
    )
    kw = engine_kwargs_for(md)
    merge_hf_overrides(kw)
    return ModelConfig(model=str(model_dir), dtype="float32", hf_overrides=kw["hf_overrides"])


@pytest.mark.parametrize(
    "rope",
    [
        {"type": "yarn", "factor": 2.0, "originalMaxPositionEmbeddings": 512},
        {"type": "linear", "factor": 2.0},
        {"type": "dynamic", "factor": 2.0},
    ],
    ids=lambda r: r["type"],
)
def test_rope_factor_extends_the_context_vllm_derives(model_512: Path, rope: dict[str, Any]) -> None:
    assert engine_model_config(model_512, rope).max_model_len == 1024


def test_rope_scaling_keeps_the_models_rope_theta(model_512: Path) -> None:
    """vLLM replaces a dict override whole; without the merge rope_theta (10000 here) is lost and
    Qwen2 falls back to 1000000."""
    mc = engine_model_config(model_512, {"type": "linear", "factor": 2.0})
    assert mc.hf_config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}


def test_merging_override_survives_pickling_to_the_engine_process() -> None:
    fn = MergeHfOverrides({"rope_parameters": {"rope_type": "linear", "factor": 2.0}})
    assert pickle.loads(pickle.dumps(fn)) == fn

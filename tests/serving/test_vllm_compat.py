"""The config module's knowledge of vLLM (kept as data so the operator needs no vLLM) matches vLLM."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from rayleigh_api import ModelDeployment
from rayleigh_serving.config import engine_kwargs_for, vllm_argument_names

pytest.importorskip("vllm")


def test_vllm_argument_names_match_the_installed_vllm() -> None:
    """On failure, regenerate with `python -m rayleigh_serving.vllm_args`."""
    from rayleigh_serving.vllm_args import current

    names = vllm_argument_names()
    now = current()
    assert (names["engine"], names["frontend"]) == (set(now["engine"]), set(now["frontend"]))


def test_every_engine_kwarg_of_a_full_spec_is_a_vllm_argument() -> None:
    spec: dict[str, Any] = {
        "model": {
            "source": "hf://Qwen/Qwen2.5-7B-Instruct",
            "revision": "main",
            "quantization": "fp8",
            "dtype": "bfloat16",
            "maxModelLen": 65536,
            "ropeScaling": {"type": "yarn", "factor": 2.0, "originalMaxPositionEmbeddings": 32768},
            "chatTemplate": "{{ messages }}",
        },
        "engine": {
            "tensorParallelSize": 2,
            "kvCacheDtype": "fp8",
            "maxNumSeqs": 8,
            "maxNumBatchedTokens": 4096,
            "extraArgs": ["--max-logprobs=5"],
        },
        "adapters": [{"name": "a", "source": "pvc://loras/a"}],
        "resources": {"gpus": 2},
    }
    kw = engine_kwargs_for(ModelDeployment.model_validate({"metadata": {"name": "m"}, "spec": spec}))
    names = vllm_argument_names()
    assert set(kw) - (names["engine"] | names["frontend"]) == set()


def test_vllm_accepts_the_enum_values_the_spec_allows() -> None:
    import typing

    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
    kv_allowed = set(typing.get_args(fields["kv_cache_dtype"].type))
    dtype_allowed = set(typing.get_args(fields["dtype"].type))
    assert {"auto", "fp8", "fp8_e4m3", "fp8_e5m2"} <= kv_allowed
    assert {"auto", "float16", "bfloat16", "float32"} <= dtype_allowed

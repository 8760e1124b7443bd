"""`rayleigh plan` against numbers computed by hand from the published Qwen2 configs.

Hand calculation for Qwen2-7B (config.json: vocab 152064, hidden 3584, intermediate 18944,
28 layers, 28 heads, 4 KV heads, head_dim 128, untied embeddings, q/k/v biases):
  per layer linear weights: q 3584*3584 + k 3584*512 + v 3584*512 + o 3584*3584 + mlp 3*3584*18944
                          = 12,845,056 + 1,835,008 + 1,835,008 + 12,845,056 + 203,685,888 = 233,046,016
  x 28 layers = 6,525,288,448 quantizable weights
  other: embeddings + lm_head 2*152064*3584 = 1,089,994,752; biases 28*(3584+512+512) = 129,024;
         norms 28*2*3584 + 3584 = 204,288  -> 1,090,328,064
  total 7,615,616,512 (the published 7.62 B)
  KV per token (16-bit): 2 (K,V) * 28 layers * 4 heads * 128 * 2 bytes = 57,344 bytes
On an 8 GiB GPU at gpuMemoryUtilization 0.9 the usable memory is 7.2 GiB = 7,730,941,132.8 bytes;
after 1 GiB runtime overhead 6,657,199,308.8 bytes remain for weights + KV cache:
  fp16 : 7,615,616,512 * 2                                  = 15,231,233,024 -> does not fit
  int8 : 6,525,288,448 * 1 + 1,090,328,064 * 2              =  8,705,944,576 -> does not fit
  int4 : 6,525,288,448 * (0.5 + 2.5/128) + 1,090,328,064 * 2 =  5,570,747,392 -> fits the weights,
         KV budget 1,086,451,916.8 bytes / 57,344 = 18,946 tokens (floor) < 32,768 = maxModelLen:
         fits only with maxModelLen <= 18,946 or an fp8 KV cache (37,892 tokens).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayleigh_api import ModelDeployment, planner
from rayleigh_api.cli import main

GIB = 1024**3
USABLE_8GIB = 8 * GIB * 0.9 - 1 * GIB
QWEN2_7B_QUANTIZABLE = 6_525_288_448
QWEN2_7B_OTHER = 1_090_328_064


def _md(source: str, **model: Any) -> ModelDeployment:
    return ModelDeployment.model_validate({"metadata": {"name": "m"}, "spec": {"model": {"source": source, **model}}})


@pytest.mark.parametrize(
    ("key", "params"),
    [("qwen2-0.5b", 494_032_768), ("qwen2-1.5b", 1_543_714_304), ("qwen2-7b", 7_615_616_512)],
)
def test_parameter_counts_match_the_published_qwen2_sizes(key: str, params: int) -> None:
    assert planner.KNOWN_MODELS[key].total_params() == params


def test_qwen2_7b_split_into_quantizable_and_16_bit_weights() -> None:
    arch = planner.KNOWN_MODELS["qwen2-7b"]
    assert arch.quantizable_params() == QWEN2_7B_QUANTIZABLE
    assert arch.other_params() == QWEN2_7B_OTHER


@pytest.mark.parametrize(
    ("key", "kv_bytes"),
    [
        ("qwen2-0.5b", 2 * 24 * 2 * 64 * 2),  # 12,288
        ("qwen2-1.5b", 2 * 28 * 2 * 128 * 2),  # 28,672
        ("qwen2-7b", 2 * 28 * 4 * 128 * 2),  # 57,344
    ],
)
def test_kv_bytes_per_token_match_hand_calculation(key: str, kv_bytes: int) -> None:
    assert planner.kv_bytes_per_token(planner.KNOWN_MODELS[key], "auto", "bfloat16") == kv_bytes


def test_fp8_kv_cache_halves_bytes_per_token() -> None:
    assert planner.kv_bytes_per_token(planner.KNOWN_MODELS["qwen2-7b"], "fp8", "bfloat16") == 28_672


def test_qwen2_7b_fp16_does_not_fit_8gib_and_suggests_int4() -> None:
    p = planner.plan(_md("hf://Qwen/Qwen2-7B-Instruct", dtype="float16"), 8 * GIB)
    assert p.weight_bytes_per_gpu == 7_615_616_512 * 2
    assert not p.fits
    assert p.max_tokens_in_cache == 0
    assert any("quantization: awq" in s for s in p.suggestions)


def test_qwen2_7b_int8_does_not_fit_8gib() -> None:
    p = planner.plan(_md("hf://Qwen/Qwen2-7B-Instruct", quantization="fp8"), 8 * GIB)
    assert p.weight_bytes_per_gpu == QWEN2_7B_QUANTIZABLE * 1 + QWEN2_7B_OTHER * 2 == 8_705_944_576
    assert not p.fits
    assert "exceed the usable 7.20 GiB" in p.reasons[0]


def test_qwen2_7b_int4_fits_weights_but_not_a_full_32k_sequence_on_8gib() -> None:
    p = planner.plan(_md("hf://Qwen/Qwen2-7B-Instruct-AWQ", quantization="awq"), 8 * GIB)
    weights = QWEN2_7B_QUANTIZABLE * (0.5 + 2.5 / 128) + QWEN2_7B_OTHER * 2
    assert p.weight_bytes_per_gpu == pytest.approx(weights) == pytest.approx(5_570_747_392)
    assert p.max_tokens_in_cache == int((USABLE_8GIB - weights) // 57_344) == 18_946
    assert not p.fits
    assert any("maxModelLen to at most 18946" in s for s in p.suggestions)
    assert any("kvCacheDtype: fp8" in s for s in p.suggestions)


def test_qwen2_7b_int4_with_short_context_fits_8gib() -> None:
    p = planner.plan(_md("hf://Qwen/Qwen2-7B-Instruct-AWQ", quantization="awq", maxModelLen=8192), 8 * GIB)
    assert p.fits
    assert p.max_full_length_sequences == 18_946 // 8192 == 2


def test_tensor_parallel_splits_weights_and_kv_heads() -> None:
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "m"},
            "spec": {
                "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct", "dtype": "bfloat16"},
                "engine": {"tensorParallelSize": 2},
                "resources": {"gpus": 2},
            },
        }
    )
    p = planner.plan(md, 24 * GIB)
    assert p.weight_bytes_per_gpu == 7_615_616_512 * 2 / 2
    assert p.kv_bytes_per_token_per_gpu == 57_344 / 2


def test_local_config_json_is_read_for_file_sources(tmp_path: Any) -> None:
    config = {
        "model_type": "qwen2", "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "tie_word_embeddings": True, "max_position_embeddings": 512,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch, origin = planner.architecture_for(_md(f"file://{tmp_path}"))
    assert origin.endswith("config.json")
    assert arch.num_kv_heads == 1 and arch.head_dim == 64
    assert planner.kv_bytes_per_token(arch, "auto", "float32") == 2 * 2 * 1 * 64 * 4


def test_unknown_remote_model_names_the_field_and_the_fix() -> None:
    with pytest.raises(planner.UnknownModelError, match=r"spec.model.source .*--config"):
        planner.architecture_for(_md("hf://someone/mystery-13b"))


@pytest.mark.parametrize(
    ("text", "size"), [("8GiB", 8 * GIB), ("24Gi", 24 * GIB), ("80G", 80 * GIB), ("512Mi", 512 << 20)]
)
def test_gpu_memory_sizes_parse(text: str, size: int) -> None:
    assert planner.parse_size(text) == size


def test_gpu_memory_size_error_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"expected e\.g\. 8GiB"):
        planner.parse_size("lots")


def test_rayleigh_plan_exits_2_and_explains_when_the_model_does_not_fit(tmp_path: Any) -> None:
    doc = {
        "apiVersion": "serving.rayleigh.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "q7"},
        "spec": {"model": {"source": "hf://Qwen/Qwen2-7B-Instruct", "dtype": "float16"}},
    }  # fmt: skip
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["plan", "-f", str(path), "--gpu-memory", "8GiB"])
    assert result.exit_code == 2, result.output
    assert "DOES NOT FIT" in result.output
    assert "quantization: awq" in result.output


def test_rayleigh_plan_reports_a_fit_for_the_awq_example() -> None:
    result = CliRunner().invoke(main, ["plan", "-f", "manifests/examples/qwen7b-awq.yaml", "--gpu-memory", "24GiB"])
    assert result.exit_code == 0, result.output
    assert "FITS" in result.output


def test_cold_start_estimate_is_the_fixed_start_plus_weights_over_the_load_bandwidth() -> None:
    from rayleigh_api import cold_start

    est = cold_start.estimate(10 * GIB, 2 * GIB)
    assert est.load_s == 5.0
    assert est.seconds == cold_start.WORKER_START_S + cold_start.REPLICA_START_S + 5.0
    with pytest.raises(ValueError, match="--load-bandwidth"):
        cold_start.estimate(GIB, 0)


def test_rayleigh_plan_states_the_expected_cold_start_for_the_model_size() -> None:
    """A tensor-parallel replica reads all its shards: the whole replica's weights count."""
    from rayleigh_api import cold_start

    argv = ["plan", "-f", "manifests/examples/qwen7b-tp2-autoscale.yaml", "--gpu-memory", "24GiB"]
    result = CliRunner().invoke(main, [*argv, "--load-bandwidth", "2GiB", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    weights = out["weightBytesPerGpu"] * 2
    assert out["coldStart"]["weightLoadSeconds"] == pytest.approx(weights / (2 * GIB), abs=0.1)
    fixed = cold_start.WORKER_START_S + cold_start.REPLICA_START_S
    assert out["coldStart"]["seconds"] == pytest.approx(fixed + weights / (2 * GIB), abs=0.1)
    text = CliRunner().invoke(main, [*argv, "--load-bandwidth", "2GiB"]).output
    assert f"cold start (estimate)  ~{out['coldStart']['seconds']:.0f} s" in text

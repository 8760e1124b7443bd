"""The tiny model maker and `rayleigh merge-lora` (torch/transformers/peft on the CPU, no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rayleigh_serving.cli import make_tiny_model, merge_lora
from rayleigh_serving.tiny_model import make_tiny_lora

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m") / "tiny"
    result = CliRunner().invoke(make_tiny_model, ["--out", str(out), "--seed", "7"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def lora(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lora(tiny, tmp_path_factory.mktemp("l") / "lora")


def test_tiny_model_is_a_small_qwen2(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_key_value_heads"]) == (128, 2, 1)
    assert (tiny / "model.safetensors").stat().st_size < 2_000_000


def test_tiny_model_is_deterministic_for_a_seed(tiny: Path, tmp_path: Path) -> None:
    CliRunner().invoke(make_tiny_model, ["--out", str(tmp_path / "again"), "--seed", "7"])
    for name in ("model.safetensors", "tokenizer.json"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny / name).read_bytes()


def test_tokenizer_has_chatml_specials_and_template(tiny: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert 400 <= len(tok) <= 600
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_merge_lora_output_equals_base_plus_adapter(tiny: Path, lora: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    result = CliRunner().invoke(merge_lora, ["--base", str(tiny), "--adapter", str(lora), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), lora)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny)(ids).logits
    assert torch.allclose(merged, with_adapter, atol=1e-4)
    assert not torch.allclose(merged, base, atol=1e-3)
    assert (out / "tokenizer.json").is_file()


def test_merge_lora_without_adapter_config_is_a_clear_error(tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        merge_lora, ["--base", str(tiny), "--adapter", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "adapter_config.json" in result.output

"""Parsing of durations and lists; workloads (synthetic prompts, datasets); the overhead benchmarks list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rayleigh_loadtest.overhead import bench_dir, benchmarks
from rayleigh_loadtest.units import parse_duration, parse_float_list, parse_int_list
from rayleigh_loadtest.workload import Tokenizer, from_dataset, synthetic
from tests.plugins.common import REPO_ROOT

TINY_TOKENIZER = REPO_ROOT / ".cache" / "models" / "tiny-qwen"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("500ms", 0.5), ("2m", 120), ("1.5", 1.5), ("250us", 250e-6), ("1h", 3600)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1s", "0s", "5 parsecs"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_lists() -> None:
    assert parse_int_list("1, 4,16") == [1, 4, 16]
    assert parse_float_list("2,5.5") == [2.0, 5.5]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(ValueError):
            parse_int_list(bad)


def test_synthetic_prompts_differ_and_say_they_are_approximate() -> None:
    w = synthetic(32, 8, count=10, seed=1)
    texts = {p.text for p in w.prompts}
    assert len(texts) == 10
    assert all(len(p.text.split()) == 32 and p.max_tokens == 8 for p in w.prompts)
    d = w.describe()
    assert d["prompt_tokens_exact"] is False and "approximate" in d["prompt_tokens_note"]
    assert synthetic(32, 8, count=10, seed=1).prompts == w.prompts  # seeded
    assert w[10] is w[0]


@pytest.mark.skipif(not (TINY_TOKENIZER / "tokenizer.json").is_file(), reason="the tiny model is not made here")
def test_with_the_models_tokenizer_prompts_have_the_exact_length() -> None:
    tok = Tokenizer(str(TINY_TOKENIZER))
    w = synthetic(100, 8, count=12, tokenizer=tok)
    assert [tok.count(p.text) for p in w.prompts] == [100] * 12
    assert w.describe()["prompt_tokens_exact"] is True


def test_datasets_in_the_three_shapes(tmp_path: Path) -> None:
    lines = [
        {"conversations": [{"from": "human", "value": "What is Rayleigh scattering?"}, {"from": "gpt", "value": "x" * 40}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}],
         "max_tokens": 7},
        {"prompt": "Once upon a time", "max_tokens": 3},
        {"conversations": [{"from": "gpt", "value": "no question"}]},  # skipped: no human turn
        {"something": "else"},  # skipped
    ]  # fmt: skip
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    w = from_dataset(path, seed=0)
    assert len(w.prompts) == 3 and w.kind == "dataset" and not w.exact
    by_text = {p.text: p for p in w.prompts}
    assert by_text["What is Rayleigh scattering?"].max_tokens == 10  # the reference answer, 40 chars / 4
    chat = by_text["Be brief.\nWhy is the sky blue?"]
    assert chat.max_tokens == 7 and [m["role"] for m in chat.messages] == ["system", "user"]
    assert by_text["Once upon a time"].max_tokens == 3
    assert all(p.max_tokens == 16 for p in from_dataset(path, output_tokens=16).prompts)


def test_a_bad_dataset_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        from_dataset(path)
    path.write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="no usable prompts"):
        from_dataset(path)


def test_overhead_lists_only_real_benchmarks() -> None:
    names = benchmarks(bench_dir())
    assert {"gateway_overhead", "serving_overhead", "operator_scale"} <= set(names)
    assert not {"gateway_floor", "floor_controller", "devupstream", "locustfile"} & set(names)


def test_overhead_outside_a_checkout_says_it_needs_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rayleigh_loadtest.overhead as overhead

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(overhead, "__file__", str(tmp_path / "site-packages" / "rayleigh_loadtest" / "overhead.py"))
    result = CliRunner().invoke(overhead.overhead, [])
    assert result.exit_code == 1
    assert "source checkout" in result.output and "rayleigh bench load" in result.output


def test_rayleigh_bench_lists_its_subcommands() -> None:
    from rayleigh_api.cli import main

    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    for name in ("load", "compare", "report", "overhead"):
        assert name in result.output

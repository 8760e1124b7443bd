"""`rayleigh bench` against the real serving app (Ray Serve + vLLM on CPU, the tiny model) and vLLM's own server.

Heavy (an engine start is about a minute each): marked `integration`. The serving app comes from the
session fixture `serving_stack` (tests/plugins/serving_stack.py); vLLM's own OpenAI server is started
here the way bench/serving_overhead.py starts it (`python -m vllm.entrypoints.openai.api_server`,
same engine settings, served model name "bench"). Each run is a few requests.
"""

from __future__ import annotations

import json
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rayleigh_loadtest.cli import bench
from tests.plugins.serving_stack import ServingStack

pytestmark = pytest.mark.integration

OUTPUT_TOKENS = 8


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    """(base URL, model name) of vLLM's own OpenAI server on the tiny model."""
    from bench.serving_overhead import MODEL_NAME, start_vllm

    log = Path(tempfile.mkdtemp(prefix="rayleigh-loadtest-vllm-")) / "vllm.log"
    running = start_vllm(tiny_model_dir, log)
    try:
        yield running.base_url, MODEL_NAME
    finally:
        running.stop()


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(bench, args)
    if result.exit_code != 0 and result.exc_info is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(result.output + "".join(traceback.format_exception(*result.exc_info)))
    assert result.exit_code == 0, result.output


def _load(base_url: str, model: str, out: Path, *extra: str) -> dict[str, Any]:
    args = [
        "load", "--base-url", base_url, "--model", model, "--concurrency", "1,2", "--requests", "4",
        "--output-tokens", str(OUTPUT_TOKENS), "--ignore-eos", "--extra-body", '{"temperature": 0}',
        "--slo-ttft", "30s", "--slo-itl", "5s", "--timeout", "120s", "-q", "--out", str(out), *extra,
    ]  # fmt: skip
    _invoke(args)
    return dict(json.loads((out / "results.json").read_text()))


def _check_run(doc: dict[str, Any], out: Path) -> None:
    assert not doc["interrupted"]
    for step in doc["steps"]:
        assert step["errors"] == {} and step["completed"] == 4
        # The server reported usage for every request, and it is what was asked for (ignore_eos).
        assert step["output_tokens_source"] == "usage"
        assert step["output_tokens"] == 4 * OUTPUT_TOKENS
        for metric in ("ttft", "itl", "e2e"):
            assert step[f"{metric}_p50_ms"] <= step[f"{metric}_p90_ms"] <= step[f"{metric}_p99_ms"], metric
        assert step["ttft_p99_ms"] <= step["e2e_p99_ms"]
        assert 0.0 <= step["goodput"] <= 1.0
        assert step["output_tokens_per_s"] > 0
    for line in (out / "requests.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["output_tokens"] == OUTPUT_TOKENS and r["tokens_source"] == "usage"
        assert r["ttft_ms"] <= r["e2e_ms"]
        # Every token the server counted arrived as its own event, or fewer events carrying several.
        assert 1 <= len(r["itl_ms"]) + 1 <= OUTPUT_TOKENS
    assert (out / "throughput.png").stat().st_size > 10_000


def test_load_against_the_serving_app(serving_stack: ServingStack, tmp_path: Path) -> None:
    out = tmp_path / "rayleigh"
    doc = _load(serving_stack.base_url, serving_stack.model, out, "--tokenizer", str(serving_stack.model_dir))
    assert doc["workload"]["prompt_tokens_exact"] is True
    _check_run(doc, out)


def test_load_without_streaming_against_the_serving_app(serving_stack: ServingStack, tmp_path: Path) -> None:
    out = tmp_path / "plain"
    doc = _load(serving_stack.base_url, serving_stack.model, out, "--no-stream", "--concurrency", "2")
    step = doc["steps"][0]
    assert step["errors"] == {} and step["output_tokens"] == 4 * OUTPUT_TOKENS
    # without streaming the first token comes with the body
    assert step["ttft_p50_ms"] == pytest.approx(step["e2e_p50_ms"], abs=0.01)


def test_load_against_vllms_own_server(vllm_server: tuple[str, str], tmp_path: Path) -> None:
    url, model = vllm_server
    out = tmp_path / "vllm"
    _check_run(_load(url, model, out), out)


def test_compare_the_serving_app_with_itself(serving_stack: ServingStack, tmp_path: Path) -> None:
    """Nothing differs: every interval contains 1. TPOT needs tokens that came in at least 2 reads,
    which a loaded machine does not always give (the serving stack then delivers a short answer in
    one read); its ratio may then lack an interval, and says why."""
    out = tmp_path / "cmp"
    args = [
        "compare", "--a", serving_stack.base_url, "--b", serving_stack.base_url, "--model", serving_stack.model,
        "--concurrency", "2", "--requests", "4", "--rounds", "6", "--confidence", "0.99",
        "--output-tokens", "16", "--ignore-eos", "-q", "--out", str(out),
    ]  # fmt: skip
    _invoke(args)
    (step,) = json.loads((out / "compare.json").read_text())["steps"]
    for name, r in step["ratios"].items():
        if name == "tpot_p50" and r["low"] is None:
            assert r["reason"], r
            continue
        assert r["low"] <= 1.0 <= r["high"], (name, r, step["a"]["tpot_undefined"], step["b"]["tpot_undefined"])


def test_compare_the_serving_app_with_vllms_own_server(
    serving_stack: ServingStack, vllm_server: tuple[str, str], tmp_path: Path
) -> None:
    url, model = vllm_server
    out = tmp_path / "rayleigh-vs-vllm"
    args = [
        "compare", "--a", url, "--model", model, "--label-a", "vLLM server", "--b", serving_stack.base_url,
        "--model-b", serving_stack.model, "--label-b", "Rayleigh", "--concurrency", "1,4", "--requests", "4",
        "--rounds", "2", "--output-tokens", str(OUTPUT_TOKENS), "--ignore-eos", "-q", "--out", str(out),
    ]  # fmt: skip
    _invoke(args)
    doc = json.loads((out / "compare.json").read_text())
    assert [s["concurrency"] for s in doc["steps"]] == [1, 4]
    for step in doc["steps"]:
        assert step["a"]["errors"] == {} and step["b"]["errors"] == {}
        for name, r in step["ratios"].items():
            if name == "tpot_p50" and r["ratio"] is None:  # every request's tokens came in one read
                assert r["reason"] and step["a"]["tpot_undefined"] + step["b"]["tpot_undefined"] > 0
                continue
            assert r["ratio"] is not None and r["ratio"] > 0, (name, r)
            # 4 requests a round: a bound the resamples cannot give (A's rate zero in too many of
            # them) is null, and the ratio says why
            if r["low"] is None or r["high"] is None:
                assert r["reason"], (name, r)
            else:
                assert r["low"] <= r["high"], (name, r)
    assert len(list(out.glob("*.png"))) == 4

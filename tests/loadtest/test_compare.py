"""`rayleigh bench compare`: interleaved rounds, ratios B/A with bootstrap intervals, overlaid plots."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from rayleigh_loadtest.client import Record
from rayleigh_loadtest.compare import CompareSettings, step_ratios
from rayleigh_loadtest.runner import Step, StepResult
from rayleigh_loadtest.stats import bootstrap_ratio, median_stat, rate_stat

RATIOS = {"ttft_p50", "tpot_p50", "e2e_p50", "output_tokens_per_s", "requests_per_s"}


def test_the_same_endpoint_twice_gives_intervals_that_contain_1(devupstream: str, tmp_path: Path) -> None:
    """Latencies are dominated by the dev upstream's controlled 10 ms gaps, the same for both sides."""
    out = tmp_path / "cmp"
    args = [
        "compare", "--a", devupstream, "--b", devupstream, "--model", "dev", "--label-a", "first",
        "--label-b", "second", "--concurrency", "4", "--requests", "16", "--rounds", "8", "--confidence", "0.99",
        "--output-tokens", "5", "--extra-body", '{"rayleigh_test": {"chunks": 5, "delay": 0.01}}', "-q",
        "--out", str(out),
    ]  # fmt: skip
    from rayleigh_loadtest.cli import bench

    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compare.json").read_text())
    assert doc["rounds"] == 8 and doc["confidence"] == 0.99 and not doc["interrupted"]
    assert (doc["a"]["label"], doc["b"]["label"]) == ("first", "second")
    (step,) = doc["steps"]
    assert step["concurrency"] == 4 and step["rounds"] == 8
    assert set(step["ratios"]) == RATIOS
    for name, r in step["ratios"].items():
        assert r["low"] <= r["ratio"] <= r["high"], name
        assert r["low"] <= 1.0 <= r["high"], (name, r)
    # each side: the rounds pooled, in the load command's schema
    for side in ("a", "b"):
        side_doc = json.loads((out / side / "results.json").read_text())
        assert side_doc["steps"][0]["requests"] == 8 * 16
        assert side_doc["steps"][0]["output_tokens"] == 8 * 16 * 5
        rounds = {json.loads(line)["round"] for line in (out / side / "requests.jsonl").read_text().splitlines()}
        assert rounds == set(range(8))
    assert {p.name for p in out.glob("*.png")} == {"throughput.png", "ttft.png", "itl.png", "latency_cdf.png"}
    assert "B / A" in result.output
    # report reads a compare folder too
    rep = CliRunner().invoke(bench, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert len(list((tmp_path / "rep").glob("*.png"))) == 4


def _records(rng: random.Random, scale: float, n: int, window: float) -> list[Record]:
    out = []
    for i in range(n):
        ttft = scale * rng.uniform(0.04, 0.06)
        gaps = [scale * rng.uniform(0.009, 0.011) for _ in range(9)]
        start = window * i / n
        out.append(Record(start, start + ttft + sum(gaps), 200, None, ttft, gaps, 10, "usage"))
    return out


def test_a_real_difference_gives_intervals_that_exclude_1() -> None:
    """B twice as slow per request, and half the throughput in the same window: every interval excludes 1."""
    rng = random.Random(1)
    a = [StepResult(Step("concurrency", 1), _records(rng, 1.0, 60, 6.0), 6.0, round=r) for r in range(3)]
    b = [StepResult(Step("concurrency", 1), _records(rng, 2.0, 30, 6.0), 6.0, round=r) for r in range(3)]
    ratios = step_ratios(a, b, CompareSettings(rounds=3, seed=7))
    for name in ("ttft_p50", "tpot_p50", "e2e_p50"):
        assert 1.8 < ratios[name].low < ratios[name].high < 2.2, name  # type: ignore[operator]
        assert not ratios[name].contains(1.0)
    for name in ("output_tokens_per_s", "requests_per_s"):
        assert ratios[name].value == 0.5 and not ratios[name].contains(1.0), name


def test_bootstrap_is_seeded_and_handles_empty_sides() -> None:
    rng = random.Random(3)
    xs = [np.array([rng.gauss(10, 1) for _ in range(40)]) for _ in range(4)]
    ys = [np.array([rng.gauss(10, 1) for _ in range(40)]) for _ in range(4)]
    first = bootstrap_ratio(xs, ys, median_stat, seed=5)
    assert first == bootstrap_ratio(xs, ys, median_stat, seed=5)
    assert bootstrap_ratio([], ys, median_stat).value is None
    assert bootstrap_ratio([np.array([])], [np.array([1.0])], median_stat).to_json()["ratio"] is None
    blocks = [np.array([[10.0, 1.0]] * 5)] * 3
    same = bootstrap_ratio(blocks, blocks, rate_stat)
    assert (same.value, same.low, same.high) == (1.0, 1.0, 1.0)


def test_round_drift_widens_the_interval() -> None:
    """Each round B is a little faster or slower than A (the machine drifted between the two runs): the
    interval must reflect that spread, not only the (tiny) spread of requests within each round."""
    rng = random.Random(2)
    a, b = [], []
    for shift in (1.01, 0.99, 1.02, 0.985, 1.0, 1.015):
        a.append(np.array([rng.gauss(10, 0.01) for _ in range(30)]))
        b.append(np.array([rng.gauss(10 * shift, 0.01) for _ in range(30)]))
    r = bootstrap_ratio(a, b, median_stat, seed=1, confidence=0.95)
    assert r.contains(1.0)
    assert r.high is not None and r.low is not None
    assert r.high - r.low > 0.01  # requests alone would give about 0.001


def test_intervals_cover_1_as_often_as_they_claim_when_nothing_differs() -> None:
    """100 simulated comparisons of identical endpoints (6 rounds, with drift between rounds): a 90%
    interval should contain 1 in about 90 or more of them (two-stage resampling errs on the wide side)."""
    rng = np.random.default_rng(11)
    covered = 0
    for trial in range(100):
        a, b = [], []
        for _ in range(6):
            drift = rng.normal(1.0, 0.02, size=2)  # each side's run in the round saw its own machine state
            a.append(rng.gamma(20, 0.5, size=25) * drift[0])
            b.append(rng.gamma(20, 0.5, size=25) * drift[1])
        covered += bootstrap_ratio(a, b, median_stat, n=300, seed=trial, confidence=0.9).contains(1.0)
    assert covered >= 80, covered

"""`rayleigh bench compare`: interleaved rounds, ratios B/A with bootstrap intervals, overlaid plots."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
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
        # 3 rounds: the interval is widened for so few (few_rounds_factor), and still excludes 1
        assert 1.5 < ratios[name].low < 2.0 < ratios[name].high < 2.6, name  # type: ignore[operator]
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


def test_few_rounds_widen_the_interval_as_students_t_does() -> None:
    from rayleigh_loadtest.stats import few_rounds_factor

    assert few_rounds_factor(1, 0.95) == 1.0
    assert few_rounds_factor(6, 0.95) == pytest.approx(2.5706 / 1.96 * (6 / 5) ** 0.5, rel=1e-3)
    assert few_rounds_factor(4, 0.99) == pytest.approx(5.8409 / 2.5758 * (4 / 3) ** 0.5, rel=1e-3)
    assert few_rounds_factor(2, 0.95) == pytest.approx(12.706 / 1.96 * 2**0.5, rel=1e-3)
    assert 1.0 < few_rounds_factor(50, 0.95) < 1.05


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


def _batched(start: float, ttft: float, reads: list[int], gap: float, tokens: int) -> Record:
    """A request whose token events arrived in reads of `reads[i]` events each, `gap` apart."""
    itl: list[float] = []
    for i, n in enumerate(reads):
        itl += ([gap] if i else []) + [0.0] * (n - 1)
    end = start + ttft + gap * (len(reads) - 1) + 0.001
    return Record(start, end, 200, None, ttft, itl, tokens, "usage")


def test_tpot_is_undefined_when_every_token_came_in_one_read() -> None:
    """A loaded server (or one that batches streamed tokens) can deliver a whole short answer in one
    read: TTFT is then about the end-to-end latency, and (e2e - TTFT) / (n - 1) is a near-zero artefact
    that made a self-comparison's TPOT interval exclude 1. Such requests have no TPOT and are counted.
    Tokens that came in the first token's read were made before TTFT: the time after it is divided by
    the tokens that came after it."""
    one_read = _batched(0.0, 0.2, [8], 0.05, 8)
    two_reads = _batched(0.0, 0.1, [5, 3], 0.05, 8)
    streamed = _batched(0.0, 0.1, [1] * 8, 0.01, 8)
    assert one_read.token_reads == 1 and one_read.tpot is None
    assert two_reads.token_reads == 2 and two_reads.first_read_events == 5
    assert two_reads.tpot == (two_reads.e2e - 0.1) / 3
    assert streamed.token_reads == 8 and streamed.tpot == (streamed.e2e - 0.1) / 7  # the usual formula
    rounds = [StepResult(Step("concurrency", 2), [one_read, two_reads], 0.3, round=r) for r in range(3)]
    from rayleigh_loadtest.stats import Slo, summarize

    fig = summarize(rounds[0].records, elapsed_s=0.3, slo=Slo())
    assert fig["tpot_undefined"] == 1 and fig["tpot_p50_ms"] == round(two_reads.tpot * 1e3, 3)  # type: ignore[operator]
    ratios = step_ratios(rounds, rounds, CompareSettings(rounds=3))
    assert ratios["tpot_p50"].value == 1.0
    only_one_read = [StepResult(Step("concurrency", 2), [one_read], 0.3, round=r) for r in range(3)]
    r = step_ratios(only_one_read, only_one_read, CompareSettings(rounds=3))["tpot_p50"]
    assert r.value is None and r.low is None and r.high is None
    assert r.reason is not None and "one read" in r.reason
    assert r.to_json()["reason"] == r.reason
    # TPOT in one round only, of three: a ratio, but requests of one round say nothing of the drift
    # between rounds, so no interval
    one_round = [
        StepResult(Step("concurrency", 2), [two_reads if r == 1 else one_read], 0.3, round=r) for r in range(3)
    ]
    r = step_ratios(one_round, one_round, CompareSettings(rounds=3))["tpot_p50"]
    assert r.value == 1.0 and r.low is None and r.high is None
    assert r.reason is not None and "only 1 round" in r.reason


def test_few_requests_that_end_together_divide_by_nothing() -> None:
    """4 requests at concurrency 4 all end at once, in one block of each round: most resampled rates of
    A are 0. That raised ZeroDivisionError; now the ratio is there, and an interval it cannot bound
    above says so."""
    rng = random.Random(4)
    a, b = [], []
    for r in range(2):
        recs_a = [Record(0.0, 0.2 + rng.uniform(0, 0.001), 200, None, 0.05, [0.02] * 7, 8, "usage") for _ in range(4)]
        recs_b = [Record(0.0, 0.3 + rng.uniform(0, 0.001), 200, None, 0.08, [0.03] * 7, 8, "usage") for _ in range(4)]
        a.append(StepResult(Step("concurrency", 4), recs_a, max(x.end for x in recs_a), round=r))
        b.append(StepResult(Step("concurrency", 4), recs_b, max(x.end for x in recs_b), round=r))
    ratios = step_ratios(a, b, CompareSettings(rounds=2))
    for name in ("output_tokens_per_s", "requests_per_s"):
        x = ratios[name]
        assert x.value is not None and 0.6 < x.value < 0.7, (name, x)
        assert x.low is not None and x.low <= x.value, (name, x)
        if x.high is None:
            assert x.reason is not None and "bound the interval above" in x.reason
        json.dumps(x.to_json(), allow_nan=False)


def test_time_blocks_sum_what_finished_in_each_block() -> None:
    from rayleigh_loadtest.stats import time_blocks

    recs = [Record(0.0, 0.2, 200, None, 0.1, [], 10, "usage"), Record(0.5, 1.0, 200, None, 0.1, [], 6, "usage")]
    recs.append(Record(0.0, 0.5, 503, "503", None, [], 0, "none"))  # failed: counts for nothing
    rows = time_blocks(recs, 1.0, 4, lambda r: float(r.output_tokens))
    assert rows[:, 0].tolist() == [10.0, 0.0, 0.0, 6.0] and rows[:, 1].tolist() == [0.25] * 4
    assert rate_stat(rows) == 16.0


def test_a_zero_baseline_is_a_null_ratio_with_a_reason_not_an_error() -> None:
    zero = [np.array([[0.0, 1.0]] * 4)] * 3
    some = [np.array([[1.0, 1.0], [0.0, 1.0], [2.0, 1.0], [0.0, 1.0]])] * 3
    r = bootstrap_ratio(zero, some, rate_stat)
    assert r.value is None and r.high is None and r.reason == "A's figure is zero"
    assert r.to_json()["ratio"] is None
    # A is zero in some resamples only: the interval is unbounded above, and says so
    sparse = [np.array([[1.0, 1.0]] + [[0.0, 1.0]] * 9)]
    r = bootstrap_ratio(sparse, some[:1], rate_stat, n=500)
    assert r.value == 7.5  # (3 / 4 s) / (1 / 10 s)
    assert r.high is None and r.reason is not None and "zero" in r.reason
    both = bootstrap_ratio(zero, zero, rate_stat)
    assert both.value is None and both.low is None and both.high is None

"""Steps against the dev upstream: bounds, per-step figures, errors by status, goodput, stopping.

No assertion here depends on how fast this (shared, 2-core) machine is: bounds are counts, and
latency SLOs are set far from what the dev upstream's controlled delays produce.
"""

from __future__ import annotations

import asyncio

import pytest

from rayleigh_loadtest.results import step_json
from rayleigh_loadtest.runner import Step
from rayleigh_loadtest.stats import Slo, summarize
from tests.loadtest.conftest import make_spec, measure


def ordered(step: dict[str, object], metric: str) -> bool:
    p50, p90, p99 = (step[f"{metric}_p{p}_ms"] for p in (50, 90, 99))
    assert isinstance(p50, float) and isinstance(p90, float) and isinstance(p99, float)
    return p50 <= p90 <= p99


async def test_a_concurrency_sweep_is_bounded_by_count_and_measures_every_request(devupstream: str) -> None:
    spec = make_spec(
        devupstream,
        # 2 ms between chunks: tokens come in several reads, so requests have a TPOT
        control={"chunks": 10, "delay": 0.002},
        steps=[Step("concurrency", 1), Step("concurrency", 4)],
        max_requests=24,
        output_tokens=10,
    )
    results = await measure(spec)
    assert [r.step.level for r in results] == [1, 4]
    for sr in results:
        assert len(sr.records) == 24 and not sr.interrupted and sr.cancelled == 0
        s = step_json(sr, spec.slo)
        assert s["requests"] == s["completed"] == 24 and s["errors"] == {}
        assert s["output_tokens"] == 24 * 10  # every request's usage, summed
        assert s["output_tokens_source"] == "usage"
        assert s["prompt_tokens_mean"] == 7
        for metric in ("ttft", "itl", "e2e"):
            assert ordered(s, metric), metric
        # TPOT is undefined for a request whose tokens all came in one read (a stalled client can
        # read them together); the others have one
        assert s["tpot_undefined"] == sum(1 for r in sr.records if r.tpot is None) < 24
        assert ordered(s, "tpot")
        assert s["ttft_p50_ms"] <= s["e2e_p50_ms"] and s["ttft_p99_ms"] <= s["e2e_p99_ms"]
        assert s["output_tokens_per_s"] > 0 and s["requests_per_s"] > 0
        assert s["goodput"] == 1.0  # no SLO: every success counts
        for r in sr.records:
            assert r.ttft is not None and r.ttft <= r.e2e
            assert r.output_tokens == 10 and len(r.itl) == 9


async def test_closed_loop_keeps_the_concurrency_in_flight(devupstream: str) -> None:
    """With 4 workers and requests that take 50 ms, requests overlap: at most 4 at any time, often 4."""
    spec = make_spec(devupstream, control={"chunks": 2, "delay": 0.05}, steps=[Step("concurrency", 4)], max_requests=12)
    (sr,) = await measure(spec)
    events = sorted([(r.start, 1) for r in sr.records] + [(r.end, -1) for r in sr.records], key=lambda e: (e[0], e[1]))
    level, peak = 0, 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 4


async def test_errors_are_counted_by_status_and_lower_goodput(devupstream: str) -> None:
    spec = make_spec(devupstream, control={"status": 503}, max_requests=6)
    (sr,) = await measure(spec)
    s = step_json(sr, spec.slo)
    assert s["errors"] == {"503": 6}
    assert (s["completed"], s["failed"], s["goodput"]) == (0, 6, 0.0)
    assert s["ttft_p50_ms"] is None and s["output_tokens_per_s"] == 0


async def test_goodput_is_the_fraction_within_the_slos(devupstream: str) -> None:
    """Half the requests wait 400 ms before their second token; a 200 ms ITL SLO fails those only."""
    fast = make_spec(devupstream, control={"chunks": 3}, max_requests=6)
    slow = make_spec(devupstream, control={"chunks": 2, "delay": 0.4}, max_requests=6)
    records = [r for spec in (fast, slow) for sr in await measure(spec) for r in sr.records]
    s = summarize(records, elapsed_s=1.0, slo=Slo(ttft_s=10.0, itl_s=0.2))
    assert s["goodput"] == pytest.approx(0.5)
    assert 0.0 <= s["goodput"] <= 1.0
    assert summarize(records, elapsed_s=1.0, slo=Slo(ttft_s=10.0))["goodput"] == 1.0
    assert summarize(records, elapsed_s=1.0, slo=Slo(e2e_s=1e-9))["goodput"] == 0.0


async def test_open_loop_poisson_arrivals_are_bounded_by_count(devupstream: str) -> None:
    spec = make_spec(devupstream, control={"chunks": 2}, steps=[Step("rate", 200.0)], max_requests=30)
    (sr,) = await measure(spec)
    assert len(sr.records) == 30 and all(r.ok for r in sr.records)
    starts = sorted(r.start for r in sr.records)
    assert len(set(starts)) == 30  # arrivals are spread out, not a burst


async def test_open_loop_is_bounded_by_time(devupstream: str) -> None:
    spec = make_spec(
        devupstream, control={"chunks": 2}, steps=[Step("rate", 20.0)], duration_s=0.5, max_requests=10_000
    )
    (sr,) = await measure(spec)
    assert 0 < len(sr.records) < 200  # about 10; far below the count bound
    assert max(r.start for r in sr.records) < 0.5 + 0.5  # nothing issued long after the deadline


async def test_requests_in_flight_past_the_drain_time_are_cancelled_and_counted(devupstream: str) -> None:
    spec = make_spec(
        devupstream,
        control={"chunks": 3, "delay": 5},
        steps=[Step("concurrency", 2)],
        duration_s=0.1,
        drain_s=0.3,
    )
    (sr,) = await measure(spec)
    assert sr.records == [] and sr.cancelled == 2 and not sr.interrupted


async def test_stop_ends_the_step_and_keeps_what_finished(devupstream: str) -> None:
    """What Ctrl-C does: the running step ends at once, what finished is kept, no further step runs."""
    spec = make_spec(
        devupstream,
        control={"chunks": 2, "delay": 0.02},
        steps=[Step("concurrency", 2), Step("concurrency", 4)],
        max_requests=10_000,
        duration_s=60,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(measure(spec, stop))
    await asyncio.sleep(0.5)
    stop.set()
    results = await asyncio.wait_for(task, 30)
    assert len(results) == 1
    (sr,) = results
    assert sr.interrupted and sr.records and all(r.ok for r in sr.records)
    assert sr.cancelled <= 2
    assert step_json(sr, spec.slo)["interrupted"] is True

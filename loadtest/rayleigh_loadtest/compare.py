"""`rayleigh bench compare`: the same workload against two endpoints in interleaved rounds.

Each round runs every step against A and against B, one after the other, the order alternating
from round to round (A B, B A, ...), so that this machine's drift hits both alike. Figures are
pooled over rounds per step; ratios are B over A with seeded two-stage bootstrap intervals
(rounds drawn with replacement, the same for both sides, then samples within each drawn round):

  ttft_p50, tpot_p50, e2e_p50    ratio of medians; the samples are requests
  output_tokens_per_s,           ratio of rates; the samples are windows of time (each round's
  requests_per_s                 measured window cut into `blocks` equal blocks)

The rounds carry the machine's drift into the intervals: more, shorter rounds give tighter ones.

TPOT: a request's time per output token after the first read (`client.Record.tpot`), undefined for
a request whose tokens all arrived in one read. A ratio that cannot be computed is null, with a
`reason`; none of them divides by zero. The two sides draw their prompts from one sequence, so no
prompt is sent to both (no cross-side prefix-cache hits when they share an engine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .client import Record, warm_up
from .load import LoadSpec, describe, measure_step
from .progress import Display
from .results import SavedRun, run_json
from .runner import PromptCounter, StepResult
from .stats import Ratio, bootstrap_ratio, median_stat, rate_stat, time_blocks

SIDES = ("a", "b")


@dataclass
class CompareSettings:
    rounds: int = 6
    confidence: float = 0.95
    bootstrap: int = 2000
    blocks: int = 10  # per round, for the throughput intervals
    seed: int = 0


async def run_compare(
    spec_a: LoadSpec, spec_b: LoadSpec, settings: CompareSettings, *, stop: asyncio.Event, display: Display
) -> dict[str, list[list[StepResult]]]:
    """{"a": per step, the StepResult of each round; "b": the same}."""
    specs = {"a": spec_a, "b": spec_b}
    out: dict[str, list[list[StepResult]]] = {s: [[] for _ in spec_a.steps] for s in SIDES}
    async with spec_a.session() as sa, spec_b.session() as sb:
        clients = {"a": spec_a.client(sa), "b": spec_b.client(sb)}
        for side in SIDES:
            if specs[side].warmup and not stop.is_set():
                await warm_up(clients[side], specs[side].workload[0], specs[side].warmup)
        # One prompt sequence for both sides: no prompt is sent to both, so when A and B share an
        # engine (the same server twice, or a gateway in front of the server) the second side of a
        # round does not hit the prefix cache the first one just filled.
        shared = PromptCounter()
        prompts = {s: shared for s in SIDES}
        for rnd in range(settings.rounds):
            for i, step in enumerate(spec_a.steps):
                order = SIDES if rnd % 2 == 0 else SIDES[::-1]
                for side in order:
                    if stop.is_set():
                        return out
                    spec = specs[side]
                    sr = await measure_step(
                        spec,
                        clients[side],
                        step,
                        stop=stop,
                        prompts=prompts[side],
                        display=display,
                        seed=settings.seed + 1000 * rnd + i,
                        title=f"round {rnd + 1}/{settings.rounds} {side.upper()} ({spec.endpoint.label}) {step.label}",
                    )
                    for r in sr.records:
                        r.round = rnd
                    sr.round = rnd
                    out[side][i].append(sr)
    return out


def pool(rounds: list[StepResult]) -> StepResult:
    """One step's rounds as one: records together, measured time added up."""
    first = rounds[0]
    return replace(
        first,
        records=[r for sr in rounds for r in sr.records],
        elapsed_s=sum(sr.elapsed_s for sr in rounds),
        cancelled=sum(sr.cancelled for sr in rounds),
        late=sum(sr.late for sr in rounds),
        interrupted=any(sr.interrupted for sr in rounds),
    )


def _values(rounds: list[StepResult], get: Callable[[Record], float | None]) -> list[np.ndarray]:
    return [np.array([v for r in sr.records if r.ok and (v := get(r)) is not None], dtype=float) for sr in rounds]


def step_ratios(a: list[StepResult], b: list[StepResult], settings: CompareSettings) -> dict[str, Ratio]:
    """B/A for one step; `a[i]` and `b[i]` are round i of each side."""
    # When several rounds were measured, an interval needs samples from at least 2 of them.
    kw: dict[str, Any] = {
        "n": settings.bootstrap,
        "confidence": settings.confidence,
        "min_rounds": min(2, len(a), len(b)),
    }
    out: dict[str, Ratio] = {}
    latency: dict[str, Callable[[Record], float | None]] = {
        "ttft_p50": lambda r: r.ttft,
        "tpot_p50": lambda r: r.tpot,
        "e2e_p50": lambda r: r.e2e,
    }
    for k, (name, get) in enumerate(latency.items()):
        ratio = bootstrap_ratio(_values(a, get), _values(b, get), median_stat, seed=settings.seed + k, **kw)
        if name == "tpot_p50" and ratio.reason is not None and ratio.low is None:
            ratio = replace(
                ratio,
                reason=f"{ratio.reason} (TPOT is undefined for requests whose tokens all arrived in one read)",
            )
        out[name] = ratio
    rates: dict[str, Callable[[Record], float]] = {
        "output_tokens_per_s": lambda r: float(r.output_tokens),
        "requests_per_s": lambda r: 1.0,
    }
    for k, (name, amount) in enumerate(rates.items(), start=len(latency)):

        def blocks(rounds: list[StepResult], amount: Callable[[Record], float] = amount) -> list[np.ndarray]:
            return [time_blocks(sr.records, sr.elapsed_s, settings.blocks, amount) for sr in rounds]

        out[name] = bootstrap_ratio(blocks(a), blocks(b), rate_stat, seed=settings.seed + k, **kw)
    return out


def compare_docs(
    spec_a: LoadSpec,
    spec_b: LoadSpec,
    settings: CompareSettings,
    measured: dict[str, list[list[StepResult]]],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, list[StepResult]]]:
    """(compare.json, {side: results.json}, {side: pooled step results}) for the steps measured on both sides."""
    n = min(sum(1 for rounds in measured[s] if rounds) for s in SIDES)
    specs = {"a": spec_a, "b": spec_b}
    pooled = {s: [pool(rounds) for rounds in measured[s][:n]] for s in SIDES}
    extra = {"rounds": settings.rounds}
    docs = {
        s: run_json(
            tool="rayleigh bench compare",
            label=specs[s].endpoint.label,
            slo=specs[s].slo,
            step_results=pooled[s],
            extra=extra,
            **describe(specs[s]),
        )
        for s in SIDES
    }
    steps = []
    for i in range(n):
        ratios = step_ratios(measured["a"][i], measured["b"][i], settings)
        a_step, b_step = docs["a"]["steps"][i], docs["b"]["steps"][i]
        steps.append(
            {
                "mode": a_step["mode"],
                "concurrency": a_step["concurrency"],
                "rate": a_step["rate"],
                "label": a_step["label"],
                "rounds": min(len(measured["a"][i]), len(measured["b"][i])),
                "ratios": {k: v.to_json() for k, v in ratios.items()},
                "a": {k: v for k, v in a_step.items() if k not in ("mode", "concurrency", "rate", "label")},
                "b": {k: v for k, v in b_step.items() if k not in ("mode", "concurrency", "rate", "label")},
            }
        )
    doc = {
        "schema_version": docs["a"]["schema_version"],
        "tool": "rayleigh bench compare",
        "a": {"label": spec_a.endpoint.label, **docs["a"]["endpoint"]},
        "b": {"label": spec_b.endpoint.label, **docs["b"]["endpoint"]},
        "workload": docs["a"]["workload"],
        "rounds": settings.rounds,
        "confidence": settings.confidence,
        "bootstrap_resamples": settings.bootstrap,
        "blocks_per_round": settings.blocks,
        "seed": settings.seed,
        "interrupted": docs["a"]["interrupted"] or docs["b"]["interrupted"] or n < len(spec_a.steps),
        "ratio": "B / A: above 1 means B's figure is larger (for latencies: B is slower)",
        "steps": steps,
    }
    return doc, docs, pooled


def saved_runs(docs: dict[str, dict[str, Any]], pooled: dict[str, list[StepResult]]) -> list[SavedRun]:
    return [SavedRun(docs[s]["label"], docs[s], [sr.records for sr in pooled[s]]) for s in SIDES]

"""Load steps: closed-loop (N requests in flight) and open-loop (Poisson arrivals at a rate).

Every step is bounded in count (`max_requests`) and in time (`duration_s` to stop issuing, then at
most `drain_s` for the requests still in flight, which are then cancelled and counted as such).
Setting `stop` (Ctrl-C) ends the step at once: in-flight requests are cancelled and what finished
is kept.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .client import Client, Record
from .workload import Workload


@dataclass(frozen=True)
class Step:
    mode: str  # "concurrency" | "rate"
    level: float  # requests in flight, or arrivals per second

    @property
    def label(self) -> str:
        from .units import format_load

        return f"c={format_load(self.level)}" if self.mode == "concurrency" else f"rate={format_load(self.level)}/s"


@dataclass(frozen=True)
class Limits:
    duration_s: float = 30.0
    max_requests: int = 100_000
    drain_s: float = 120.0  # how long requests in flight at the end may take to finish
    max_inflight: int = 1024  # open loop: arrivals wait (and count as late) beyond this


@dataclass
class Live:
    """Counters of the running step, read by the progress display."""

    label: str = ""
    t0: float = field(default_factory=time.perf_counter)
    max_requests: int = 0
    duration_s: float = 0.0
    done: int = 0
    errors: int = 0
    tokens: int = 0
    inflight: int = 0
    ttft_sum: float = 0.0
    ttft_n: int = 0

    def add(self, r: Record) -> None:
        self.done += 1
        if r.ok:
            self.tokens += r.output_tokens
            if r.ttft is not None:
                self.ttft_sum += r.ttft
                self.ttft_n += 1
        else:
            self.errors += 1


@dataclass
class StepResult:
    step: Step
    records: list[Record]
    elapsed_s: float
    cancelled: int = 0
    late: int = 0  # open loop: arrivals that found max_inflight requests in flight and waited
    interrupted: bool = False
    round: int = 0


class PromptCounter:
    """Hands out prompt indexes across steps, so that consecutive requests differ."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n - 1


async def _settle(tasks: set[asyncio.Task[None]], stop_waiter: asyncio.Future[bool], timeout: float) -> int:
    """Wait for `tasks` up to `timeout` or until stopped; cancel the rest. Returns how many were cancelled."""
    pending: set[asyncio.Future[Any]] = {t for t in tasks if not t.done()}
    deadline = time.perf_counter() + timeout
    while pending and not stop_waiter.done():
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending | {stop_waiter}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        pending.discard(stop_waiter)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    return len(pending)


async def run_step(
    client: Client,
    workload: Workload,
    step: Step,
    limits: Limits,
    *,
    stop: asyncio.Event,
    prompts: PromptCounter,
    seed: int = 0,
    live: Live | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> StepResult:
    live = live or Live()
    live.label, live.max_requests, live.duration_s = step.label, limits.max_requests, limits.duration_s
    records: list[Record] = []
    stop_waiter: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    t0 = live.t0 = time.perf_counter()
    deadline = t0 + limits.duration_s
    issued = 0
    late = 0

    async def one(index: int) -> None:
        live.inflight += 1
        try:
            rec = await client.send(workload[index], t0)
        finally:
            live.inflight -= 1
        records.append(rec)
        live.add(rec)
        if on_record is not None:
            on_record(rec)

    tasks: set[asyncio.Task[None]] = set()
    try:
        if step.mode == "concurrency":

            async def worker() -> None:
                nonlocal issued
                while not stop.is_set() and issued < limits.max_requests and time.perf_counter() < deadline:
                    issued += 1
                    await one(prompts.next())

            tasks = {asyncio.create_task(worker()) for _ in range(int(step.level))}
            # Workers stop issuing at the deadline; those in flight get `drain_s` more.
            cancelled = await _settle(tasks, stop_waiter, limits.duration_s + limits.drain_s)
        else:
            rng = random.Random(seed)
            next_t = t0
            while issued < limits.max_requests and not stop.is_set():
                next_t += rng.expovariate(step.level)
                if next_t >= deadline:
                    break
                delay = next_t - time.perf_counter()
                if delay > 0:
                    await asyncio.wait({stop_waiter}, timeout=delay)
                    if stop_waiter.done():
                        break
                if live.inflight >= limits.max_inflight:
                    late += 1
                    while live.inflight >= limits.max_inflight and not stop_waiter.done():
                        await asyncio.wait({stop_waiter}, timeout=0.001)
                issued += 1
                task = asyncio.create_task(one(prompts.next()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            cancelled = await _settle(set(tasks), stop_waiter, limits.drain_s)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        raise
    finally:
        stop_waiter.cancel()
    interrupted = stop.is_set()
    end = max((r.end for r in records), default=time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0 if interrupted or cancelled else end
    return StepResult(step, records, elapsed, cancelled, late, interrupted)

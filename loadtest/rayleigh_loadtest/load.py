"""`rayleigh bench load`: run the steps against one endpoint and write what was measured.

Ctrl-C sets `stop`: the running step ends (its in-flight requests are cancelled), no further step
starts, and the results of what finished are written as usual (`"interrupted": true`). A second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp

from .client import Client, Endpoint, RequestOptions, make_session, warm_up
from .progress import Display
from .results import run_json
from .runner import Limits, Live, PromptCounter, Step, StepResult, run_step
from .stats import Slo, summarize
from .workload import Workload

T = TypeVar("T")


@dataclass
class LoadSpec:
    endpoint: Endpoint
    options: RequestOptions
    workload: Workload
    steps: list[Step]
    limits: Limits
    slo: Slo
    warmup: int = 1
    seed: int = 0

    def peak(self) -> int:
        """The most connections the run can use: the connector's bound."""
        if self.steps and self.steps[0].mode == "concurrency":
            return max(int(s.level) for s in self.steps)
        return self.limits.max_inflight

    def session(self) -> aiohttp.ClientSession:
        return make_session(self.peak(), self.options.timeout_s)

    def client(self, session: aiohttp.ClientSession) -> Client:
        return Client(session, self.endpoint, self.options, self.workload.tokenizer)


async def measure_step(
    spec: LoadSpec,
    client: Client,
    step: Step,
    *,
    stop: asyncio.Event,
    prompts: PromptCounter,
    display: Display,
    seed: int,
    title: str,
) -> StepResult:
    live = Live()
    with display.step(title, live):
        sr = await run_step(client, spec.workload, step, spec.limits, stop=stop, prompts=prompts, seed=seed, live=live)
    display.step_done(title, summarize(sr.records, elapsed_s=sr.elapsed_s, slo=spec.slo, cancelled=sr.cancelled))
    return sr


async def run_load(spec: LoadSpec, *, stop: asyncio.Event, display: Display) -> list[StepResult]:
    """Every step in order, until done or stopped."""
    results: list[StepResult] = []
    async with spec.session() as session:
        client = spec.client(session)
        if spec.warmup and not stop.is_set():
            await warm_up(client, spec.workload[0], spec.warmup)
        prompts = PromptCounter()
        for i, step in enumerate(spec.steps):
            if stop.is_set():
                break
            sr = await measure_step(
                spec,
                client,
                step,
                stop=stop,
                prompts=prompts,
                display=display,
                seed=spec.seed + i,
                title=f"{spec.endpoint.label or 'run'} {step.label}",
            )
            results.append(sr)
    return results


def describe(spec: LoadSpec) -> dict[str, Any]:
    """The parts of results.json that say what was run (never the API key)."""
    e, o, lim = spec.endpoint, spec.options, spec.limits
    return {
        "endpoint": {"base_url": e.base_url, "url": e.url, "model": e.model, "api": e.api},
        "workload": spec.workload.describe(),
        "options": {
            "stream": o.stream,
            "ignore_eos": o.ignore_eos,
            "extra_body": o.extra_body,
            "timeout_s": o.timeout_s,
            "warmup_requests": spec.warmup,
            "seed": spec.seed,
        },
        "limits": {
            "duration_s": lim.duration_s,
            "max_requests": lim.max_requests,
            "drain_s": lim.drain_s,
            "max_inflight": lim.max_inflight,
        },
    }


def load_doc(spec: LoadSpec, results: list[StepResult], *, tool: str = "rayleigh bench load") -> dict[str, Any]:
    return run_json(tool=tool, label=spec.endpoint.label, slo=spec.slo, step_results=results, **describe(spec))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run_interruptible(main: Callable[[asyncio.Event], Awaitable[T]], display: Display) -> T:
    """Run `main(stop)` on a fresh event loop (uvloop when installed); the first Ctrl-C sets `stop`."""

    async def wrapper() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_sigint() -> None:
            stop.set()
            # The next Ctrl-C raises KeyboardInterrupt as usual.
            loop.remove_signal_handler(signal.SIGINT)
            display.message("stopping: writing what was measured (Ctrl-C again to abort)")

        try:
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            installed = True
        except (NotImplementedError, RuntimeError, ValueError):
            installed = False
        try:
            return await main(stop)
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(wrapper())


async def discover_model(base_url: str, api_key: str | None, timeout_s: float = 10.0) -> str:
    """The first model that `GET /v1/models` lists (for runs without --model)."""
    url = base_url.rstrip("/")
    url = url + ("/models" if url.endswith("/v1") else "/v1/models")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s,
        s.get(url, headers=headers) as r,
    ):
        if r.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {r.status}; give --model")
        data = await r.json(content_type=None)
    models = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
    if not models or not isinstance(models[0], str):
        raise RuntimeError(f"GET {url} lists no model; give --model")
    return models[0]

"""What serving through Ray Serve costs, against vLLM's own OpenAI server, on one machine and one run.

The stacks serve the same random Qwen2 model with the same engine settings:
  vllm              `python -m vllm.entrypoints.openai.api_server` (the floor: the engine's own server)
  stock             Ray Serve LLM's `build_openai_app` with default settings (what a KubeRay user runs)
  stock_direct      the same with Ray Serve LLM's direct streaming (`RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1`,
                    which Ray 2.60 only accepts with `RAY_SERVE_ENABLE_HA_PROXY=1`)
  rayleigh_haproxy  Rayleigh's Serve app behind Ray's HAProxy ingress (replicas serve HTTP themselves)
  rayleigh_proxy    Rayleigh's Serve app behind Ray Serve's Python proxy actor (Ray's default ingress)
  rayleigh_direct   (not in the default list) Rayleigh's replica's own HTTP server, no proxy at all
                    (`RAY_SERVE_ENABLE_DIRECT_INGRESS=1`, port found by probing): what a client that
                    knew the replicas could get; the figure the others are compared with
The `rayleigh_*` keys (and the unprefixed ratios) repeat the variant that `rayleigh up` and the
operator run by default (rayleigh_serving.ingress.DEFAULT_INGRESS), with the same Ray environment.

For each stack, in alternating rounds (each round starts and stops every stack, rotating the order):
streaming chat with a fixed prompt, `ignore_eos`, 64 tokens per request; tokens/s at concurrency 1
and 16; time to first chunk with max_tokens 1 at concurrency 1. Medians over rounds; ratios against
vLLM of the same round. Every load loop is bounded in count and time; loopback only.

  .venv/bin/python bench/serving_overhead.py                # full: medium model, 3 rounds
  .venv/bin/python bench/serving_overhead.py --model tiny   # full on the tiny model (keys suffixed _tiny)
  .venv/bin/python bench/serving_overhead.py --quick        # tiny model, 1 round, few requests
  .venv/bin/python bench/serving_overhead.py --json bench/results/serving_overhead.json  (keys merged in)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]
sys.path.insert(0, str(REPO / "operator"))

sys.path.insert(0, str(REPO))

from bench.serving_stacks import (  # noqa: E402
    KNOWN_STACKS,
    MODEL_NAME,
    STACKS,
    Running,
    cpu_by_role,
    start_ray_stack,
    start_vllm,
    stream_chat,
)
from rayleigh_serving.ingress import DEFAULT_INGRESS  # noqa: E402

__all__ = ["MODEL_NAME", "Running", "start_ray_stack", "start_vllm"]


@dataclass
class Figures:
    tps_c1: float
    tps_c16: float
    ttft_ms: list[float] = field(default_factory=list)
    # CPU milliseconds per generated token during the c=16 phase, by role (engine, replica, proxy, ...).
    cpu_ms_per_token_c16: dict[str, float] = field(default_factory=dict)


async def _throughput(
    url: str,
    concurrency: int,
    requests_per_worker: int,
    budget_s: float,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> tuple[float, dict[str, float]]:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await stream_chat(client, url, 8)  # warm the connection pool and the engine
        deadline = time.monotonic() + budget_s
        total = 0

        async def worker() -> None:
            nonlocal total
            for _ in range(requests_per_worker):
                if time.monotonic() > deadline:
                    return
                _, n = await stream_chat(client, url, 64)
                total += n

        before = cpu() if cpu else {}
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = cpu() if cpu else {}
        per_token = {k: round(1000 * (after[k] - before.get(k, 0.0)) / max(total, 1), 3) for k in after}
        return total / elapsed, per_token


async def _ttft(url: str, n: int, budget_s: float) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):
            await stream_chat(client, url, 1)
        out = []
        deadline = time.monotonic() + budget_s
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            first, _ = await stream_chat(client, url, 1)
            out.append(first * 1000)
        return out


def measure(running: Running, quick: bool) -> Figures:
    url = running.base_url
    c1_requests = 4 if quick else 10
    c16_per_worker = 2 if quick else 5
    ttft_n = 30 if quick else 100
    tps_c1, _ = asyncio.run(_throughput(url, 1, c1_requests, 120))
    tps_c16, cpu = asyncio.run(_throughput(url, 16, c16_per_worker, 180, lambda: cpu_by_role(running.pids())))
    ttft = asyncio.run(_ttft(url, ttft_n, 60))
    return Figures(tps_c1, tps_c16, ttft, cpu)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def _results(stacks: list[str], per_round: dict[str, list[Figures]], startup: dict[str, list[float]]) -> dict[str, Any]:
    """Flat figures per stack, ratios against vLLM of the same round, and the `rayleigh_*` copy of the
    default ingress variant (the keys earlier runs had)."""

    def med(name: str, fn: Callable[[Figures], float]) -> float:
        return statistics.median(fn(f) for f in per_round[name])

    out: dict[str, Any] = {}
    for name in stacks:
        key = name.replace(":", "_ms")
        out[f"{key}_tokens_per_s_c1"] = round(med(name, lambda f: f.tps_c1), 2)
        out[f"{key}_tokens_per_s_c16"] = round(med(name, lambda f: f.tps_c16), 2)
        out[f"{key}_ttft_p50_ms"] = round(med(name, lambda f: pct(f.ttft_ms, 0.5)), 2)
        out[f"{key}_ttft_p99_ms"] = round(med(name, lambda f: pct(f.ttft_ms, 0.99)), 2)
        out[f"{key}_startup_s"] = round(statistics.median(startup[name]), 1)
        out[f"{key}_start_to_first_answer_s"] = out[f"{key}_startup_s"]
        roles = sorted({r for f in per_round[name] for r in f.cpu_ms_per_token_c16})
        out[f"{key}_cpu_ms_per_token_c16"] = {
            r: round(statistics.median(f.cpu_ms_per_token_c16.get(r, 0.0) for f in per_round[name]), 3) for r in roles
        }
        if "vllm" not in stacks or name == "vllm":
            continue
        prefix = "stock_ray_" if name == "stock" else f"{key}_"
        for c in ("c1", "c16"):
            ratios = [
                getattr(x, f"tps_{c}") / getattr(v, f"tps_{c}")
                for x, v in zip(per_round[name], per_round["vllm"], strict=True)
            ]
            out[f"{prefix}throughput_ratio_{c}"] = round(statistics.median(ratios), 3)
        for q, qkey in ((0.5, "p50"), (0.99, "p99")):
            added = [
                pct(x.ttft_ms, q) - pct(v.ttft_ms, q) for x, v in zip(per_round[name], per_round["vllm"], strict=True)
            ]
            out[f"{prefix}ttft_added_{qkey}_ms"] = round(statistics.median(added), 2)
        starts = [a / b for a, b in zip(startup[name], startup["vllm"], strict=True)]
        out[f"{prefix}start_to_first_answer_ratio"] = round(statistics.median(starts), 2)
    default = f"rayleigh_{DEFAULT_INGRESS}"
    if default in stacks:
        out["rayleigh_ingress"] = DEFAULT_INGRESS
        for k in list(out):
            if k.startswith(default + "_"):
                rest = k[len(default) + 1 :]
                out[f"rayleigh_{rest}"] = out[k]
                if any(rest.startswith(p) for p in ("throughput_ratio", "ttft_added", "start_to_first_answer_ratio")):
                    out[rest] = out[k]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 round, few requests")
    ap.add_argument("--model", choices=("tiny", "medium"), default=None, help="default: medium (quick: tiny)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="merge the figures into this flat JSON object")
    ap.add_argument("--stacks", default=",".join(STACKS), help=f"comma-separated subset of {','.join(KNOWN_STACKS)}")
    args = ap.parse_args()
    from rayleigh_serving.tiny_model import ensure_tiny_model

    size = args.model or ("tiny" if args.quick else "medium")
    suffix = "_tiny" if size == "tiny" else ""
    model_dir = ensure_tiny_model(REPO / ".cache" / "models" / f"{size}-qwen", size=size)
    rounds = args.rounds or (1 if args.quick else 3)
    stacks = [s for s in args.stacks.split(",") if s]
    logs = Path(tempfile.mkdtemp(prefix="rayleigh-bench-"))
    load_start = os.getloadavg()
    print(f"model: {size} ({model_dir}); rounds: {rounds}; logs: {logs}; load {load_start}", flush=True)

    per_round: dict[str, list[Figures]] = {s: [] for s in stacks}
    startup: dict[str, list[float]] = {s: [] for s in stacks}
    for rnd in range(rounds):
        order = stacks[rnd % len(stacks) :] + stacks[: rnd % len(stacks)]
        for name in order:
            log = logs / f"{name.replace(':', '-')}-{rnd}.log"
            running = start_vllm(model_dir, log) if name == "vllm" else start_ray_stack(name, model_dir, log)
            try:
                figs = measure(running, args.quick)
            finally:
                running.stop()
            per_round[name].append(figs)
            startup[name].append(running.startup_s)
            print(
                f"round {rnd + 1} {name:<17} start {running.startup_s:5.1f} s  tok/s c1 {figs.tps_c1:7.1f}  "
                f"c16 {figs.tps_c16:7.1f}  ttft p50 {pct(figs.ttft_ms, 0.5):6.1f} ms "
                f"p99 {pct(figs.ttft_ms, 0.99):6.1f} ms  load {os.getloadavg()[0]:.1f}  "
                f"cpu ms/token c16 {figs.cpu_ms_per_token_c16}",
                flush=True,
            )
            time.sleep(3)  # let the machine settle between stacks
        # Each finished round, with the raw figures, in case a long run has to be cut short.
        partial = {"rounds_done": rnd + 1, **_results(stacks, per_round, startup)}
        partial["per_round"] = {k: [dataclasses.asdict(f) for f in v] for k, v in per_round.items()}
        partial["startup_per_round"] = startup
        partial["load_average_now"] = os.getloadavg()
        (logs / "partial.json").write_text(json.dumps(partial, indent=1))
        print(f"round {rnd + 1} figures so far: {logs / 'partial.json'}", flush=True)

    result: dict[str, Any] = {"quick": args.quick, "model": size, "rounds": rounds}
    result.update(_results(stacks, per_round, startup))
    result["load_average_start"] = [round(x, 2) for x in load_start]
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    import ray
    import vllm

    result["ray_version"] = ray.__version__
    result["vllm_version"] = vllm.__version__
    result["python"] = sys.version.split()[0]
    result["cpus"] = os.cpu_count()

    print()
    print(f"{'stack':<18}{'tok/s c1':>10}{'tok/s c16':>11}{'TTFT p50':>10}{'TTFT p99':>10}{'start s':>9}")
    for name in stacks:
        key = name.replace(":", "_ms")
        print(
            f"{name:<18}{result[f'{key}_tokens_per_s_c1']:>10.1f}{result[f'{key}_tokens_per_s_c16']:>11.1f}"
            f"{result[f'{key}_ttft_p50_ms']:>10.1f}{result[f'{key}_ttft_p99_ms']:>10.1f}"
            f"{result[f'{key}_startup_s']:>9.1f}"
        )
    result = {f"{k}{suffix}": v for k, v in result.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        merged = json.loads(args.json.read_text()) if args.json.exists() else {}
        merged.update(result)
        args.json.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    keys = [
        "throughput_ratio_c16",
        "throughput_ratio_c1",
        "ttft_added_p50_ms",
        "ttft_added_p99_ms",
        "stock_ray_throughput_ratio_c16",
        "stock_ray_throughput_ratio_c1",
        "stock_ray_ttft_added_p50_ms",
        "start_to_first_answer_ratio",
    ]
    print("summary: " + " ".join(f"{k}{suffix}={result[k + suffix]}" for k in keys if k + suffix in result))


if __name__ == "__main__":
    main()

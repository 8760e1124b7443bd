"""What serving through Ray Serve costs, against vLLM's own OpenAI server, on one machine and one run.

Three stacks serve the same random Qwen2 model with the same engine settings:
  vllm      `python -m vllm.entrypoints.openai.api_server` (the floor: the engine's own server)
  stock     Ray Serve LLM's `build_openai_app` with default settings (what a KubeRay user runs)
  rayleigh  Rayleigh's Serve application, as `rayleigh up` / the operator configure it

For each stack, in alternating rounds (each round starts and stops every stack, rotating the order):
streaming chat with a fixed prompt, `ignore_eos`, 64 tokens per request; tokens/s at concurrency 1
and 16; time to first chunk with max_tokens 1 at concurrency 1. Medians over rounds; ratios against
vLLM of the same round. Every load loop is bounded in count and time; loopback only.

  .venv/bin/python bench/serving_overhead.py                # full: medium model, 3 rounds
  .venv/bin/python bench/serving_overhead.py --quick        # tiny model, 1 round, few requests
  .venv/bin/python bench/serving_overhead.py --json bench/results/serving_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]
sys.path.insert(0, str(REPO / "operator"))

from rayleigh_serving.local import LocalRay, free_port, http_json  # noqa: E402

MODEL_NAME = "bench"
PROMPT = (
    "You are a helpful assistant. Explain, in plain words and with one short example, why the sky "
    "looks blue during the day and red at sunset, and what Rayleigh scattering has to do with it."
)
MAX_MODEL_LEN = 512
ENGINE = {
    "dtype": "float32",
    "max_model_len": MAX_MODEL_LEN,
    "enforce_eager": True,
    "gpu_memory_utilization": 0.2,
    "enable_prefix_caching": True,
}
STACKS = ("vllm", "stock", "rayleigh")


@dataclass
class Running:
    name: str
    base_url: str
    stop: Callable[[], None]
    startup_s: float


@dataclass
class Figures:
    tps_c1: float
    tps_c16: float
    ttft_ms: list[float] = field(default_factory=list)


def _wait_models(base_url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            http_json("GET", f"{base_url}/v1/models", timeout=5)
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            http_json("POST", f"{base_url}/v1/chat/completions", body, timeout=60)
            return
        except (urllib.error.URLError, OSError, ValueError):
            time.sleep(0.5)
    raise TimeoutError(f"{base_url} not answering")


def start_vllm(model_dir: Path, log: Path) -> Running:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        str(ENGINE["dtype"]),
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--gpu-memory-utilization",
        str(ENGINE["gpu_memory_utilization"]),
        "--enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]
    start = time.monotonic()
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop() -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=20)
                return
            except subprocess.TimeoutExpired:
                continue

    url = f"http://127.0.0.1:{port}"
    try:
        _wait_models(url, time.monotonic() + 600, proc)
    except BaseException:
        stop()
        raise
    return Running("vllm", url, stop, time.monotonic() - start)


def _stock_config(model_dir: Path) -> dict[str, Any]:
    llm_config = {
        "model_loading_config": {"model_id": MODEL_NAME, "model_source": str(model_dir)},
        "accelerator_config": {"kind": "cpu"},
        "engine_kwargs": {**ENGINE, "tensor_parallel_size": 1},
        "runtime_env": {"env_vars": {"VLLM_TARGET_DEVICE": "cpu"}},
    }
    return {
        "applications": [
            {
                "name": "stock",
                "route_prefix": "/",
                "import_path": "ray.serve.llm:build_openai_app",
                "args": {"llm_configs": [llm_config]},
            }
        ]
    }


def _rayleigh_config(model_dir: Path, interval_ms: float | None = None) -> dict[str, Any]:
    from rayleigh_api import ModelDeployment
    from rayleigh_serving.config import build_serve_config

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "bench"},
            "spec": {
                "model": {
                    "source": f"file://{model_dir}",
                    "servedModelName": MODEL_NAME,
                    "dtype": "float32",
                    "maxModelLen": MAX_MODEL_LEN,
                },
                "engine": {"gpuMemoryUtilization": 0.2, "enablePrefixCaching": True},
                "resources": {"gpus": 0},
                "serving": {} if interval_ms is None else {"streamBatchingIntervalMs": interval_ms},
            },
        }
    )
    return build_serve_config(md, local_base=REPO, app_name="rayleigh")


def start_ray_stack(name: str, model_dir: Path, log: Path) -> Running:
    """`stock`, `rayleigh`, or `rayleigh:MS` (Rayleigh with a stream batching interval of MS ms)."""
    tuned = name.startswith("rayleigh")
    interval = float(name.split(":", 1)[1]) if ":" in name else None
    ray = LocalRay(log=log, tuned=tuned)
    start = time.monotonic()
    ray.start()
    try:
        config = _rayleigh_config(model_dir, interval) if tuned else _stock_config(model_dir)
        ray.deploy(config)
        ray.wait_running(config["applications"][0]["name"], timeout=900)
        _wait_models(ray.base_url, time.monotonic() + 300)
    except BaseException:
        ray.stop()
        raise
    return Running(name, ray.base_url, ray.stop, time.monotonic() - start)


async def _stream(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, int]:
    """One streamed chat request: (seconds to the first data chunk, completion tokens)."""
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if first is None:
                first = time.perf_counter() - start
            payload = line[6:]
            if payload == "[DONE]":
                break
            usage = json.loads(payload).get("usage")
            if usage:
                tokens = int(usage["completion_tokens"])
    return (first if first is not None else float("nan")), tokens


async def _throughput(url: str, concurrency: int, requests_per_worker: int, budget_s: float) -> float:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await _stream(client, url, 8)  # warm the connection pool and the engine
        deadline = time.monotonic() + budget_s
        total = 0

        async def worker() -> None:
            nonlocal total
            for _ in range(requests_per_worker):
                if time.monotonic() > deadline:
                    return
                _, n = await _stream(client, url, 64)
                total += n

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - start)


async def _ttft(url: str, n: int, budget_s: float) -> list[float]:
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):
            await _stream(client, url, 1)
        out = []
        deadline = time.monotonic() + budget_s
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            first, _ = await _stream(client, url, 1)
            out.append(first * 1000)
        return out


def measure(url: str, quick: bool) -> Figures:
    c1_requests = 4 if quick else 10
    c16_per_worker = 2 if quick else 5
    ttft_n = 30 if quick else 100
    tps_c1 = asyncio.run(_throughput(url, 1, c1_requests, 120))
    tps_c16 = asyncio.run(_throughput(url, 16, c16_per_worker, 180))
    ttft = asyncio.run(_ttft(url, ttft_n, 60))
    return Figures(tps_c1, tps_c16, ttft)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 round, few requests")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as one flat JSON object")
    ap.add_argument("--stacks", default=",".join(STACKS), help="comma-separated subset of vllm,stock,rayleigh")
    args = ap.parse_args()
    from rayleigh_serving.tiny_model import ensure_tiny_model

    size = "tiny" if args.quick else "medium"
    model_dir = ensure_tiny_model(REPO / ".cache" / "models" / f"{size}-qwen", size=size)
    rounds = args.rounds or (1 if args.quick else 3)
    stacks = [s for s in args.stacks.split(",") if s]
    logs = Path(tempfile.mkdtemp(prefix="rayleigh-bench-"))
    print(f"model: {size} ({model_dir}); rounds: {rounds}; logs: {logs}", flush=True)

    per_round: dict[str, list[Figures]] = {s: [] for s in stacks}
    startup: dict[str, list[float]] = {s: [] for s in stacks}
    for rnd in range(rounds):
        order = stacks[rnd % len(stacks) :] + stacks[: rnd % len(stacks)]
        for name in order:
            log = logs / f"{name.replace(':', '-')}-{rnd}.log"
            running = start_vllm(model_dir, log) if name == "vllm" else start_ray_stack(name, model_dir, log)
            try:
                figs = measure(running.base_url, args.quick)
            finally:
                running.stop()
            per_round[name].append(figs)
            startup[name].append(running.startup_s)
            print(
                f"round {rnd + 1} {name:<9} start {running.startup_s:5.1f} s  tok/s c1 {figs.tps_c1:7.1f}  "
                f"c16 {figs.tps_c16:7.1f}  ttft p50 {pct(figs.ttft_ms, 0.5):6.1f} ms "
                f"p99 {pct(figs.ttft_ms, 0.99):6.1f} ms",
                flush=True,
            )
            time.sleep(3)  # let the machine settle between stacks

    def med(name: str, fn: Callable[[Figures], float]) -> float:
        return statistics.median(fn(f) for f in per_round[name])

    result: dict[str, Any] = {"quick": args.quick, "model": size, "rounds": rounds}
    for name in stacks:
        result[f"{name}_tokens_per_s_c1"] = round(med(name, lambda f: f.tps_c1), 2)
        result[f"{name}_tokens_per_s_c16"] = round(med(name, lambda f: f.tps_c16), 2)
        result[f"{name}_ttft_p50_ms"] = round(med(name, lambda f: pct(f.ttft_ms, 0.5)), 2)
        result[f"{name}_ttft_p99_ms"] = round(med(name, lambda f: pct(f.ttft_ms, 0.99)), 2)
        result[f"{name}_startup_s"] = round(statistics.median(startup[name]), 1)
    if "vllm" in stacks:
        for name, prefix in (("rayleigh", ""), ("stock", "stock_ray_")):
            if name not in stacks:
                continue
            for c in ("c1", "c16"):
                ratios = [
                    getattr(x, f"tps_{c}") / getattr(v, f"tps_{c}")
                    for x, v in zip(per_round[name], per_round["vllm"], strict=True)
                ]
                result[f"{prefix}throughput_ratio_{c}"] = round(statistics.median(ratios), 3)
            for q, key in ((0.5, "p50"), (0.99, "p99")):
                added = [
                    pct(x.ttft_ms, q) - pct(v.ttft_ms, q)
                    for x, v in zip(per_round[name], per_round["vllm"], strict=True)
                ]
                result[f"{prefix}ttft_added_{key}_ms"] = round(statistics.median(added), 2)
    import ray
    import vllm

    result["ray_version"] = ray.__version__
    result["vllm_version"] = vllm.__version__
    result["python"] = sys.version.split()[0]
    result["cpus"] = os.cpu_count()

    print()
    print(f"{'stack':<10}{'tok/s c1':>10}{'tok/s c16':>11}{'TTFT p50':>10}{'TTFT p99':>10}{'start s':>9}")
    for name in stacks:
        print(
            f"{name:<10}{result[f'{name}_tokens_per_s_c1']:>10.1f}{result[f'{name}_tokens_per_s_c16']:>11.1f}"
            f"{result[f'{name}_ttft_p50_ms']:>10.1f}{result[f'{name}_ttft_p99_ms']:>10.1f}"
            f"{result[f'{name}_startup_s']:>9.1f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    keys = [
        "throughput_ratio_c16",
        "throughput_ratio_c1",
        "ttft_added_p50_ms",
        "ttft_added_p99_ms",
        "stock_ray_throughput_ratio_c16",
        "stock_ray_throughput_ratio_c1",
        "stock_ray_ttft_added_p50_ms",
    ]
    print("summary: " + " ".join(f"{k}={result[k]}" for k in keys if k in result))


if __name__ == "__main__":
    main()

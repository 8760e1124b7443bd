"""Routing across replicas: Ray's default balancing, Ray's PrefixCacheAffinityRouter and Rayleigh's
prefix-aware routing, on two replicas of one model, in one run.

Every arm runs on its own fresh Ray head with Rayleigh's default Serve ingress (HAProxy; the balance
is a per-head setting, rayleigh_serving.ingress), deployed alone, with the real gateway (with
Redis) in front, so every arm pays the same front hops:
  default     Rayleigh's Serve app under Ray's default HAProxy balance (`leastconn`; what
              spec.routing least-loaded renders). Under HAProxy no Serve request router is consulted
              for Rayleigh's one-hop app: HAProxy sends each request straight to a replica
  ray_prefix  Ray Serve LLM's stock app (`build_openai_app`: OpenAiIngress -> LLMServer) with
              `ray.serve.llm.request_router.PrefixCacheAffinityRouter` on LLMServer, Ray's defaults.
              Ray's router needs the parsed request on a handle call, which the stock two-hop app gives
              it (docs/SERVING.md, "Routing across replicas")
  rayleigh    Rayleigh's Serve app with spec.routing defaults (prefix-aware, balanceFactor 1.25):
              HAProxy hashes the gateway's affinity key (consistent hashing with bounded loads)

Workloads, per arm:
  A  multi-turn chats: USERS users at once, each TURNS turns in a row; one long system prompt shared by
     all, histories growing by a question and a canned answer per turn. Each request asks for one
     token (non-streaming): its latency is the time to the first token. Prefix-cache hit rate from
     vLLM's own counters (ray_vllm_prefix_cache_hits_total / queries_total, the arm's replicas only).
  B  random unrelated prompts, CONCURRENCY at once, 32 tokens each (ignore_eos): completion tokens/s.
Rounds alternate the arms' order; figures are medians over rounds; every loop is bounded in count
and time; loopback only.

  .venv/bin/python bench/prefix_routing.py --quick          # tiny model, 1 round
  .venv/bin/python bench/prefix_routing.py --json bench/results/prefix_routing.json   # medium, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]
sys.path.insert(0, str(REPO))

from bench.serving_stacks import ENGINE, bench_spec  # noqa: E402
from rayleigh_api.routing import Routing  # noqa: E402
from rayleigh_gateway.keys import KeyStore, save_keys  # noqa: E402
from rayleigh_serving.local import LocalRay, free_port  # noqa: E402

MODEL = "bench"
ARMS = ("default", "ray_prefix", "rayleigh")
# Each arm's head: HAProxy's balance from spec.routing (rayleigh_serving.ingress.haproxy_balance).
ARM_ROUTING = {
    "default": Routing(strategy="least-loaded"),
    "ray_prefix": Routing(strategy="least-loaded"),
    "rayleigh": Routing(),
}
INGRESS = "haproxy"
WORDS = [
    "bread",
    "river",
    "stone",
    "cloud",
    "green",
    "seven",
    "market",
    "window",
    "yellow",
    "orange",
    "piano",
    "silver",
    "garden",
    "winter",
]
COUNTER = re.compile(r'^(ray_vllm_prefix_cache_(?:hits|queries)_total)\{[^}]*ReplicaId="([^"]*)"[^}]*\} (\S+)$')


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def engine_spec(model_dir: Path, max_len: int, replicas: int) -> dict[str, Any]:
    doc = bench_spec(model_dir, model=MODEL, replicas=replicas)
    doc["spec"]["model"]["maxModelLen"] = max_len
    return doc


def arm_config(arm: str, model_dir: Path, max_len: int) -> dict[str, Any]:
    """The Serve config of one arm (one application named after it, at route /)."""
    from rayleigh_api import ModelDeployment
    from rayleigh_serving.config import build_serve_config

    if arm == "ray_prefix":
        llm_config = {
            "model_loading_config": {"model_id": MODEL, "model_source": str(model_dir)},
            "accelerator_config": {"kind": "cpu"},
            "engine_kwargs": {**ENGINE, "max_model_len": max_len, "tensor_parallel_size": 1},
            "log_engine_metrics": True,
            "runtime_env": {"env_vars": {"VLLM_TARGET_DEVICE": "cpu"}},
            "deployment_config": {
                "num_replicas": 2,
                "request_router_config": {
                    "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter"
                },
            },
        }
        app = {"name": arm, "route_prefix": "/", "import_path": "ray.serve.llm:build_openai_app"}
        return {"applications": [{**app, "args": {"llm_configs": [llm_config]}}]}
    md = ModelDeployment.model_validate(engine_spec(model_dir, max_len, 2))
    return build_serve_config(md, local_base=REPO, app_name=arm, ingress=INGRESS)


def replica_ids(ray: LocalRay, app: str) -> set[str]:
    deployments = (ray.applications().get(app) or {}).get("deployments") or {}
    return {str(r["replica_id"]).rsplit("#", 1)[-1] for d in deployments.values() for r in d.get("replicas", [])}


def scrape(ray: LocalRay) -> str:
    with urllib.request.urlopen(ray.metrics_url, timeout=10) as r:
        return str(r.read().decode())


def cache_counters(ray: LocalRay, ids: set[str]) -> dict[str, dict[str, float]]:
    """{replica: {hits, queries}} (tokens) for the replicas `ids`."""
    out: dict[str, dict[str, float]] = {}
    for line in scrape(ray).splitlines():
        m = COUNTER.match(line)
        if m and m.group(2) in ids:
            kind = "hits" if "hits" in m.group(1) else "queries"
            out.setdefault(m.group(2), {"hits": 0.0, "queries": 0.0})[kind] += float(m.group(3))
    return out


def settled(ray: LocalRay, ids: set[str], before: dict[str, dict[str, float]], at_least: float) -> dict[str, Any]:
    """Counter deltas once Ray's export has caught up (two equal reads, at most 30 s)."""
    last: dict[str, dict[str, float]] | None = None
    deadline = time.monotonic() + 30
    while True:
        now = cache_counters(ray, ids)
        delta = {
            rid: {k: v[k] - before.get(rid, {}).get(k, 0.0) for k in ("hits", "queries")} for rid, v in now.items()
        }
        total_q = sum(d["queries"] for d in delta.values())
        if (total_q >= at_least and now == last) or time.monotonic() > deadline:
            return delta
        last = now
        time.sleep(2.5)


async def chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool) -> Any:
    body: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    if ignore_eos:
        body["ignore_eos"] = True
    r = await client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return r.json()


async def workload_a(client: httpx.AsyncClient, p: dict[str, Any], seed: int) -> tuple[list[float], int]:
    """(per-request latency in ms, prompt tokens sent)."""
    rng = random.Random(seed)
    system = {"role": "system", "content": f"Session {seed}. " + words(rng, p["system_words"])}
    latencies: list[float] = []
    prompt_tokens = 0
    deadline = time.monotonic() + p["budget_s"]

    async def user(u: int) -> None:
        nonlocal prompt_tokens
        urng = random.Random(seed * 1000 + u)
        messages = [system]
        for turn in range(p["turns"]):
            if time.monotonic() > deadline:
                return
            messages.append({"role": "user", "content": f"User {u} turn {turn}: " + words(urng, p["turn_words"])})
            t = time.perf_counter()
            answer = await chat(client, messages, 1, False)
            latencies.append((time.perf_counter() - t) * 1000)
            prompt_tokens += int(answer["usage"]["prompt_tokens"])
            messages.append({"role": "assistant", "content": words(urng, p["turn_words"])})

    await asyncio.gather(*(user(u) for u in range(p["users"])))
    return latencies, prompt_tokens


async def workload_b(client: httpx.AsyncClient, p: dict[str, Any], seed: int) -> float:
    """Completion tokens per second over random unrelated prompts."""
    rng = random.Random(seed)
    prompts = [words(rng, p["b_words"]) + f" #{i}" for i in range(p["b_requests"])]
    queue = list(reversed(prompts))
    tokens = 0
    deadline = time.monotonic() + p["budget_s"]

    async def worker() -> None:
        nonlocal tokens
        while queue and time.monotonic() < deadline:
            answer = await chat(client, [{"role": "user", "content": queue.pop()}], 32, True)
            tokens += int(answer["usage"]["completion_tokens"])

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(p["b_concurrency"])))
    return tokens / (time.perf_counter() - start)


async def run_arm(gateway: str, key: str, ray: LocalRay, arm: str, p: dict[str, Any], seed: int) -> dict[str, Any]:
    ids = replica_ids(ray, arm)
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=gateway, headers=headers, timeout=300, limits=limits) as client:
        warm = random.Random(seed + 7)
        await asyncio.gather(*(chat(client, [{"role": "user", "content": words(warm, 20)}], 2, True) for _ in range(6)))
        before = cache_counters(ray, ids)
        lat, prompt_tokens = await workload_a(client, p, seed)
        delta = settled(ray, ids, before, 0.9 * prompt_tokens)
        tps = await workload_b(client, p, seed + 1)
    hits = sum(d["hits"] for d in delta.values())
    queries = sum(d["queries"] for d in delta.values())
    return {
        "ttft_ms": lat,
        "hit_rate": hits / queries if queries else float("nan"),
        "queries_per_replica": sorted(round(d["queries"]) for d in delta.values()),
        "tokens_per_s": tps,
    }


def start_gateway(workdir: Path, backend: str) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    env = {**os.environ, "PYTHONPATH": ":".join(str(REPO / d) for d in (".", "api", "gateway", "serving", "operator"))}
    redis_port, gw_port = free_port(), free_port()
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    procs = []
    log = (workdir / "gateway.log").open("wb")
    procs.append(
        subprocess.Popen(
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    store = KeyStore.new()
    key, _ = store.create("bench")
    save_keys(store, workdir / "keys.yaml")
    route = {
        "name": "bench",
        "backend": backend,
        "models": [MODEL],
        "rateLimits": {"requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000},
    }
    (workdir / "routes.json").write_text(json.dumps({"routes": [route]}))
    cmd = [sys.executable, "-m", "rayleigh_gateway", "gateway", "--config", str(workdir / "routes.json")]
    cmd += ["--keys", str(workdir / "keys.yaml"), "--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
    cmd += ["--host", "127.0.0.1", "--port", str(gw_port), "--workers", "1", "--metrics-port", str(free_port())]
    procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env))
    url = f"http://127.0.0.1:{gw_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/healthz", timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return procs, url, key


def stop_procs(procs: list[subprocess.Popen[bytes]]) -> None:
    import signal

    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model, 1 round, fewer users and requests")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, quick 1)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as one flat JSON object")
    args = ap.parse_args()
    from rayleigh_serving.tiny_model import ensure_tiny_model

    size = "tiny" if args.quick else "medium"
    model_dir = ensure_tiny_model(REPO / ".cache" / "models" / f"{size}-qwen", size=size)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.quick:
        p = {"users": 4, "turns": 4, "system_words": 120, "turn_words": 12, "b_requests": 16, "b_concurrency": 8}
    else:
        p = {"users": 6, "turns": 6, "system_words": 170, "turn_words": 15, "b_requests": 40, "b_concurrency": 8}
    # About 3.5 tokens a word with the bench tokenizer: a ~600-token system prompt, ~50 per message.
    p.update(b_words=40, budget_s=240)
    max_len = 2048
    logs = Path(tempfile.mkdtemp(prefix="rayleigh-prefix-bench-"))
    load_start = os.getloadavg()
    print(f"model {size}; rounds {rounds}; load average {load_start[0]:.2f}; logs {logs}", flush=True)
    per_arm: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
    for rnd in range(rounds):
        order = ARMS[rnd % len(ARMS) :] + ARMS[: rnd % len(ARMS)]
        for arm in order:
            work = logs / f"round{rnd + 1}-{arm}"
            work.mkdir()
            ray = LocalRay(
                log=work / "ray.log",
                num_cpus=8,
                env={"RAY_metrics_report_interval_ms": "1000"},
                ingress=INGRESS,
                routing=ARM_ROUTING[arm],
            )
            procs: list[subprocess.Popen[bytes]] = []
            try:
                t = time.monotonic()
                ray.start()
                procs, gateway, key = start_gateway(work, ray.base_url)
                ray.deploy(arm_config(arm, model_dir, max_len))
                ray.wait_running(arm, timeout=1200)
                start_s = time.monotonic() - t
                res = asyncio.run(run_arm(gateway, key, ray, arm, p, seed=100 * rnd + 1))
            finally:
                stop_procs(procs)
                ray.stop()
            per_arm[arm].append(res)
            print(
                f"round {rnd + 1} {arm:<10} start {start_s:5.0f} s  A: ttft p50 {pct(res['ttft_ms'], 0.5):7.1f} ms "
                f"p90 {pct(res['ttft_ms'], 0.9):7.1f} ms  hit rate {res['hit_rate']:.3f} "
                f"queries/replica {res['queries_per_replica']}  B: {res['tokens_per_s']:7.1f} tok/s",
                flush=True,
            )

    def med(arm: str, fn: Any) -> float:
        return round(statistics.median(fn(r) for r in per_arm[arm]), 3)

    result: dict[str, Any] = {"quick": args.quick, "model": size, "rounds": rounds, "workload": p, "ingress": INGRESS}
    for arm in ARMS:
        result[f"ttft_p50_ms_{arm}_a"] = med(arm, lambda r: pct(r["ttft_ms"], 0.5))
        result[f"ttft_p90_ms_{arm}_a"] = med(arm, lambda r: pct(r["ttft_ms"], 0.9))
        result[f"hit_rate_{arm}_a"] = med(arm, lambda r: r["hit_rate"])
        result[f"tokens_per_s_{arm}_b"] = med(arm, lambda r: r["tokens_per_s"])
        result[f"queries_per_replica_{arm}_a"] = [r["queries_per_replica"] for r in per_arm[arm]]
    for other in ("default", "ray_prefix"):
        result[f"ttft_p50_ratio_rayleigh_vs_{other}_a"] = round(
            statistics.median(
                pct(r["ttft_ms"], 0.5) / pct(o["ttft_ms"], 0.5)
                for r, o in zip(per_arm["rayleigh"], per_arm[other], strict=True)
            ),
            3,
        )
    result["tokens_per_s_ratio_rayleigh_vs_default_b"] = round(
        statistics.median(
            r["tokens_per_s"] / o["tokens_per_s"] for r, o in zip(per_arm["rayleigh"], per_arm["default"], strict=True)
        ),
        3,
    )
    import ray as ray_pkg
    import vllm

    result.update(
        ray_version=ray_pkg.__version__,
        vllm_version=vllm.__version__,
        python=sys.version.split()[0],
        cpus=os.cpu_count(),
        load_average_start=round(load_start[0], 2),
        load_average_end=round(os.getloadavg()[0], 2),
        shared_machine=load_start[0] > 1.5,
    )
    print()
    print(f"{'arm':<11}{'TTFT p50 A':>12}{'TTFT p90 A':>12}{'hit rate A':>12}{'tok/s B':>10}")
    for arm in ARMS:
        print(
            f"{arm:<11}{result[f'ttft_p50_ms_{arm}_a']:>12.1f}{result[f'ttft_p90_ms_{arm}_a']:>12.1f}"
            f"{result[f'hit_rate_{arm}_a']:>12.3f}{result[f'tokens_per_s_{arm}_b']:>10.1f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    keys = [
        "ttft_p50_ratio_rayleigh_vs_default_a",
        "ttft_p50_ratio_rayleigh_vs_ray_prefix_a",
        "hit_rate_default_a",
        "hit_rate_ray_prefix_a",
        "hit_rate_rayleigh_a",
        "tokens_per_s_ratio_rayleigh_vs_default_b",
    ]
    print("summary: " + " ".join(f"{k}={result[k]}" for k in keys))


if __name__ == "__main__":
    main()

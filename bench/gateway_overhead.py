"""What the Rayleigh gateway adds over a direct call, against the floor and LiteLLM, in one run.

Four paths to the same fast local OpenAI-compatible upstream (bench.devupstream):
  direct    the upstream itself
  floor     bench/gateway_floor.py: a bare raw-ASGI pass-through (uvicorn+uvloop+httptools, aiohttp)
  rayleigh  `rayleigh gateway` with API-key auth, Redis rate limits (requests and tokens, admitted
            from shares leased from Redis: no Redis round trip per request), metrics and the
            JSON audit log all on
  litellm   LiteLLM proxy (`litellm[proxy]` in its own venv), master key, no database, one worker

Each proxy is one worker process pinned with the upstream to CPU 0 (taskset); the load generator
(this process, aiohttp client) and Redis are pinned to CPU 1. Paths are measured in alternating
rounds (order rotated each round) and medians over rounds are reported, with ratios taken within
each round. Per round and path: latency at concurrency 1 (p50/p99), requests/s at concurrency 64
(non-streaming), streaming time to first byte at concurrency 8. Every loop is bounded in count
and time; loopback only. The Redis script calls made during the rayleigh path are counted
(INFO commandstats) and reported per request.

  .venv/bin/python bench/gateway_overhead.py                 # full: 5 rounds
  .venv/bin/python bench/gateway_overhead.py --quick         # 1 short round (< 60 s)
  .venv/bin/python bench/gateway_overhead.py --json bench/results/gateway_overhead.json

LiteLLM is looked up in $LITELLM_VENV or .cache/litellm-venv; if it cannot run, its figures are
null and `litellm_error` says why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]

from rayleigh_gateway.keys import KeyStore, save_keys  # noqa: E402

PROXY_CPU = "0"
LOAD_CPU = 1
MODEL = "bench-model"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
).encode()
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True}
).encode()
LITELLM_KEY = "sk-bench-" + "b" * 40
PATHS = ("direct", "floor", "rayleigh", "litellm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def spawn(name: str, cmd: list[str], cpu: str, port: int, workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    full = ["taskset", "-c", cpu, *cmd] if shutil.which("taskset") else cmd
    with log.open("wb") as out:
        proc = subprocess.Popen(
            full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    return Proc(name, proc, f"http://127.0.0.1:{port}", log)


async def wait_ready(p: Proc, path: str, headers: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode}: {p.log.read_text()[-2000:]}")
            try:
                async with session.post(p.url + path, data=BODY, headers=headers) as resp:
                    await resp.read()
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"{p.name} not ready in {timeout}s: {p.log.read_text()[-2000:]}")


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    redis_port: int | None = None  # count this path's Redis script calls


def redis_script_calls(port: int) -> int:
    """EVALSHA calls Redis has answered so far (INFO commandstats)."""
    import redis

    stats = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@dataclass
class Figures:
    p50_ms: float
    p99_ms: float
    rps: float
    ttfb_ms: float
    samples: dict[str, int] = field(default_factory=dict)


async def latency_c1(session: aiohttp.ClientSession, t: Target, count: int, seconds: float) -> list[float]:
    out: list[float] = []
    url = t.url + "/v1/chat/completions"
    deadline = time.perf_counter() + seconds
    for _ in range(count):
        start = time.perf_counter()
        async with session.post(url, data=BODY, headers=t.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{t.name}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        end = time.perf_counter()
        out.append((end - start) * 1000)
        if end > deadline:
            break
    return out


async def throughput(
    session: aiohttp.ClientSession, t: Target, concurrency: int, count: int, seconds: float
) -> tuple[float, int]:
    url = t.url + "/v1/chat/completions"
    done = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        while done < count and time.perf_counter() < deadline:
            async with session.post(url, data=BODY, headers=t.headers) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 1
                else:
                    errors += 1
                    if errors > 10:
                        raise RuntimeError(f"{t.name}: HTTP {resp.status} under load")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start), done + errors


async def stream_ttfb(
    session: aiohttp.ClientSession, t: Target, concurrency: int, count: int, seconds: float
) -> list[float]:
    url = t.url + "/v1/chat/completions"
    out: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while len(out) < count and time.perf_counter() < deadline:
            start = time.perf_counter()
            async with session.post(url, data=STREAM_BODY, headers=t.headers) as resp:
                first = await resp.content.readany()
                ttfb = (time.perf_counter() - start) * 1000
                if resp.status != 200 or not first:
                    raise RuntimeError(f"{t.name}: stream HTTP {resp.status}")
                async for _ in resp.content.iter_any():
                    pass
            out.append(ttfb)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(t: Target, quick: bool) -> Figures:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        calls = redis_script_calls(t.redis_port) if t.redis_port else 0
        warm = await latency_c1(session, t, 100 if quick else 300, 2.0)  # warm the pools
        lat = await latency_c1(session, t, 300 if quick else 2000, 1.5 if quick else 5.0)
        _, warm_sent = await throughput(session, t, 64, 200, 1.0)
        rps, sent = await throughput(session, t, 64, 100_000, 1.0 if quick else 3.0)
        ttfb = await stream_ttfb(session, t, 8, 80 if quick else 400, 0.8 if quick else 3.0)
        requests = len(warm) + len(lat) + warm_sent + sent + len(ttfb)
        if t.redis_port:
            await asyncio.sleep(0.3)  # the last usage flush (every 100 ms) lands
            calls = redis_script_calls(t.redis_port) - calls
    return Figures(
        p50_ms=statistics.median(lat),
        p99_ms=pct(lat, 0.99),
        rps=rps,
        ttfb_ms=statistics.median(ttfb),
        samples={"c1": len(lat), "stream": len(ttfb), "requests": requests, "redis_calls": calls},
    )


def litellm_python() -> Path | None:
    venv = Path(os.environ.get("LITELLM_VENV", REPO / ".cache" / "litellm-venv"))
    exe = venv / "bin" / "litellm"
    return exe if exe.exists() else None


def version_of(python: Path, package: str) -> str | None:
    try:
        out = subprocess.run(
            [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def start_all(workdir: Path, quick: bool) -> tuple[list[Proc], dict[str, Target], str | None, dict[str, Any]]:
    py = sys.executable
    procs: list[Proc] = []
    errors: str | None = None
    info: dict[str, Any] = {}
    env_py = {"PYTHONPATH": ":".join(str(REPO / d) for d in (".", "api", "gateway", "serving", "operator"))}

    up_port = free_port()
    upstream = spawn(
        "upstream",
        [py, "-m", "bench.devupstream", "--port", str(up_port)],
        PROXY_CPU,
        up_port,
        workdir,
        env_py,
    )
    procs.append(upstream)

    redis_port = free_port()
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    procs.append(
        spawn(
            "redis",
            [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            str(LOAD_CPU),
            redis_port,
            workdir,
        )
    )

    floor_port = free_port()
    procs.append(
        spawn(
            "floor",
            [
                py,
                "-m",
                "uvicorn",
                "gateway_floor:app",
                "--app-dir",
                str(REPO / "bench"),
                "--host",
                "127.0.0.1",
                "--port",
                str(floor_port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            PROXY_CPU,
            floor_port,
            workdir,
            {"FLOOR_UPSTREAM": upstream.url},
        )
    )

    store = KeyStore.new()
    key, _ = store.create("bench")
    save_keys(store, workdir / "keys.yaml")
    route = {
        "name": "bench",
        "backend": upstream.url,
        "models": [MODEL],
        "rateLimits": {"requestsPerMinute": 10_000_000, "tokensPerMinute": 1_000_000_000},
    }
    (workdir / "routes.json").write_text(json.dumps({"routes": [route]}))
    gw_port = free_port()
    rayleigh = spawn(
        "rayleigh",
        [
            py,
            "-m",
            "rayleigh_gateway",
            "gateway",
            "--config",
            str(workdir / "routes.json"),
            "--keys",
            str(workdir / "keys.yaml"),
            "--redis-url",
            f"redis://127.0.0.1:{redis_port}/0",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--workers",
            "1",
            "--metrics-port",
            str(free_port()),
            "--log-level",
            "warning",
        ],
        PROXY_CPU,
        gw_port,
        workdir,
        env_py,
    )
    procs.append(rayleigh)

    targets = {
        "direct": Target("direct", upstream.url, {"Authorization": f"Bearer {key}"}),
        "floor": Target("floor", procs[2].url, {"Authorization": f"Bearer {key}"}),
        "rayleigh": Target("rayleigh", rayleigh.url, {"Authorization": f"Bearer {key}"}, redis_port),
    }

    exe = litellm_python()
    if exe is None:
        errors = "LiteLLM not installed: pip install 'litellm[proxy]' into .cache/litellm-venv or set LITELLM_VENV"
    else:
        info["litellm_version"] = version_of(exe.parent / "python", "litellm")
        ll_port = free_port()
        (workdir / "litellm.yaml").write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "litellm_params": {
                                "model": f"openai/{MODEL}",
                                "api_base": upstream.url + "/v1",
                                "api_key": "unused",
                            },
                        }
                    ],
                    "general_settings": {"master_key": LITELLM_KEY},
                    "litellm_settings": {"telemetry": False, "drop_params": True},
                }
            )
        )
        procs.append(
            spawn(
                "litellm",
                [
                    str(exe),
                    "--config",
                    str(workdir / "litellm.yaml"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(ll_port),
                    "--num_workers",
                    "1",
                ],
                PROXY_CPU,
                ll_port,
                workdir,
                {
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                    "PYTHONPATH": "",
                },
            )
        )
        targets["litellm"] = Target("litellm", procs[-1].url, {"Authorization": f"Bearer {LITELLM_KEY}"})
    return procs, targets, errors, info


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="rayleigh-bench-gw-"))
    procs, targets, litellm_error, info = start_all(workdir, args.quick)
    rounds: list[dict[str, Figures]] = []
    try:
        by_name = {p.name: p for p in procs}
        for name, t in list(targets.items()):
            try:
                await wait_ready(
                    by_name.get(name, by_name["upstream"]),
                    "/v1/chat/completions",
                    t.headers,
                    90 if name == "litellm" else 30,
                )
            except RuntimeError as exc:
                if name != "litellm":
                    raise
                litellm_error = f"LiteLLM did not start: {str(exc)[:500]}"
                del targets[name]
        n_rounds = 1 if args.quick else args.rounds
        order = [p for p in PATHS if p in targets]
        for r in range(n_rounds):
            figures: dict[str, Figures] = {}
            rotated = order[r % len(order) :] + order[: r % len(order)]
            for name in rotated:
                try:
                    figures[name] = await measure(targets[name], args.quick)
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                    if name != "litellm":
                        raise
                    litellm_error = f"LiteLLM failed under load: {str(exc)[:500]}"
                    del targets[name]
                    order.remove(name)
            rounds.append(figures)
            print(
                f"round {r + 1}/{n_rounds}: "
                + ", ".join(f"{n} p50 {f.p50_ms:.3f} ms rps {f.rps:.0f}" for n, f in figures.items()),
                file=sys.stderr,
            )
    finally:
        for p in reversed(procs):
            p.stop()
    return summarize(rounds, litellm_error, info, args.quick, workdir)


def med(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(
    rounds: list[dict[str, Figures]], litellm_error: str | None, info: dict[str, Any], quick: bool, workdir: Path
) -> dict[str, Any]:
    def added(path: str, attr: str) -> list[float]:
        return [getattr(r[path], attr) - getattr(r["direct"], attr) for r in rounds if path in r]

    def per_round(path: str, attr: str) -> list[float]:
        return [getattr(r[path], attr) for r in rounds if path in r]

    has_ll = any("litellm" in r for r in rounds)
    out: dict[str, Any] = {
        "quick": quick,
        "rounds": len(rounds),
        "direct_p50_ms_c1": med(per_round("direct", "p50_ms")),
        "direct_rps": med(per_round("direct", "rps")),
        "direct_stream_ttfb_ms": med(per_round("direct", "ttfb_ms")),
        "added_p50_ms_c1": med(added("rayleigh", "p50_ms")),
        "added_p99_ms_c1": med(added("rayleigh", "p99_ms")),
        "floor_added_p50_ms_c1": med(added("floor", "p50_ms")),
        "floor_added_p99_ms_c1": med(added("floor", "p99_ms")),
        "litellm_added_p50_ms_c1": med(added("litellm", "p50_ms")) if has_ll else None,
        "rps_per_worker": med(per_round("rayleigh", "rps")),
        "floor_rps_per_worker": med(per_round("floor", "rps")),
        "litellm_rps_per_worker": med(per_round("litellm", "rps")) if has_ll else None,
        "rps_ratio_vs_floor": med([r["rayleigh"].rps / r["floor"].rps for r in rounds]),
        "rps_ratio_vs_litellm": med([r["rayleigh"].rps / r["litellm"].rps for r in rounds if "litellm" in r])
        if has_ll
        else None,
        "stream_ttfb_added_ms": med(added("rayleigh", "ttfb_ms")),
        # Redis script calls (lease takes/refills, batched corrections and usage) per request.
        "redis_calls_per_request": round(
            statistics.median(
                [r["rayleigh"].samples["redis_calls"] / max(1, r["rayleigh"].samples["requests"]) for r in rounds]
            ),
            4,
        )
        if rounds
        else None,
        "floor_stream_ttfb_added_ms": med(added("floor", "ttfb_ms")),
        "litellm_stream_ttfb_added_ms": med(added("litellm", "ttfb_ms")) if has_ll else None,
        "litellm_error": litellm_error if not has_ll else None,
        "python": platform.python_version(),
        "uvicorn_version": importlib.metadata.version("uvicorn"),
        "aiohttp_version": importlib.metadata.version("aiohttp"),
        "redis_server": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2],
        **info,
        "cpus": os.cpu_count(),
        "pinning": f"proxies+upstream on CPU {PROXY_CPU}, load generator+redis on CPU {LOAD_CPU}",
        "logs": str(workdir),
    }
    a, f = out["added_p50_ms_c1"], out["floor_added_p50_ms_c1"]
    ratio_f, ratio_l = out["rps_ratio_vs_floor"], out["rps_ratio_vs_litellm"]
    st, fst = out["stream_ttfb_added_ms"], out["floor_stream_ttfb_added_ms"]
    out["goals"] = {
        "added_p50_le_floor_plus_0.15ms": a is not None and f is not None and a <= f + 0.15,
        "added_p50_le_floor_plus_0.35ms": a is not None and f is not None and a <= f + 0.35,
        "added_p50_le_1ms": a is not None and a <= 1.0,
        "added_p99_le_3ms": out["added_p99_ms_c1"] is not None and out["added_p99_ms_c1"] <= 3.0,
        "rps_ge_0.6x_floor": ratio_f is not None and ratio_f >= 0.6,
        "rps_ge_15x_litellm": ratio_l is not None and ratio_l >= 15,
        "stream_ttfb_added_le_1.5x_floor": st is not None and fst is not None and st <= 1.5 * max(fst, 0.05),
    }
    return out


def table(res: dict[str, Any]) -> str:
    def f(v: Any, unit: str = "") -> str:
        return "n/a" if v is None else f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}"

    rows = [
        ("path", "added p50 c=1", "added p99 c=1", "req/s c=64 (1 worker)", "stream TTFB added c=8"),
        (
            "direct",
            f"({f(res['direct_p50_ms_c1'], ' ms')} abs)",
            "-",
            f(res["direct_rps"]),
            f"({f(res['direct_stream_ttfb_ms'], ' ms')} abs)",
        ),
        (
            "floor",
            f(res["floor_added_p50_ms_c1"], " ms"),
            f(res["floor_added_p99_ms_c1"], " ms"),
            f(res["floor_rps_per_worker"]),
            f(res["floor_stream_ttfb_added_ms"], " ms"),
        ),
        (
            "rayleigh",
            f(res["added_p50_ms_c1"], " ms"),
            f(res["added_p99_ms_c1"], " ms"),
            f(res["rps_per_worker"]),
            f(res["stream_ttfb_added_ms"], " ms"),
        ),
        (
            "litellm",
            f(res["litellm_added_p50_ms_c1"], " ms"),
            "-",
            f(res["litellm_rps_per_worker"]),
            f(res["litellm_stream_ttfb_added_ms"], " ms"),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (< 60 s)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", dest="json_path", help="write the figures as one flat JSON object")
    args = parser.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {LOAD_CPU})
    try:
        import uvloop

        res = uvloop.run(run(args))
    except ImportError:
        res = asyncio.run(run(args))
    print(table(res))
    if res["litellm_error"]:
        print(f"litellm: {res['litellm_error']}")
    for goal, ok in res["goals"].items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(res, indent=2) + "\n")
    ll = res["rps_ratio_vs_litellm"]
    print(
        f"summary: added p50 {res['added_p50_ms_c1']} ms (floor {res['floor_added_p50_ms_c1']} ms), "
        f"p99 {res['added_p99_ms_c1']} ms, req/s {res['rps_ratio_vs_floor']}x floor, "
        f"{'n/a' if ll is None else f'{ll:.1f}'}x LiteLLM, stream TTFB +{res['stream_ttfb_added_ms']} ms "
        f"(floor +{res['floor_stream_ttfb_added_ms']} ms), {res['redis_calls_per_request']} Redis calls per request"
    )


if __name__ == "__main__":
    main()

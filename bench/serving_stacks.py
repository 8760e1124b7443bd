"""The stacks bench/serving_overhead.py compares (and bench/loadtest_compare.py reuses): how each is
started on loopback, how its first streamed answer is awaited, and which of its processes burn CPU.

See bench/serving_overhead.py for what each stack is.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]

from rayleigh_serving.ingress import DEFAULT_INGRESS  # noqa: E402
from rayleigh_serving.local import LocalRay, free_port, http_json  # noqa: E402
from rayleigh_serving.reaper import kill_marked  # noqa: E402

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
STACKS = ("vllm", "stock", "stock_direct", "rayleigh_haproxy", "rayleigh_proxy")
KNOWN_STACKS = (*STACKS, "rayleigh_direct")


@dataclass
class Running:
    name: str
    base_url: str
    stop: Callable[[], None]
    startup_s: float
    pids: Callable[[], list[int]] = list  # the stack's processes, for CPU accounting


def cpu_by_role(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process, summed by role (process name)."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            # Ray workers set their title in argv ("ray::ServeReplica:..."); comm is cut at 15 characters.
            name = " ".join(proc.cmdline()[:3]) + " " + proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = _role(name)
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def _role(name: str) -> str:
    """Bounded role names: engine, replica (Serve replica / vLLM's API server), proxy, haproxy, ray."""
    low = name.lower()
    if "enginecore" in low or "vllm::worker" in low:
        return "engine"
    if "proxyactor" in low or "haproxymanag" in low:
        return "proxy"
    if "haproxy" in low:
        return "haproxy"
    if "servereplica" in low or "vllm.entrypoints" in low or "llmserver" in low:
        return "replica"
    return "ray"


async def stream_chat(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, int]:
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


def _wait_models(base_url: str, deadline: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            http_json("GET", f"{base_url}/v1/models", timeout=5)
            # The first answer is a streamed one (what `*_start_to_first_answer_s` means).
            first, _ = asyncio.run(_first_stream(base_url))
            if first == first:  # not NaN: a data chunk came
                return
        except (urllib.error.URLError, OSError, ValueError, httpx.HTTPError):
            time.sleep(0.5)
    raise TimeoutError(f"{base_url} not answering")


async def _first_stream(base_url: str) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await stream_chat(client, base_url, 1)


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

    def pids() -> list[int]:
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) == proc.pid:
                    out.append(p.pid)
            except OSError:
                continue
        return out

    return Running("vllm", url, stop, time.monotonic() - start, pids)


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


def _direct_url(base_port: int, span: int, deadline: float) -> str:
    """The replica's own HTTP server (direct ingress): the port Serve gave it within our range."""
    while time.monotonic() < deadline:
        for port in range(base_port, base_port + span):
            url = f"http://127.0.0.1:{port}"
            try:
                http_json("GET", f"{url}/v1/models", timeout=2)
                return url
            except (urllib.error.URLError, OSError, ValueError):
                continue
        time.sleep(0.5)
    raise TimeoutError(f"no replica answering on ports {base_port}-{base_port + span - 1}")


def start_ray_stack(name: str, model_dir: Path, log: Path) -> Running:
    """A stack of STACKS/KNOWN_STACKS other than vllm; `rayleigh_<ingress>:MS` adds a stream batching
    interval of MS ms to Rayleigh's app."""
    base, _, interval_s = name.partition(":")
    interval = float(interval_s) if interval_s else None
    tuned = base.startswith("rayleigh")
    env: dict[str, str] = {}
    ingress = DEFAULT_INGRESS
    span = 20
    direct_port = free_port() if base == "rayleigh_direct" else 0
    if base == "stock_direct":
        env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1"}
    elif base == "rayleigh_direct":
        ingress = "proxy"
        env = {
            "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(direct_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(direct_port + span),
        }
    elif tuned:
        ingress = DEFAULT_INGRESS if base == "rayleigh" else base.removeprefix("rayleigh_")
    elif base != "stock":
        raise ValueError(f"unknown stack {name!r}: one of {', '.join(KNOWN_STACKS)}")
    ray = LocalRay(log=log, tuned=tuned, ingress=ingress, env=env)
    start = time.monotonic()
    ray.start()
    try:
        config = _rayleigh_config(model_dir, interval) if tuned else _stock_config(model_dir)
        ray.deploy(config)
        ray.wait_running(config["applications"][0]["name"], timeout=900)
        url = ray.base_url
        if base == "rayleigh_direct":
            url = _direct_url(direct_port, span, time.monotonic() + 120)
        _wait_models(url, time.monotonic() + 300)
    except BaseException:
        ray.stop()
        raise
    marker = str(ray.temp_dir)
    return Running(name, url, ray.stop, time.monotonic() - start, lambda: kill_marked([marker], 0))

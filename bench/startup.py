"""Start to first answer: `rayleigh up` (make demo) against vLLM's own OpenAI server, one machine, one run.

Both serve the tiny model of `manifests/examples/tiny.yaml` with the same engine settings:
  vllm      `python -m vllm.entrypoints.openai.api_server` (the floor: the engine's own server)
  rayleigh  `rayleigh up -f manifests/examples/tiny.yaml --exit-after-ready` (Ray head, Serve app,
            gateway in front, one warm-up request through the gateway)

Each is timed from spawning its process to its first answer (a 1-token chat completion answered
200): for vLLM the bench polls its endpoint every 0.5 s, as `rayleigh up` polls its own; for
`rayleigh up`, until it prints `Ready:` (printed right after its first answer). Alternating rounds,
the order rotated each round; medians over rounds and the ratio per round. The phases each prints
(vLLM's log lines, `rayleigh up`'s start-up phases) are stamped with the bench's clock as they come.
Every start is bounded in time; each process group (and `rayleigh up`'s Ray head) is stopped after.

  .venv/bin/python bench/startup.py                # 3 rounds
  .venv/bin/python bench/startup.py --quick        # 1 round
  .venv/bin/python bench/startup.py --json bench/results/startup.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]

from rayleigh_serving.local import free_port, http_json  # noqa: E402

MANIFEST = REPO / "manifests" / "examples" / "tiny.yaml"
MODEL_DIR = REPO / ".cache" / "models" / "tiny-qwen"
MODEL_NAME = "tiny-qwen"
START_TIMEOUT_S = 400.0
# vLLM log lines that mark its phases (first match of each is stamped).
VLLM_MARKS = {
    "first log line (imports done)": re.compile(r"\bINFO\b"),
    "engine core process started": re.compile(r"Initializing a V1 LLM engine"),
    "engine initialised (profile, KV cache, warm-up)": re.compile(r"init engine .* took"),
    "HTTP server up": re.compile(r"Application startup complete"),
}
RAYLEIGH_PHASE = re.compile(r"^\[\s*(\d+\.\d) s\] (.+)$")  # its phase lines, not its progress lines


def _reader(proc: subprocess.Popen[bytes], log: Path, start: float, on_line: Any) -> threading.Thread:
    """Copy the process's output to `log`, stamping lines with the bench's clock."""

    def run() -> None:
        assert proc.stdout is not None
        with open(log, "ab") as out:
            for raw in proc.stdout:
                out.write(raw)
                out.flush()
                on_line(raw.decode(errors="replace").rstrip("\n"), time.monotonic() - start)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stop_group(proc: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 20.0) -> None:
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its group


def run_vllm(log: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(MODEL_DIR),
        "--served-model-name",
        MODEL_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.2",
        "--enable-prefix-caching",
        "--disable-uvicorn-access-log",
    ]
    phases: dict[str, float] = {}

    def on_line(line: str, at: float) -> None:
        for name, pattern in VLLM_MARKS.items():
            if name not in phases and pattern.search(line):
                phases[name] = round(at, 1)

    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    reader = _reader(proc, log, start, on_line)
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {proc.returncode}; see {log}")
            if time.monotonic() - start > START_TIMEOUT_S:
                raise TimeoutError(f"vLLM gave no answer within {START_TIMEOUT_S:.0f} s; see {log}")
            try:
                http_json("POST", f"{base}/v1/chat/completions", body, timeout=30)
                break
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        total = time.monotonic() - start
    finally:
        _stop_group(proc)
        reader.join(timeout=5)
    phases["first answer"] = round(total, 1)
    return {"start_to_first_answer_s": round(total, 2), "phases": phases}


def run_rayleigh(log: Path, state_dir: Path) -> dict[str, Any]:
    rayleigh = Path(sys.executable).with_name("rayleigh")
    cmd = [str(rayleigh), "up", "-f", str(MANIFEST), "--port", str(free_port()), "--exit-after-ready"]
    phases: dict[str, float] = {}
    own: dict[str, float] = {}
    ready = threading.Event()

    def on_line(line: str, at: float) -> None:
        m = RAYLEIGH_PHASE.match(line.strip())
        if m and m.group(2) not in phases:
            phases[m.group(2)] = round(at, 1)
            own[m.group(2)] = float(m.group(1))
        if line.startswith("Ready:"):
            phases["Ready printed"] = round(at, 1)
            ready.set()

    env = {**os.environ, "RAYLEIGH_STATE_DIR": str(state_dir), "VLLM_TARGET_DEVICE": "cpu"}
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
    )
    reader = _reader(proc, log, start, on_line)
    try:
        while not ready.wait(0.2):
            if proc.poll() is not None and not ready.is_set():
                raise RuntimeError(f"rayleigh up exited with {proc.returncode} before Ready; see {log}")
            if time.monotonic() - start > START_TIMEOUT_S:
                raise TimeoutError(f"rayleigh up not ready within {START_TIMEOUT_S:.0f} s; see {log}")
        total = time.monotonic() - start
        stop_start = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)  # --exit-after-ready: it stops its Ray head and gateway itself
        stopped = time.monotonic() - stop_start
    finally:
        # SIGINT is Ctrl-C: rayleigh up stops everything it started (its watchdog does if it cannot).
        _stop_group(proc, first=signal.SIGINT)
        reader.join(timeout=5)
    return {
        "start_to_first_answer_s": round(total, 2),
        # What rayleigh up itself prints (its clock starts after its own imports and argument parsing).
        "reported_first_answer_s": own.get("first answer"),
        "phases": phases,
        "stop_after_ready_s": round(stopped, 1),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3, 1 with --quick)")
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--only", choices=["vllm", "rayleigh"], help="run one stack only (for profiling)")
    args = ap.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    if not MODEL_DIR.exists():
        from rayleigh_serving.tiny_model import ensure_tiny_model

        ensure_tiny_model(MODEL_DIR)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    result: dict[str, Any] = {
        "benchmark": "startup",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": load_average()},
        "manifest": str(MANIFEST.relative_to(REPO)),
        "rounds": [],
        "logs": str(work),
    }
    stacks = ["rayleigh", "vllm"] if args.only is None else [args.only]
    for i in range(rounds):
        order = stacks if i % 2 == 0 else stacks[::-1]
        entry: dict[str, Any] = {"order": order, "load_average_at_start": load_average()}
        for name in order:
            log = work / f"{name}-{i}.log"
            print(f"round {i + 1}/{rounds}: {name} (load {load_average()}) ...", file=sys.stderr, flush=True)
            if name == "vllm":
                entry[name] = run_vllm(log)
            else:
                entry[name] = run_rayleigh(log, work / f"state-{i}")
            print(f"  {name}: {entry[name]['start_to_first_answer_s']} s {entry[name]['phases']}", file=sys.stderr)
        if "vllm" in entry and "rayleigh" in entry:
            entry["ratio"] = round(
                entry["rayleigh"]["start_to_first_answer_s"] / entry["vllm"]["start_to_first_answer_s"], 3
            )
        result["rounds"].append(entry)
        if args.json:  # each finished round is kept even if a later one is cut short
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**result, "partial": True}, indent=2) + "\n")

    def med(name: str) -> float | None:
        values = [r[name]["start_to_first_answer_s"] for r in result["rounds"] if name in r]
        return round(statistics.median(values), 2) if values else None

    ratios = [r["ratio"] for r in result["rounds"] if "ratio" in r]
    result.update(
        {
            "rayleigh_start_to_first_answer_s": med("rayleigh"),
            "vllm_start_to_first_answer_s": med("vllm"),
            "ratio": round(statistics.median(ratios), 3) if ratios else None,
            "goals": {"rayleigh_start_to_first_answer_s": 60.0, "ratio": 1.5},
            "machine_load_average_at_end": load_average(),
        }
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

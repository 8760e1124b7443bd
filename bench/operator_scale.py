"""Operator scale: N ModelDeployments against the emulated Kubernetes API, Rayleigh vs the floor.

For N in (1, 100, 1000) (--quick: 1 and 100), in alternating rounds, each round on a fresh
emulator process (tests/kube_emulator.py, pinned to CPU 0) and a fresh controller process
(pinned to CPU 1):
  (a) `rayleigh operator` (kopf, with the handlers, Events and status it really uses; no Ray:
      the Ray heads never become ready, so no Serve calls happen), and
  (b) the floor, bench/floor_controller.py: a bare asyncio controller that sends the same
      rendered children by the same server-side apply requests plus one status patch.
The bench creates N tiny-model ModelDeployments (32 concurrent POSTs) and measures, at the
emulator: per object, time from its creation to its last child (p50, p99); total time from the
first creation to the last child; requests per object the controller sent; controller CPU
seconds (utime+stime from /proc) from the first creation until every object has a status and the
controller has sent nothing for 1 s; RSS idle (before creating) and after N.

Usage: python bench/operator_scale.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: tests.plugins.kube lives in the checkout

from tests.plugins.kube import start_emulator, stop_process  # noqa: E402

CRD = REPO / "manifests" / "crds" / "serving.rayleigh.dev_modeldeployments.yaml"
MD_PATH = "/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
RUN_LIMIT_S = 120.0  # no round may take longer than this
CHILDREN_PER_OBJECT = 7


@dataclass
class Round:
    controller: str
    objects: int
    p50_s: float
    p99_s: float
    total_s: float
    requests_per_object: float
    cpu_s: float
    rss_idle_mb: float
    rss_after_mb: float


def taskset(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu:
        return ["taskset", "-c", str(cpu)]
    return []


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def md_doc(i: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests" / "examples" / "tiny.yaml").read_text())
    doc["metadata"] = {"name": f"bench-{i:04d}", "namespace": "default"}
    doc["spec"]["model"]["servedModelName"] = f"bench-{i:04d}"  # distinct: no route conflicts
    doc["spec"]["model"]["source"] = "hf://Qwen/Qwen2.5-0.5B-Instruct"
    return doc


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json(content_type=None)


async def create_all(session: aiohttp.ClientSession, url: str, n: int) -> None:
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with sem, session.post(url + MD_PATH, json=md_doc(i)) as resp:
            if resp.status != 201:
                raise RuntimeError(f"create failed: {resp.status} {await resp.text()}")

    await asyncio.gather(*(one(i) for i in range(n)))


async def measure(controller: str, n: int, workdir: Path) -> Round:
    emu, url, kubeconfig = start_emulator(workdir, crds=[CRD], prefix=taskset(0))
    ctl: subprocess.Popen[bytes] | None = None
    try:
        if controller == "rayleigh":
            cmd = [
                str(Path(sys.executable).parent / "rayleigh"),
                "operator",
                "--kubeconfig",
                str(kubeconfig),
                "--metrics-port",
                "0",
                "--log-level",
                "WARNING",
                "--dashboard-url",
                "http://127.0.0.1:9",
                # As the chart runs it: the gateway routes ConfigMap is part of the work.
                "--routes-configmap",
                "rayleigh-gateway-routes",
            ]
        else:
            cmd = [sys.executable, str(REPO / "bench" / "floor_controller.py"), "--kubeconfig", str(kubeconfig)]
        ctl = subprocess.Popen(
            [*taskset(1), *cmd],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / f"{controller}.log").open("ab"),
            start_new_session=True,
        )
        headers = {"User-Agent": "rayleigh-bench"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
            # Idle: the controller is up and watching (its first list has been served).
            deadline = time.monotonic() + 30
            while True:
                log = await get_json(session, url + "/_emulator/requests")
                if any(
                    r["path"] == MD_PATH.replace("/namespaces/default", "") or r["path"] == MD_PATH
                    for r in log
                    if r["userAgent"] != "rayleigh-bench"
                ):
                    break
                if time.monotonic() > deadline or ctl.poll() is not None:
                    raise RuntimeError(f"{controller} did not start: see {workdir}/{controller}.log")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            rss_idle = proc_rss_mb(ctl.pid)
            requests_before = len(await get_json(session, url + "/_emulator/requests"))
            cpu_before = proc_cpu(ctl.pid)
            await create_all(session, url, n)
            # Done when every object has all its children and a status.
            deadline = time.monotonic() + RUN_LIMIT_S
            while True:
                created = await get_json(session, url + "/_emulator/created")
                children = sum(1 for c in created if c["owner"] and c["plural"] != "events")
                if children >= n * CHILDREN_PER_OBJECT:
                    listing = await get_json(session, url + MD_PATH)
                    if all((o.get("status") or {}).get("phase") for o in listing["items"]):
                        break
                if time.monotonic() > deadline:
                    tail = (workdir / f"{controller}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(
                        f"{controller} did not finish {n} objects in {RUN_LIMIT_S} s "
                        f"({children} children); its log ends with:\n{tail}"
                    )
                await asyncio.sleep(0.05)
            # Settle: trailing work (kopf's own patches, Events, watch events) counts too.
            settle_deadline = time.monotonic() + 15
            last = -1
            while time.monotonic() < settle_deadline:
                entries = await get_json(session, url + "/_emulator/requests")
                count = sum(1 for r in entries if r["userAgent"] != "rayleigh-bench")
                if count == last:
                    break
                last = count
                await asyncio.sleep(1.0)
            cpu = proc_cpu(ctl.pid) - cpu_before
            rss_after = proc_rss_mb(ctl.pid)
            log = (await get_json(session, url + "/_emulator/requests"))[requests_before:]
            controller_requests = sum(1 for r in log if r["userAgent"] != "rayleigh-bench")
    finally:
        if ctl is not None:
            stop_process(ctl, signal.SIGKILL)  # measured already; a graceful kopf shutdown only costs time
        stop_process(emu)
    md_created = {c["name"]: c["created"] for c in created if c["plural"] == "modeldeployments"}
    last_child: dict[str, float] = {}
    for c in created:
        if c["owner"] and c["plural"] not in ("modeldeployments", "events"):
            last_child[c["owner"]] = max(last_child.get(c["owner"], 0.0), c["created"])
    latencies = sorted(last_child[name] - t for name, t in md_created.items())
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return Round(
        controller=controller,
        objects=n,
        p50_s=statistics.median(latencies),
        p99_s=p99,
        total_s=max(last_child.values()) - min(md_created.values()),
        requests_per_object=controller_requests / n,
        cpu_s=cpu,
        rss_idle_mb=rss_idle,
        rss_after_mb=rss_after,
    )


def med(rounds: list[Round], controller: str, n: int, field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in rounds if r.controller == controller and r.objects == n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 and 100 objects, 2 rounds each (< 60 s)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures as a flat JSON object")
    args = parser.parse_args()
    plan = [(1, 2), (100, 2)] if args.quick else [(1, 3), (100, 5), (1000, 3)]
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="rayleigh-bench-") as tmp:
        for n, reps in plan:
            for rep in range(reps):
                # Alternate which controller goes first, so drift in machine speed hits both.
                order = ["floor", "rayleigh"] if rep % 2 == 0 else ["rayleigh", "floor"]
                for controller in order:
                    r = asyncio.run(measure(controller, n, Path(tmp)))
                    rounds.append(r)
                    print(
                        f"  {controller:8s} n={n:<5d} p50={r.p50_s:.3f}s p99={r.p99_s:.3f}s "
                        f"total={r.total_s:.3f}s req/obj={r.requests_per_object:.1f} cpu={r.cpu_s:.2f}s "
                        f"rss={r.rss_idle_mb:.0f}->{r.rss_after_mb:.0f}MB",
                        flush=True,
                    )
    sizes = [n for n, _ in plan]
    print()
    print(
        f"{'objects':>7} | {'controller':10} | {'p50 s':>7} | {'p99 s':>7} | {'total s':>8} | {'req/obj':>7} | "
        f"{'cpu s':>6} | {'RSS idle MB':>11} | {'RSS after MB':>12}"
    )
    for n in sizes:
        for c in ("floor", "rayleigh"):
            print(
                f"{n:>7} | {c:10} | {med(rounds, c, n, 'p50_s'):7.3f} | {med(rounds, c, n, 'p99_s'):7.3f} | "
                f"{med(rounds, c, n, 'total_s'):8.3f} | {med(rounds, c, n, 'requests_per_object'):7.1f} | "
                f"{med(rounds, c, n, 'cpu_s'):6.2f} | {med(rounds, c, n, 'rss_idle_mb'):11.0f} | "
                f"{med(rounds, c, n, 'rss_after_mb'):12.0f}"
            )
    big = max(sizes)
    result: dict[str, Any] = {
        "objects": sizes,
        "quick": args.quick,
        "rounds": {str(n): reps for n, reps in plan},
        "kopf_version": version("kopf"),
        "kmock_version": version("kmock"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "apply_to_children_p50_s_100": med(rounds, "rayleigh", 100, "p50_s"),
        "apply_to_children_p99_s_100": med(rounds, "rayleigh", 100, "p99_s"),
        "floor_apply_to_children_p50_s_100": med(rounds, "floor", 100, "p50_s"),
        "time_ratio_vs_floor_100": med(rounds, "rayleigh", 100, "total_s") / med(rounds, "floor", 100, "total_s"),
        "cpu_ratio_vs_floor_100": med(rounds, "rayleigh", 100, "cpu_s") / med(rounds, "floor", 100, "cpu_s"),
        "requests_per_object_100": med(rounds, "rayleigh", 100, "requests_per_object"),
        "floor_requests_per_object_100": med(rounds, "floor", 100, "requests_per_object"),
        "rss_idle_mb": med(rounds, "rayleigh", big, "rss_idle_mb"),
        "floor_rss_idle_mb": med(rounds, "floor", big, "rss_idle_mb"),
        f"rss_{big}_mb": med(rounds, "rayleigh", big, "rss_after_mb"),
        "p50_s_1": med(rounds, "rayleigh", 1, "p50_s"),
        "floor_p50_s_1": med(rounds, "floor", 1, "p50_s"),
    }
    if 1000 in sizes:
        result.update(
            time_ratio_vs_floor_1000=med(rounds, "rayleigh", 1000, "total_s") / med(rounds, "floor", 1000, "total_s"),
            cpu_ratio_vs_floor_1000=med(rounds, "rayleigh", 1000, "cpu_s") / med(rounds, "floor", 1000, "cpu_s"),
            total_s_1000=med(rounds, "rayleigh", 1000, "total_s"),
            floor_total_s_1000=med(rounds, "floor", 1000, "total_s"),
            apply_to_children_p50_s_1000=med(rounds, "rayleigh", 1000, "p50_s"),
            apply_to_children_p99_s_1000=med(rounds, "rayleigh", 1000, "p99_s"),
            rss_growth_kb_per_object=(
                med(rounds, "rayleigh", 1000, "rss_after_mb") - med(rounds, "rayleigh", 1000, "rss_idle_mb")
            )
            * 1000
            / 1000,
        )
    result["rounds_raw"] = json.dumps([asdict(r) for r in rounds])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    summary = (
        f"operator_scale: total vs floor {result['time_ratio_vs_floor_100']:.2f}x at 100"
        + (
            f", {result['time_ratio_vs_floor_1000']:.2f}x at 1000, CPU {result['cpu_ratio_vs_floor_1000']:.2f}x"
            if 1000 in sizes
            else f", CPU {result['cpu_ratio_vs_floor_100']:.2f}x at 100"
        )
        + f", p50 at 100 {result['apply_to_children_p50_s_100']:.3f} s, RSS idle {result['rss_idle_mb']:.0f} MB"
    )
    print(summary)


if __name__ == "__main__":
    main()

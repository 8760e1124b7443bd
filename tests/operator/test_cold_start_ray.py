"""Scale to zero end to end with real Ray + vLLM (issue 17): the real operator (`rayleigh operator`,
with its wake endpoint) against the emulated Kubernetes API, the real gateway (`rayleigh gateway`,
a process) and the tiny model served by Ray Serve on a real local Ray head.

Flow (one model load in all): a ModelDeployment with `minReplicas: 0` applied at zero (Serve runs
the application with no replica; ScaledToZero True; the route's `coldStart` reaches the gateway) ->
three requests through the gateway are held -> the gateway's wake signal makes the operator scale
0 -> 1 -> vLLM loads the model -> all three get a real completion (200) -> `status.lastColdStart` has
the phases the operator sees -> the idle window ends -> `spec.replicas` 0 and Serve's replica really
stops (target 0, no replica left), ScaledToZero True again.

Stand-ins, because they cannot run here (tests/plugins/kubelet.py): the Ray head is the serving
tests' shared local head (`serving_stack`; the operator runs with `--external-ray` and its own
application name and route prefix), so the worker pods exist only in the emulated API and report
ready as soon as their Deployment asks for them (the `workersReadySeconds` phase measures only the
operator's reaction here, not a pod scheduling or a Ray worker joining); the route ConfigMap reaches
the gateway's config directory as a mounted ConfigMap would, its backend pointed at the local Serve
proxy (cluster DNS). `modelLoadedSeconds` (the Serve replica running: vLLM loaded the model) and the
held requests' wait are real.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway.harness import GatewayProcess, write_yaml
from tests.operator.test_operator_ray import live_apps, serve_apps
from tests.plugins.common import EXAMPLES_DIR, free_port
from tests.plugins.kube import Kube, OperatorProcess, shared_head_operator_args, wait_for
from tests.plugins.kubelet import KubeletStandIn

# Generous: on a busy 2-core machine the shared serving stack alone took 530 s to start (setup counts).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

NAME = "cold"
APP = f"{NAME}-op"
MODEL = "tiny-qwen-cold"
HELD = 3


@dataclass
class Stack:
    kube: Kube
    operator: OperatorProcess
    gateway: GatewayProcess
    kubelet: KubeletStandIn
    dashboard: str


def md(kube: Kube) -> dict[str, Any]:
    doc: dict[str, Any] = kube.api(f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments/{NAME}")
    return doc


def condition(kube: Kube, ctype: str) -> dict[str, Any]:
    conditions = (md(kube).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == ctype), {})


def llm_server(dashboard: str) -> dict[str, Any]:
    app = serve_apps(dashboard).get(APP) or {}
    dep: dict[str, Any] = (app.get("deployments") or {}).get("LLMServer") or {}
    return dep


def chat(gateway: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=400)


def gauge(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def stack(kube: Kube, serving_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("cold")
    port = serving_stack.base_url.rsplit(":", 1)[1]
    wake_port = free_port()
    op = OperatorProcess(
        kube,
        [*shared_head_operator_args(serving_stack.dashboard_url, port=port), "--wake-port", str(wake_port)],
        tmp / "operator.log",
    ).start()
    routes = tmp / "routes"
    routes.mkdir()
    write_yaml(routes / "gateway.yaml", {"limits": {"coldStartQueue": 8, "coldStartWaitSeconds": 400}})
    doc = yaml.safe_load((EXAMPLES_DIR / "tiny-scale-to-zero.yaml").read_text())
    doc["metadata"] = {"name": NAME, "namespace": "default"}
    doc["spec"]["replicas"] = 0  # applied at zero: the first start is a cold start (one model load in all)
    doc["spec"]["autoscaling"]["idleSeconds"] = 600  # shortened for the last test
    doc["spec"]["gateway"] = {"public": True}
    gateway: GatewayProcess | None = None
    try:
        with KubeletStandIn(kube, NAME, serving_stack.base_url, routes) as kubelet:
            kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(doc))
            wait_for(kubelet.route_file.exists, 30, what="the route in the gateway's config directory")
            gateway = GatewayProcess(
                routes,
                None,
                None,
                tmp / "gateway.log",
                extra_args=["--wake-url", f"http://127.0.0.1:{wake_port}/wake", "--reload-interval", "0.2"],
            )
            gateway.wait_ready()
            yield Stack(kube, op, gateway, kubelet, serving_stack.dashboard_url)
    finally:
        kube.kubectl("delete", "md", NAME, "--ignore-not-found", "--wait=false", check=False)
        wait_for(lambda: APP not in live_apps(serving_stack.dashboard_url), 90, what=f"{APP} removed from Ray")
        if gateway is not None:
            gateway.stop()
        op.stop()


def test_a_model_at_zero_runs_no_serve_replica_and_the_gateway_sees_cold_start(stack: Stack) -> None:
    kube = stack.kube
    wait_for(lambda: condition(kube, "ScaledToZero").get("status") == "True", 120, what="ScaledToZero True")
    assert md(kube)["status"]["phase"] == "Ready"  # ready to serve on demand
    dep = wait_for(
        lambda: (d := llm_server(stack.dashboard)) and d.get("target_num_replicas") == 0 and d,
        300,
        interval=0.5,
        what="Serve's LLMServer deployed with 0 replicas (the app's build imports vLLM)",
    )
    assert dep["replicas"] == []
    wait_for(lambda: stack.kubelet.route.get("coldStart") is True, 30, what="coldStart in the gateway's route")


def test_held_requests_wake_the_model_and_get_real_completions(stack: Stack) -> None:
    kube, gw = stack.kube, stack.gateway
    t = time.monotonic()
    with ThreadPoolExecutor(HELD) as pool:
        futures = [pool.submit(chat, gw.url) for _ in range(HELD)]
        wait_for(
            lambda: gauge(gw.metrics_url, "rayleigh_gateway_cold_start_held_requests") == HELD,
            30,
            what="the gateway holding every request",
        )
        # The gateway's wake signal: the operator scales 0 -> 1 while the requests wait.
        wait_for(lambda: md(kube)["spec"]["replicas"] == 1, 30, what="spec.replicas 1 on the wake signal")
        assert "woken by a request: replicas 0 -> 1" in stack.operator.log()
        answers = [f.result() for f in futures]
    waited = time.monotonic() - t
    for r in answers:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["usage"]["completion_tokens"] >= 1
    assert gauge(gw.metrics_url, "rayleigh_gateway_cold_start_hold_seconds_count") == HELD
    assert waited > 5, "answered before the model could load: not a cold start"


def test_last_cold_start_has_the_phase_breakdown(stack: Stack) -> None:
    kube = stack.kube
    cold = wait_for(lambda: (md(kube).get("status") or {}).get("lastColdStart"), 30, what="status.lastColdStart")
    assert set(cold) == {"requestedAt", "readyAt", "seconds", "workersReadySeconds", "modelLoadedSeconds"}
    # Worker pods are a stand-in here (ready at once); the model load on the real head is not.
    assert 0 <= cold["workersReadySeconds"] <= cold["modelLoadedSeconds"] <= cold["seconds"]
    assert cold["modelLoadedSeconds"] > 5
    assert cold["requestedAt"] <= cold["readyAt"]
    wait_for(lambda: condition(kube, "ScaledToZero").get("status") == "False", 30, what="ScaledToZero False")
    assert condition(kube, "ScaledToZero")["reason"] == "Woken"
    running = [r for r in llm_server(stack.dashboard)["replicas"] if r["state"] == "RUNNING"]
    assert len(running) == 1


def test_after_the_idle_window_the_serve_replica_really_stops(stack: Stack) -> None:
    kube = stack.kube
    kube.kubectl("patch", "md", NAME, "--type=merge", "-p", json.dumps({"spec": {"autoscaling": {"idleSeconds": 5}}}))
    wait_for(lambda: md(kube)["spec"]["replicas"] == 0, 60, what=f"spec.replicas 0\n{stack.operator.log()[-2000:]}")
    dep = wait_for(
        lambda: (d := llm_server(stack.dashboard)) and d.get("target_num_replicas") == 0 and not d["replicas"] and d,
        120,
        interval=0.5,
        what="Serve's LLMServer at 0 replicas, none left",
    )
    assert dep["status"] == "HEALTHY"
    wait_for(lambda: condition(kube, "ScaledToZero").get("status") == "True", 30, what="ScaledToZero True")
    assert condition(kube, "ScaledToZero")["reason"] == "Idle"
    assert md(kube)["status"]["phase"] == "Ready"
    wait_for(lambda: stack.kubelet.route.get("coldStart") is True, 30, what="coldStart in the gateway's route")

"""Progressive rollout end to end: the real operator against the emulated Kubernetes API, a real
Ray head running the tiny model on vLLM (CPU), a real Prometheus, and the real gateway.

A ModelDeployment with two replicas and `maxSurge: 0` changes its engine arguments while a client
streams chat completions through the gateway without pause: the replicas move one by one (the old
one drains, a new one takes its place), the gateway's weights follow the ready replicas, no request
fails and at no moment do more than two replicas exist. Then a bad version (a chat template that
raises) starts on one replica; the analysis reads its error rate from Prometheus against the old
version's over the same window and rolls it back, with the reason in status.

Stand-ins, because they cannot run here:
- The Ray head is the serving tests' shared local head (`serving_stack`, 6 logical CPUs, the tiny
  app holding 2): the two replicas of this ModelDeployment (2 CPUs each) fill it, so a new replica
  can only start once an old one has gone, as on a cluster without spare GPUs. The head and worker
  Deployments exist only in the emulated API; their readiness is set by the test.
- Cluster DNS: the routes the operator writes name the in-cluster Serve Service; the test copies
  them into the gateway's config file with the local Serve address (what a mounted ConfigMap does
  in a cluster).
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway.harness import GatewayProcess, write_yaml
from tests.plugins.common import EXAMPLES_DIR
from tests.plugins.kube import Kube, OperatorProcess, shared_head_operator_args, wait_for
from tests.plugins.prometheus_server import prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

NAME = "roll"
MODEL = "roll-qwen"
APPS = ("roll-op", "roll-op-b")
ROUTES_CM = "roll-gateway-routes"
BAD_TEMPLATE = "{{ raise_exception('this chat template is broken') }}"


def serve_apps(dashboard_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{dashboard_url}/api/serve/applications/", timeout=10) as resp:
        apps: dict[str, Any] = json.loads(resp.read())["applications"]
    return apps


def replicas_of(apps: dict[str, Any], name: str) -> list[dict[str, Any]]:
    dep = ((apps.get(name) or {}).get("deployments") or {}).get("LLMServer") or {}
    return list(dep.get("replicas") or [])


def doc(**spec: Any) -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    d["metadata"] = {"name": NAME, "namespace": "default"}
    # A model name of its own: ModelDeployments other tests left in the session's API server serve
    # tiny-qwen, and the older one keeps a name (ModelNameConflict: this one would get no route).
    d["spec"]["model"]["servedModelName"] = MODEL
    d["spec"]["replicas"] = 2
    d["spec"]["gateway"] = {"public": True}
    d["spec"]["rollout"] = {
        "maxSurge": 0,
        "maxUnavailable": 1,
        # Short windows for the test; TTFT on a shared 2-core machine varies too much to compare.
        "analysis": {
            "intervalSeconds": 8,
            "minRequests": 2,
            "maxTtftRatio": 50,
            "failureLimit": 1,
            "inconclusiveLimit": 20,
        },
    }
    for path, value in spec.items():
        section, key = path.split("__")
        d["spec"].setdefault(section, {})[key] = value
    return d


def apply(kube: Kube, d: dict[str, Any]) -> None:
    kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(d))


@dataclass
class Harness:
    kube: Kube
    stack: Any
    gateway: GatewayProcess
    stop: threading.Event = field(default_factory=threading.Event)
    results: list[tuple[float, int, bool, str]] = field(default_factory=list)  # (t, status, ok, detail)
    max_replicas: int = 0
    weights: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def md(self) -> dict[str, Any]:
        return self.kube.get("md", NAME) or {}

    def rollout(self) -> dict[str, Any]:
        st: dict[str, Any] = (self.md().get("status") or {}).get("rollout") or {}
        return st

    # --- threads -----------------------------------------------------------------------------

    def client(self) -> None:
        """Streams chat completions through the gateway, one after the other, until stopped."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "stream": True}
        deadline = time.monotonic() + 900
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                t = time.monotonic()
                try:
                    with http.stream("POST", self.gateway.url + "/v1/chat/completions", json=body) as resp:
                        text = b"".join(resp.iter_raw()).decode(errors="replace")
                    ok = resp.status_code == 200 and text.rstrip().endswith("data: [DONE]") and '"error"' not in text
                    self.results.append((t, resp.status_code, ok, text[-300:]))
                except httpx.HTTPError as exc:
                    self.results.append((t, 0, False, repr(exc)))
                time.sleep(0.05)

    def monitor(self) -> None:
        """Counts the Serve replicas of both applications (any state) every 100 ms."""
        while not self.stop.is_set():
            try:
                apps = serve_apps(self.stack.dashboard_url)
                self.max_replicas = max(self.max_replicas, sum(len(replicas_of(apps, a)) for a in APPS))
            except OSError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.1)

    def routes(self, config: Path) -> None:
        """What a mounted ConfigMap does in a cluster: the operator's route -> the gateway's config file."""
        port = self.stack.base_url.rsplit(":", 1)[1]
        last = None
        while not self.stop.is_set():
            try:
                cm = self.kube.api(f"/api/v1/namespaces/rayleigh-system/configmaps/{ROUTES_CM}") or {}
                raw = (cm.get("data") or {}).get(f"default_{NAME}.json")
                if raw and raw != last:
                    route = json.loads(re.sub(r"http://[^/\"]+", f"http://127.0.0.1:{port}", raw))
                    write_yaml(config, {"routes": [route]})
                    backends = route.get("backends") or [
                        {"name": route["name"], "url": route["backend"], "weight": 100}
                    ]
                    self.weights.append((time.monotonic(), {b["url"].rsplit("/", 1)[1]: b["weight"] for b in backends}))
                    last = raw
            except Exception as exc:  # keep syncing; the assertions look at `errors`
                self.errors.append(repr(exc))
            time.sleep(0.2)

    def failures_since(self, t0: float) -> list[tuple[float, int, bool, str]]:
        return [r for r in self.results if r[0] >= t0 and not r[2]]

    def backend_requests(self) -> dict[str, float]:
        text = httpx.get(self.gateway.metrics_url).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("rayleigh_gateway_backend_requests_total{"):
                backend = re.search(r'backend="([^"]+)"', line)
                if backend:
                    out[backend.group(1)] = out.get(backend.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
        return out


@pytest.fixture(scope="module")
def harness(kube: Kube, serving_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    tmp = tmp_path_factory.mktemp("rollout")
    metrics_target = serving_stack.metrics_url.split("//", 1)[1].split("/", 1)[0]
    config = tmp / "gateway.yaml"
    write_yaml(config, {"routes": []})
    with prometheus([metrics_target], tmp / "prometheus") as prom:
        op = OperatorProcess(
            kube,
            [
                *shared_head_operator_args(serving_stack.dashboard_url, resync_seconds=5),
                "--routes-configmap",
                ROUTES_CM,
                "--prometheus-url",
                prom,
                "--route-settle-seconds",
                "3",
            ],
            tmp / "operator.log",
        ).start()
        gateway = GatewayProcess(config, None, None, tmp / "gateway.log", extra_args=["--reload-interval", "0.2"])
        h = Harness(kube, serving_stack, gateway)
        threads = [
            threading.Thread(target=h.monitor, daemon=True),
            threading.Thread(target=h.routes, args=(config,), daemon=True),
        ]
        try:
            gateway.wait_ready()
            for t in threads:
                t.start()
            apply(kube, doc())
            for child in ("head", "workers"):
                wait_for(lambda c=child: kube.get("deployment", f"{NAME}-{c}"), 60, what=f"the {child} Deployment")  # type: ignore[misc]
            kube.set_deployment_ready(f"{NAME}-head", 1)
            kube.set_deployment_ready(f"{NAME}-workers", 2)
            wait_for(
                lambda: (h.md().get("status") or {}).get("readyReplicas") == 2,
                400,
                interval=1,
                what="two replicas of the first version serving",
            )
            wait_for(lambda: h.weights and h.weights[-1][1] == {"roll-op": 100}, 30, what="the route")
            client = threading.Thread(target=h.client, daemon=True)
            client.start()
            threads.append(client)
            wait_for(lambda: sum(1 for r in h.results if r[2]) >= 3, 60, what="the client's first answers")
            yield h
        finally:
            h.stop.set()
            for t in threads:
                t.join(timeout=70)
            kube.kubectl("delete", "md", NAME, "--ignore-not-found", "--wait=false", check=False)
            wait_for(
                lambda: (
                    not set(APPS)
                    & {n for n, a in serve_apps(serving_stack.dashboard_url).items() if a["status"] != "DELETING"}
                ),
                60,
                what="the rollout's applications removed",
            )
            op.stop()
            gateway.stop()


def test_a_spec_change_rolls_out_replica_by_replica_while_requests_stream(harness: Harness) -> None:
    h = harness
    t0 = time.monotonic()
    apply(h.kube, doc(engine__maxNumSeqs=8))  # new engine arguments: new replicas
    step = wait_for(
        lambda: (r := h.rollout()).get("phase") == "Progressing" and r.get("step") == 1 and r,
        300,
        interval=0.5,
        what="step 1: one replica on the new version",
    )
    assert step["steps"] == 2
    cond = wait_for(
        lambda: next(
            (c for c in h.md()["status"]["conditions"] if c["type"] == "Progressing" and c["reason"] == "RolloutStep"),
            None,
        ),
        30,
        what="Progressing with the step",
    )
    assert "rollout step" in cond["message"]
    wait_for(lambda: h.rollout().get("phase") == "Completed", 400, interval=0.5, what="the rollout completed")
    wait_for(lambda: h.weights[-1][1] == {"b": 100}, 30, what="all traffic on the new version")
    t_alone = time.monotonic()
    wait_for(lambda: sum(1 for r in h.results if r[0] >= t_alone) >= 3, 60, what="requests on the new version alone")
    apps = serve_apps(h.stack.dashboard_url)
    assert APPS[0] not in apps or apps[APPS[0]]["status"] == "DELETING"
    assert len(replicas_of(apps, APPS[1])) == 2
    # Traffic followed the ready replicas: a split while both served, then only the new version.
    splits = [w for _, w in h.weights if len(w) == 2]
    assert any(0 < w["b"] < 100 for w in splits), h.weights
    served = h.backend_requests()
    assert served.get(f"default/{NAME}-b", 0) > 0, served
    # No request failed, and never more replicas than the spec's two.
    assert h.failures_since(t0) == [], h.failures_since(t0)[:3]
    assert sum(1 for r in h.results if r[0] >= t0) >= 10
    assert h.max_replicas <= 2, h.max_replicas
    events = [e["message"] for e in h.kube.list("events") if e["involvedObject"].get("name") == NAME]
    assert any("RolloutStep" in m or "rollout step" in m for m in events), events
    assert h.errors == [], h.errors[:3]


def test_a_bad_version_is_rolled_back_with_the_reason_in_status(harness: Harness) -> None:
    h = harness
    apply(h.kube, doc(engine__maxNumSeqs=8, model__chatTemplate=BAD_TEMPLATE))
    rolled = wait_for(
        lambda: (r := h.rollout()).get("phase") == "RolledBack" and r,
        400,
        interval=0.5,
        what="the bad version rolled back",
    )
    assert rolled["reason"] == "AnalysisFailed", rolled
    assert "error rate" in rolled["message"] and rolled["analysis"]["result"] == "Failed", rolled
    cond = next(c for c in h.md()["status"]["conditions"] if c["type"] == "RolledBack")
    assert cond["status"] == "True" and cond["reason"] == "AnalysisFailed"
    # The old version takes both seats again; the bad one is gone; traffic back on the old one.
    wait_for(
        lambda: (
            len([r for r in replicas_of(serve_apps(h.stack.dashboard_url), APPS[1]) if r["state"] == "RUNNING"]) == 2
        ),
        300,
        interval=1,
        what="the old version back on two replicas",
    )
    wait_for(
        lambda: APPS[0] not in {n for n, a in serve_apps(h.stack.dashboard_url).items() if a["status"] != "DELETING"},
        60,
        what="the bad application removed",
    )
    assert h.weights[-1][1] == {"b": 100}, h.weights[-1]
    assert h.max_replicas <= 2, h.max_replicas
    events = [e for e in h.kube.list("events") if e["involvedObject"].get("name") == NAME]
    assert any(e["reason"] == "AnalysisFailed" and e["type"] == "Warning" for e in events), [
        e["message"] for e in events
    ]

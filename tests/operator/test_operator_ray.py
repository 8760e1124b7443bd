"""The real operator (kopf, `rayleigh operator` as a process) against the emulated Kubernetes API
and a real local Ray head running the tiny model on vLLM (CPU).

Flow: `kubectl apply -f manifests/examples/tiny.yaml` (real kubectl) -> children with owner
references -> worker and head readiness simulated -> the operator PUTs the Serve config to the
real Ray dashboard -> status Ready with endpoint -> an OpenAI chat completion through that
endpoint -> `kubectl scale md/tiny --replicas=2` changes the Serve replica target without
redeploying -> the Serve app lost (as by a head restart) is re-applied -> delete removes children,
route and the Serve app. Alongside, a second ModelDeployment with a model path that does not
exist: Serve's deploy fails on the real head -> phase Failed, reason ServeDeployFailed, no
redeploy loop.

Stand-ins, because they cannot run here:
- The Ray head is the serving tests' local head (`serving_stack`), shared: the operator runs with
  `--external-ray` and its own application name and route prefix (`tiny-op`, `/tiny-op`); the
  head and worker Deployments it applies exist only in the emulated API (no kubelet runs them)
  and their readiness is set by this test (simulated), as is the Serve replicas' placement (on
  the local head, not in worker pods).
- The emulated API has no CRD schema/CEL enforcement, no real SSA field ownership and an
  emulated garbage collector; the kind end-to-end workflow covers the real ones.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.plugins.common import EXAMPLES_DIR
from tests.plugins.kube import Kube, OperatorProcess, shared_head_operator_args, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP = "tiny-op"
PREFIX = "/tiny-op"
CHILD_KINDS = ["deployment", "service", "configmap", "poddisruptionbudget", "networkpolicy"]


def serve_apps(dashboard_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{dashboard_url}/api/serve/applications/", timeout=10) as resp:
        apps: dict[str, Any] = json.loads(resp.read())["applications"]
    return apps


def live_apps(dashboard_url: str) -> list[str]:
    """Applications not on their way out (DELETING waits for graceful replica shutdown)."""
    return [name for name, app in serve_apps(dashboard_url).items() if app["status"] != "DELETING"]


def llm_deployment(dashboard_url: str) -> dict[str, Any] | None:
    app = serve_apps(dashboard_url).get(APP)
    if not app:
        return None
    dep: dict[str, Any] | None = (app.get("deployments") or {}).get("LLMServer")
    return dep


@dataclass
class Deployed:
    kube: Kube
    operator: OperatorProcess
    stack: Any
    uid: str


@pytest.fixture(scope="module")
def deployed(kube: Kube, serving_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    port = serving_stack.base_url.rsplit(":", 1)[1]
    op = OperatorProcess(
        kube,
        shared_head_operator_args(serving_stack.dashboard_url, port=port),
        tmp_path_factory.mktemp("operator") / "operator.log",
    ).start()
    broken = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    broken["metadata"] = {"name": "broken", "namespace": "default"}
    broken["spec"]["model"]["source"] = "file:///nonexistent/rayleigh/model"
    try:
        kube.kubectl("apply", "--validate=false", "-f", str(EXAMPLES_DIR / "tiny.yaml"))
        # A second ModelDeployment whose Serve deploy fails on the real head (no such model path);
        # it deploys alongside tiny so that both waits overlap.
        kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(broken))
        md = wait_for(
            lambda: (kube.get("md", "tiny") or {}).get("status") and kube.get("md", "tiny"),
            30,
            what="the operator's first status",
        )
        yield Deployed(kube, op, serving_stack, md["metadata"]["uid"])
    finally:
        kube.kubectl("delete", "md", "tiny", "broken", "--ignore-not-found", "--wait=false", check=False)
        # Never leave our applications on the shared head (the serving tests' app stays).
        wait_for(
            lambda: not {APP, "broken-op"} & set(live_apps(serving_stack.dashboard_url)),
            60,
            what="tiny-op and broken-op removed",
        )
        op.stop()


def test_apply_creates_every_child_with_an_owner_reference(deployed: Deployed) -> None:
    for kind in CHILD_KINDS:
        items = deployed.kube.list(kind, selector="serving.rayleigh.dev/model-deployment=tiny")
        assert items, kind
        for obj in items:
            refs = obj["metadata"]["ownerReferences"]
            assert refs[0]["uid"] == deployed.uid and refs[0]["kind"] == "ModelDeployment", obj["metadata"]["name"]


def test_status_waits_for_the_ray_head(deployed: Deployed) -> None:
    status = deployed.kube.get("md", "tiny")["status"]  # type: ignore[index]
    assert status["phase"] == "Pending"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RayHeadNotReady"


def test_ready_with_endpoint_once_pods_are_ready_and_serve_runs(deployed: Deployed) -> None:
    kube = deployed.kube
    # Simulated kubelet: the head pod and one worker pod report ready.
    for name in ("tiny", "broken"):
        kube.set_deployment_ready(f"{name}-head", 1)
        kube.set_deployment_ready(f"{name}-workers", 1)
    md = wait_for(
        lambda: (m := kube.get("md", "tiny")) and m["status"].get("phase") == "Ready" and m,
        300,
        interval=1,
        what="phase Ready (Serve deploying the tiny model on the real Ray head)",
    )
    port = deployed.stack.base_url.rsplit(":", 1)[1]
    assert md["status"]["endpoint"] == f"http://127.0.0.1:{port}{PREFIX}/v1"
    assert md["status"]["readyReplicas"] == 1
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"]
    assert serve_apps(deployed.stack.dashboard_url)[APP]["route_prefix"] == PREFIX


def test_chat_completion_through_the_status_endpoint(deployed: Deployed) -> None:
    endpoint = deployed.kube.get("md", "tiny")["status"]["endpoint"]  # type: ignore[index]
    body = {"model": "tiny-qwen", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    req = urllib.request.Request(
        f"{endpoint}/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        answer = json.loads(resp.read())
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] >= 1


def test_kubectl_get_shows_the_printer_columns(deployed: Deployed) -> None:
    out = deployed.kube.kubectl("get", "md", "tiny")
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "MODEL", "REPLICAS", "READY", "PHASE", "ENDPOINT", "AGE"]
    cells = row.split()
    assert cells[:5] == ["tiny", "file://.cache/models/tiny-qwen", "1", "1", "Ready"]
    assert cells[5].endswith(f"{PREFIX}/v1")


def test_every_phase_transition_is_an_event(deployed: Deployed) -> None:
    events = [
        e
        for e in deployed.kube.list("events")
        if e["involvedObject"].get("name") == "tiny" and e["involvedObject"].get("kind") == "ModelDeployment"
    ]
    messages = [e["message"] for e in events]
    assert any(m.startswith("phase None -> Pending") for m in messages), messages
    assert any("-> Ready" in m for m in messages), messages
    assert all(e["source"]["component"] == "rayleigh-operator" for e in events)


def test_serve_deploy_failure_is_failed_with_reason_and_no_redeploy_loop(deployed: Deployed) -> None:
    kube = deployed.kube
    md = wait_for(
        lambda: (m := kube.get("md", "broken")) and (m.get("status") or {}).get("phase") == "Failed" and m,
        240,
        interval=1,
        what="phase Failed once Serve gives up on the replica (bad model path)",
    )
    ready = next(c for c in md["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ServeDeployFailed"
    assert serve_apps(deployed.stack.dashboard_url)["broken-op"]["status"] == "DEPLOY_FAILED"
    time.sleep(2)  # several poll intervals: nothing is re-pushed and the operator keeps running
    assert deployed.operator.log().count("default/broken: Serve config pushed") == 1
    assert deployed.operator.process is not None and deployed.operator.process.poll() is None
    assert kube.get("md", "broken")["status"]["phase"] == "Failed"  # type: ignore[index]
    warnings = [
        e["reason"]
        for e in kube.list("events")
        if e["involvedObject"].get("name") == "broken" and e["type"] == "Warning"
    ]
    assert warnings == ["ServeDeployFailed"]


def test_scale_changes_serve_replicas_without_redeploying(deployed: Deployed) -> None:
    kube, dashboard = deployed.kube, deployed.stack.dashboard_url
    before = llm_deployment(dashboard)
    assert before is not None
    running_before = {r["replica_id"] for r in before["replicas"] if r["state"] == "RUNNING"}
    assert len(running_before) == 1
    kube.kubectl("scale", "md/tiny", "--replicas=2")
    wait_for(
        lambda: (kube.get("deployment", "tiny-workers") or {}).get("spec", {}).get("replicas") == 2,
        20,
        what="worker Deployment scaled to 2",
    )
    dep = wait_for(
        lambda: (d := llm_deployment(dashboard)) and d["target_num_replicas"] == 2 and d,
        30,
        what="Serve target replicas 2",
    )
    # The replica that was serving keeps serving: a replica-count change is not a redeploy.
    running_after = {r["replica_id"] for r in dep["replicas"] if r["state"] == "RUNNING"}
    assert running_before <= running_after
    assert serve_apps(dashboard)[APP]["deployed_app_config"]["deployments"][0]["num_replicas"] == 2


def test_serve_app_lost_by_a_head_restart_is_reapplied(deployed: Deployed) -> None:
    dashboard = deployed.stack.dashboard_url
    with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=10) as resp:
        details = json.loads(resp.read())
    others = [
        a["deployed_app_config"]
        for name, a in details["applications"].items()
        if name != APP and a.get("deployed_app_config")
    ]
    # What a restarted head without GCS fault tolerance looks like to the operator: no tiny-op.
    put = urllib.request.Request(
        f"{dashboard}/api/serve/applications/",
        data=json.dumps(
            {"http_options": {k: details["http_options"][k] for k in ("host", "port")}, "applications": others}
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="PUT",
    )
    pushes = deployed.operator.log().count("Serve config pushed")
    urllib.request.urlopen(put, timeout=30).close()
    # The operator notices within a poll interval (it may re-apply before we could see it gone).
    wait_for(
        lambda: deployed.operator.log().count("Serve config pushed") > pushes and APP in serve_apps(dashboard),
        30,
        what="the operator to re-apply tiny-op",
    )
    assert deployed.stack.app_name in serve_apps(dashboard)  # the serving tests' app untouched


def test_delete_removes_children_route_and_serve_app(deployed: Deployed) -> None:
    kube, dashboard = deployed.kube, deployed.stack.dashboard_url
    kube.kubectl("delete", "md", "tiny", "--wait=false")
    wait_for(lambda: kube.get("md", "tiny") is None, 30, what="the ModelDeployment gone (finalizer released)")
    for kind in CHILD_KINDS:
        wait_for(
            lambda k=kind: not kube.list(k, selector="serving.rayleigh.dev/model-deployment=tiny"),
            10,
            what=f"{kind} children garbage-collected",
        )
    assert kube.get("configmap", "rayleigh-route-tiny") is None
    wait_for(lambda: APP not in live_apps(dashboard), 30, what="tiny-op removed from Ray")
    assert serve_apps(dashboard)[deployed.stack.app_name]["status"] == "RUNNING"

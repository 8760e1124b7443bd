"""Scale to zero, the operator's part (issue 17): the real operator process against the emulated
Kubernetes API. After autoscaling.idleSeconds without a request the workers go to 0 replicas, the
ScaledToZero condition is set and the route carries coldStart; the gateway's wake signal (POST
/wake) brings one replica back, and status.lastColdStart records how long it took.

No Ray and no kubelet here: the tests report the worker Deployment ready themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rayleigh_operator.idle import IdleScaler
from rayleigh_operator.state import Entry, Tracked, parse_spec
from tests.operator.test_operator_faults import FAST, apply_docs, condition, md_path, tiny_doc
from tests.plugins.common import free_port
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

AUTOSCALING = {"minReplicas": 0, "maxReplicas": 2, "idleSeconds": 5, "metric": "inFlightRequests"}


def workers_replicas(kube: Kube, name: str) -> int | None:
    dep = kube.api(f"/apis/apps/v1/namespaces/default/deployments/{name}-workers")
    return None if dep is None else int(dep["spec"].get("replicas", 1))


def route(kube: Kube, name: str) -> dict[str, Any]:
    cm = kube.api(f"/api/v1/namespaces/default/configmaps/rayleigh-route-{name}") or {"data": {}}
    result: dict[str, Any] = json.loads(cm["data"].get("route.json", "{}"))
    return result


def status(kube: Kube, name: str) -> dict[str, Any]:
    result: dict[str, Any] = (kube.api(md_path(name)) or {}).get("status") or {}
    return result


def test_idle_model_scales_to_zero_and_a_wake_signal_brings_it_back(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    port = free_port()
    op = operator_factory(*FAST, "--wake-port", str(port))
    apply_docs(kube, tiny_doc("cold", replicas=1, autoscaling=AUTOSCALING))
    wait_for(lambda: workers_replicas(kube, "cold") == 1, 30, what="workers at 1")
    assert route(kube, "cold").get("scaleToZero") is True
    assert not route(kube, "cold").get("coldStart")

    # Idle for idleSeconds (5 s, counted from the operator's start): to zero.
    wait_for(lambda: workers_replicas(kube, "cold") == 0, 30, what=f"workers at 0\n{op.log()}")
    assert (kube.api(md_path("cold")) or {})["spec"]["replicas"] == 0
    wait_for(
        lambda: (condition(kube, "cold", "ScaledToZero") or {}).get("status") == "True",
        15,
        what="ScaledToZero True",
    )
    assert condition(kube, "cold", "ScaledToZero")["reason"] == "Idle"  # type: ignore[index]
    wait_for(lambda: route(kube, "cold").get("coldStart") is True, 15, what="route coldStart")

    # Unknown objects and bad bodies are refused.
    wake = f"http://127.0.0.1:{port}/wake"
    assert httpx.post(wake, json={"namespace": "default", "name": "nope"}).status_code == 404
    assert httpx.post(wake, content=b"not json").status_code == 400

    # The gateway's wake signal: back to 1.
    assert httpx.post(wake, json={"namespace": "default", "name": "cold"}).status_code == 202
    wait_for(lambda: workers_replicas(kube, "cold") == 1, 15, what="workers back at 1")
    wait_for(lambda: not route(kube, "cold").get("coldStart"), 15, what="route warm")
    kube.set_deployment_ready("cold-workers", 1)
    wait_for(lambda: "lastColdStart" in status(kube, "cold"), 15, what=f"lastColdStart\n{op.log()}")
    cold = status(kube, "cold")["lastColdStart"]
    assert cold["seconds"] >= 0 and cold["requestedAt"] <= cold["readyAt"]
    wait_for(
        lambda: (condition(kube, "cold", "ScaledToZero") or {}).get("status") == "False",
        15,
        what="ScaledToZero False",
    )


def test_wake_signal_for_a_model_without_scale_to_zero_is_refused(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    port = free_port()
    operator_factory(*FAST, "--wake-port", str(port))
    apply_docs(kube, tiny_doc("warm", replicas=1))
    wait_for(lambda: workers_replicas(kube, "warm") == 1, 30, what="workers")
    wait_for(
        lambda: (
            httpx.post(f"http://127.0.0.1:{port}/wake", json={"namespace": "default", "name": "warm"}).status_code
            == 409
        ),
        15,
        what="409",
    )


def _entry(replicas: int, previous: dict[str, Any] | None = None) -> Entry:
    doc = tiny_doc("cold", replicas=replicas, autoscaling=AUTOSCALING)
    return Entry("default", "cold", doc, md=parse_spec(doc), status=previous)


def _computed(phase: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "ModelLoading", "message": "deploying"},
            {"type": "Progressing", "status": "True", "reason": "ModelLoading", "message": "deploying"},
        ],
    }


def test_an_idle_model_at_zero_reads_ready_not_deploying_and_faults_still_show() -> None:
    """At zero on purpose with the head up (Serve's one pending replica: Deploying) is Ready/Idle, so
    RayleighModelDeploymentNotReady does not fire for every idle model; Pending (head down) stays."""
    idle = IdleScaler(kube=None, tracked=Tracked())  # type: ignore[arg-type]
    st = _computed("Deploying")
    idle.decorate(_entry(0), st)
    by_type = {c["type"]: c for c in st["conditions"]}
    assert st["phase"] == "Ready"
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("True", "Idle")
    assert (by_type["Progressing"]["status"], by_type["Progressing"]["reason"]) == ("False", "Idle")
    assert (by_type["ScaledToZero"]["status"], by_type["ScaledToZero"]["reason"]) == ("True", "Idle")

    pending = _computed("Pending")
    idle.decorate(_entry(0), pending)
    assert pending["phase"] == "Pending"

    woken = _computed("Deploying")
    idle.decorate(_entry(1, previous=st), woken)
    by_type = {c["type"]: c for c in woken["conditions"]}
    assert woken["phase"] == "Deploying" and by_type["ScaledToZero"]["status"] == "False"
    assert by_type["ScaledToZero"]["reason"] == "Woken"


async def test_a_cold_start_records_when_the_workers_and_then_the_model_were_ready() -> None:
    """lastColdStart's phases: each from the wake, done only once the Serve replica runs."""
    from rayleigh_operator.serve_client import AppState

    now = [100.0]
    tracked = Tracked()
    entry = _entry(1)
    tracked.entries[entry.key] = entry
    idle = IdleScaler(kube=None, tracked=tracked, clock=lambda: now[0])  # type: ignore[arg-type]
    idle.last_activity[entry.key] = 100.0
    idle.wake_requested[entry.key] = (100.0, "2026-01-01T00:00:00Z")
    entry.serve_state = AppState("RUNNING", running_replicas=0)

    now[0] = 103.0
    entry.workers_ready = 1  # the worker pod joined the Ray cluster
    await idle.check()
    assert entry.key not in idle.last_cold_start, "the model is not loaded yet"

    now[0] = 140.5
    idle.last_activity[entry.key] = 140.0  # requests flow (the idle window is 5 s here)
    entry.serve_state = AppState("RUNNING", running_replicas=1)  # vLLM loaded the model
    await idle.check()
    cold = idle.last_cold_start[entry.key]
    assert (cold["workersReadySeconds"], cold["modelLoadedSeconds"], cold["seconds"]) == (3.0, 40.5, 40.5)
    assert cold["requestedAt"] == "2026-01-01T00:00:00Z" and entry.key not in idle.wake_requested
    status: dict[str, Any] = {"phase": "Ready", "conditions": []}
    idle.decorate(entry, status)
    assert status["lastColdStart"] == cold


async def test_without_serve_s_view_the_worker_pod_alone_ends_a_cold_start() -> None:
    now = [10.0]
    tracked = Tracked()
    entry = _entry(1)
    tracked.entries[entry.key] = entry
    idle = IdleScaler(kube=None, tracked=tracked, clock=lambda: now[0])  # type: ignore[arg-type]
    idle.last_activity[entry.key] = 10.0
    idle.wake_requested[entry.key] = (10.0, "2026-01-01T00:00:00Z")
    entry.serve_state = None  # the Ray dashboard cannot be read
    now[0] = 12.0
    entry.workers_ready = 1
    await idle.check()
    cold = idle.last_cold_start[entry.key]
    assert cold["seconds"] == cold["workersReadySeconds"] == 2.0 and "modelLoadedSeconds" not in cold


def test_a_woken_model_without_a_replica_yet_reads_deploying_not_degraded() -> None:
    """Right after the wake the operator's view is 0/1 workers (Degraded): a cold start, not a fault."""
    idle = IdleScaler(kube=None, tracked=Tracked())  # type: ignore[arg-type]
    entry = _entry(1)
    degraded: dict[str, Any] = {
        "phase": "Degraded",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "ReplicasUnavailable", "message": "0/1 worker pods ready"},
            {"type": "Degraded", "status": "True", "reason": "ReplicasUnavailable", "message": "0/1"},
        ],
    }
    idle.wake_requested[entry.key] = (0.0, "2026-01-01T00:00:00Z")
    idle.decorate(entry, degraded)
    by_type = {c["type"]: c for c in degraded["conditions"]}
    assert degraded["phase"] == "Deploying"
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "Woken")
    assert (by_type["Degraded"]["status"], by_type["Degraded"]["reason"]) == ("False", "Woken")

    still = _computed("Degraded")  # no wake pending: a real fault shows
    idle.wake_requested.clear()
    idle.decorate(entry, still)
    assert still["phase"] == "Degraded"

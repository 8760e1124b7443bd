"""Two ModelDeployments serving one model name: the older keeps it, the newer gets `Conflict`.

The real `rayleigh operator` against the emulated API server writes the gateway's routes ConfigMap;
the younger ModelDeployment gets no key there, a Conflict condition naming the older one and the
name, no endpoint, and a Warning Event. When the older one renames its model or is deleted, the
younger one gets its route and the condition turns False. The rule is the gateway's own
(`rayleigh_gateway.routes.served_routes`): the pure tests check both drop the same routes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

import rayleigh_api as api
from rayleigh_gateway.routes import Route, served_routes
from rayleigh_operator import status
from rayleigh_operator.state import Claim, Entry, Tracked, route_conflicts
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

NS = "conflicts"
ROUTES = "conflicts-gateway-routes"
FAST = ["--dashboard-url", "http://127.0.0.1:9", "--local-base", str(REPO_ROOT), "--poll-seconds", "0.3"]
FAST += ["--resync-seconds", "1", "--routes-configmap", ROUTES]


def doc(name: str, model: str) -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    d["metadata"] = {"name": name, "namespace": NS}
    d["spec"]["model"]["servedModelName"] = model
    return d


def apply_docs(kube: Kube, *docs: dict[str, Any]) -> None:
    kube.kubectl(
        "apply",
        "--server-side",
        "--validate=false",
        "-f",
        "-",
        input="".join("---\n" + yaml.safe_dump(d) for d in docs),
    )


def routes(kube: Kube) -> dict[str, Any]:
    """This test's routes (the operator watches every namespace: other tests' objects may remain)."""
    cm = kube.api(f"/api/v1/namespaces/rayleigh-system/configmaps/{ROUTES}") or {}
    return {k: json.loads(v) for k, v in (cm.get("data") or {}).items() if k.startswith(f"{NS}_")}


def md_status(kube: Kube, name: str) -> dict[str, Any]:
    md = kube.api(f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/{NS}/modeldeployments/{name}") or {}
    st: dict[str, Any] = md.get("status") or {}
    return st


def conflict(kube: Kube, name: str) -> dict[str, Any] | None:
    return next((c for c in md_status(kube, name).get("conditions", []) if c["type"] == "Conflict"), None)


def test_the_older_model_deployment_keeps_the_name_and_the_newer_gets_conflict_until_it_is_free(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    old, new = "zz-old", "aa-new"  # names sort the other way: age decides, not the name
    op = operator_factory(*FAST)
    apply_docs(kube, doc(old, "shared"))
    wait_for(lambda: f"{NS}_{old}.json" in routes(kube), 30, what="the older route")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    apply_docs(kube, doc(new, "shared"))

    cond = wait_for(lambda: (c := conflict(kube, new)) and c["status"] == "True" and c, 30, what="Conflict=True")
    assert cond["reason"] == api.Reason.MODEL_NAME_CONFLICT
    assert f"{NS}/{old}" in cond["message"] and "'shared'" in cond["message"]
    assert conflict(kube, old) is None  # the owner has no Conflict condition
    time.sleep(1.5)  # a resync and a routes write later, still no route for the newer one
    assert set(routes(kube)) == {f"{NS}_{old}.json"}
    assert routes(kube)[f"{NS}_{old}.json"]["models"] == ["shared"]
    assert "endpoint" not in md_status(kube, new)
    events = [
        e
        for e in kube.api(f"/api/v1/namespaces/{NS}/events")["items"]
        if e["involvedObject"]["name"] == new and e["reason"] == api.Reason.MODEL_NAME_CONFLICT
    ]
    assert len(events) == 1 and events[0]["type"] == "Warning", events

    # The older one renames its model: the newer one gets its route, the condition turns False.
    apply_docs(kube, doc(old, "renamed"))
    wait_for(lambda: f"{NS}_{new}.json" in routes(kube), 30, what="the newer route once the name is free")
    wait_for(lambda: (conflict(kube, new) or {}).get("status") == "False", 15, what="Conflict=False")
    assert (conflict(kube, new) or {})["reason"] == api.Reason.NO_CONFLICT
    assert {r["models"][0] for r in routes(kube).values()} == {"renamed", "shared"}

    # It takes the name back: the oldest wins again.
    apply_docs(kube, doc(old, "shared"))
    wait_for(lambda: set(routes(kube)) == {f"{NS}_{old}.json"}, 30, what="the newer route dropped again")
    wait_for(lambda: (conflict(kube, new) or {}).get("status") == "True", 15, what="Conflict=True again")

    # Deleted: the newer one takes over.
    kube.kubectl("delete", "md", old, "-n", NS)
    wait_for(lambda: set(routes(kube)) == {f"{NS}_{new}.json"}, 30, what="the newer route after the delete")
    wait_for(lambda: (conflict(kube, new) or {}).get("status") == "False", 15, what="Conflict=False after delete")
    op.stop()
    kube.kubectl("delete", "md", new, "-n", NS, "--wait=false")


# --- pure parts ------------------------------------------------------------------------------------


def claim(name: str, created: str | None, *models: str, ns: str = "a") -> Claim:
    return Claim((ns, name), created, models)


def test_oldest_wins_ties_by_namespace_and_name_and_a_loser_claims_nothing() -> None:
    claims = [
        claim("b", "2025-01-01T00:00:02Z", "x", "y"),  # loses x to a: claims nothing, so c keeps y
        claim("a", "2025-01-01T00:00:01Z", "x"),
        claim("c", "2025-01-01T00:00:03Z", "y", "z"),
        claim("d", None, "z"),  # no creationTimestamp: the newest
        claim("e", "2025-01-01T00:00:03Z", "w", ns="b"),
        claim("e", "2025-01-01T00:00:03Z", "w", ns="a"),  # same second: namespace a first
    ]
    conflicts = route_conflicts(claims)
    assert set(conflicts) == {("a", "b"), ("a", "d"), ("b", "e")}
    assert conflicts[("a", "b")].model == "x" and conflicts[("a", "b")].owner == ("a", "a")
    assert conflicts[("a", "d")].owner == ("a", "c")
    assert conflicts[("b", "e")].owner == ("a", "e")
    assert "a/a" in conflicts[("a", "b")].message() and "'x'" in conflicts[("a", "b")].message()


def test_the_operator_and_the_gateway_drop_the_same_routes() -> None:
    claims = [
        claim("b", "2025-01-01T00:00:02Z", "x", "y"),
        claim("a", "2025-01-01T00:00:01Z", "x"),
        claim("c", "2025-01-01T00:00:03Z", "y", "z"),
        claim("d", None, "z", "lora-1"),
        claim("e", "2025-01-01T00:00:00Z", "lora-1", ns="b"),
    ]
    as_routes = [
        Route.model_validate(
            {"name": c.key[1], "namespace": c.key[0], "backend": "http://x:8000", "models": list(c.models)}
            | ({"createdAt": c.created} if c.created else {})
        )
        for c in claims
    ]
    _, dropped = served_routes(as_routes)
    assert {(d.route.namespace, d.route.name) for d in dropped} == set(route_conflicts(claims))


def entry(name: str, created: str, *models: str) -> Entry:
    e = Entry(namespace="a", name=name, body={"metadata": {"name": name, "creationTimestamp": created}})
    e.served = models
    return e


def test_seeded_objects_claim_their_names_before_their_first_apply() -> None:
    tracked = Tracked()
    old = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "old", "namespace": "a", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())["spec"],
    }
    tracked.seed([old], wait_seconds=60)
    assert tracked.entries[("a", "old")].served == ("tiny-qwen",)
    assert tracked.initial_pending()
    # A younger object applied first (after an operator restart) does not take the name.
    young = tracked.entries[("a", "young")] = entry("young", "2025-06-01T00:00:00Z", "tiny-qwen")
    tracked.note_claim(young)  # what the routes writer does after each apply
    tracked.refresh_conflicts()
    assert young.conflict is not None and young.conflict.owner == ("a", "old")
    # Never applied by the deadline (deleted meanwhile): forgotten, and the name is free.
    tracked.initial_deadline = 0
    assert not tracked.initial_pending()
    assert ("a", "old") not in tracked.entries
    assert tracked.refresh_conflicts() == [young] and young.conflict is None


def test_conflict_condition_endpoint_and_events() -> None:
    base: dict[str, Any] = {
        "generation": 1,
        "desired_replicas": 1,
        "selector": "s",
        "served_models": ["m"],
        "endpoint": "http://gw/v1",
        "head_ready": True,
        "workers_replicas": 1,
        "workers_ready": 1,
        "serve_status": "RUNNING",
        "serve_running_replicas": 1,
    }
    plain = status.compute_status(status.Observed(**base), None, "t0")
    assert plain["endpoint"] == "http://gw/v1"
    assert "Conflict" not in {c["type"] for c in plain["conditions"]}  # absent until there is one
    message = "model name 'm' is already served by ModelDeployment a/old"
    held = status.compute_status(status.Observed(**base, conflict=message), plain, "t1")
    assert held["phase"] == api.Phase.READY  # its replicas serve; only the route is withheld
    assert held["endpoint"] is None
    cond = next(c for c in held["conditions"] if c["type"] == "Conflict")
    assert (cond["status"], cond["reason"], cond["message"]) == ("True", api.Reason.MODEL_NAME_CONFLICT, message)
    (event,) = status.transitions(plain, held)
    assert (event.type, event.reason) == ("Warning", api.Reason.MODEL_NAME_CONFLICT)
    # Posted with a phase change too (a new object that conflicts from its first status on).
    first = status.compute_status(status.Observed(**{**base, "head_ready": False}, conflict=message), None, "t0")
    assert {t.reason for t in status.transitions(None, first)} >= {api.Reason.MODEL_NAME_CONFLICT}
    freed = status.compute_status(status.Observed(**base), held, "t2")
    cond = next(c for c in freed["conditions"] if c["type"] == "Conflict")
    assert (cond["status"], cond["reason"]) == ("False", api.Reason.NO_CONFLICT)
    assert freed["endpoint"] == "http://gw/v1"
    (event,) = status.transitions(held, freed)
    assert (event.type, event.reason) == ("Normal", api.Reason.NO_CONFLICT)

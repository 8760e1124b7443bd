"""Traffic splits in the operator: ModelDeployments that share a served name and all set
spec.traffic get one gateway route with weighted backends, and each shows its weight and share.

The real `rayleigh operator` against the emulated API server (no kube-apiserver runs here; see
docs/OPERATOR.md) writes the gateway's routes ConfigMap; the pure parts check `route_plan`, the
rule that decides who is in a split and who gets `Conflict`.
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
from rayleigh_operator.state import Claim, route_plan
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

NS = "splits"
ROUTES = "splits-gateway-routes"
FAST = ["--dashboard-url", "http://127.0.0.1:9", "--local-base", str(REPO_ROOT), "--poll-seconds", "0.3"]
FAST += ["--resync-seconds", "1", "--routes-configmap", ROUTES]


def doc(name: str, weight: int | None, model: str = "chat", sticky: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    d["metadata"] = {"name": name, "namespace": NS}
    d["spec"]["model"]["servedModelName"] = model
    if weight is not None:
        d["spec"]["traffic"] = {"weight": weight, "sticky": sticky}
    return d


def apply_docs(kube: Kube, *docs: dict[str, Any]) -> None:
    body = "".join("---\n" + yaml.safe_dump(d) for d in docs)
    kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=body)


def routes(kube: Kube) -> dict[str, Any]:
    cm = kube.api(f"/api/v1/namespaces/rayleigh-system/configmaps/{ROUTES}") or {}
    return {k: json.loads(v) for k, v in (cm.get("data") or {}).items() if k.startswith(f"{NS}_")}


def md_status(kube: Kube, name: str) -> dict[str, Any]:
    md = kube.api(f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/{NS}/modeldeployments/{name}") or {}
    st: dict[str, Any] = md.get("status") or {}
    return st


def conflict(kube: Kube, name: str) -> dict[str, Any] | None:
    return next((c for c in md_status(kube, name).get("conditions", []) if c["type"] == "Conflict"), None)


def weights(route: dict[str, Any]) -> dict[str, int]:
    return {b["name"]: b["weight"] for b in route.get("backends", [])}


def test_two_weighted_model_deployments_get_one_weighted_route_and_their_shares(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    v1, v2, v3 = "chat-v1", "chat-v2", "chat-v3"
    op = operator_factory(*FAST)
    apply_docs(kube, doc(v1, 90, sticky=True))
    wait_for(lambda: f"{NS}_{v1}.json" in routes(kube), 30, what="the first member's route")
    time.sleep(1.1)  # creationTimestamp has one-second resolution: v1 is the older
    apply_docs(kube, doc(v2, 10))

    def split_of(expected: dict[str, int]) -> dict[str, Any] | None:
        r = routes(kube)
        got = r.get(f"{NS}_{v1}.json")
        return got if set(r) == {f"{NS}_{v1}.json"} and got is not None and weights(got) == expected else None

    route = wait_for(lambda: split_of({f"{NS}/{v1}": 90, f"{NS}/{v2}": 10}), 30, what="one weighted route")
    assert route["models"] == ["chat"] and route["sticky"] is True and "backend" not in route
    urls = [b["url"] for b in route["backends"]]  # each member's own Serve endpoint
    assert v1 in urls[0] and v2 in urls[1] and NS in urls[0], urls
    Route.model_validate(route)  # the gateway reads it
    wait_for(lambda: md_status(kube, v2).get("traffic", {}).get("share") == 10.0, 30, what="v2's share")
    assert md_status(kube, v1)["traffic"] == {"weight": 90, "share": 90.0, "members": 2, "route": f"{NS}/{v1}"}
    assert md_status(kube, v2)["traffic"] == {"weight": 10, "share": 10.0, "members": 2, "route": f"{NS}/{v1}"}
    assert conflict(kube, v1) is None and conflict(kube, v2) is None  # members of a valid split

    # A weight change: the route and both shares follow (weights need not sum to 100).
    apply_docs(kube, doc(v2, 30))
    wait_for(lambda: split_of({f"{NS}/{v1}": 90, f"{NS}/{v2}": 30}), 30, what="the new weights")
    wait_for(lambda: md_status(kube, v1).get("traffic", {}).get("share") == 75.0, 30, what="v1's new share")
    assert md_status(kube, v2)["traffic"]["share"] == 25.0

    # A third object with the name but no spec.traffic: not a member, the oldest-wins rule applies.
    apply_docs(kube, doc(v3, None))
    cond = wait_for(lambda: (c := conflict(kube, v3)) and c["status"] == "True" and c, 30, what="Conflict on v3")
    assert cond["reason"] == api.Reason.MODEL_NAME_CONFLICT
    assert "not a traffic split" in cond["message"] and "every member must" in cond["message"]
    assert "traffic" not in md_status(kube, v3)
    assert weights(routes(kube)[f"{NS}_{v1}.json"]) == {f"{NS}/{v1}": 90, f"{NS}/{v2}": 30}

    # The oldest member goes: v2 carries the split alone (100%), still under its own key.
    kube.kubectl("delete", "md", v1, "-n", NS)
    wait_for(
        lambda: weights(routes(kube).get(f"{NS}_{v2}.json", {})) == {f"{NS}/{v2}": 30} and len(routes(kube)) == 1,
        30,
        what="v2's route alone",
    )
    wait_for(lambda: md_status(kube, v2).get("traffic", {}).get("members") == 1, 30, what="v2 alone")
    assert md_status(kube, v2)["traffic"]["share"] == 100.0
    op.stop()
    for name in (v2, v3):
        kube.kubectl("delete", "md", name, "-n", NS, "--wait=false")


# --- pure parts ------------------------------------------------------------------------------------


def claim(name: str, second: int, *models: str, traffic: tuple[int, bool] | None = None, ns: str = "a") -> Claim:
    return Claim((ns, name), f"2025-01-01T00:00:{second:02d}Z", models, traffic)


def test_members_with_weights_share_a_name_without_conflict() -> None:
    conflicts, shares = route_plan(
        [claim("v2", 2, "m", "m-lora", traffic=(10, False)), claim("v1", 1, "m", "m-lora", traffic=(90, True))]
    )
    assert conflicts == {}
    assert shares[("a", "v1")].route == shares[("a", "v2")].route == ("a", "v1")
    assert shares[("a", "v1")].members == (("a", "v1"), ("a", "v2"))
    assert shares[("a", "v2")].status() == {"weight": 10, "share": 10.0, "members": 2, "route": "a/v1"}
    assert shares[("a", "v2")].sticky  # sticky when any member asks


@pytest.mark.parametrize(
    ("older", "younger", "why"),
    [
        (claim("v1", 1, "m", traffic=(50, False)), claim("v2", 2, "m"), "this one does not"),
        (claim("v1", 1, "m"), claim("v2", 2, "m", traffic=(50, False)), "a/v1 does not"),
        (claim("v1", 1, "m", traffic=(50, False)), claim("v2", 2, "m", traffic=(50, False), ns="b"), "one namespace"),
        (
            claim("v1", 1, "m", "lora-a", traffic=(50, False)),
            claim("v2", 2, "m", "lora-b", traffic=(50, False)),
            "adapters included",
        ),
        (claim("v1", 1, "m", traffic=(50, False)), claim("v2", 2, "m", "lora", traffic=(50, False)), "same model"),
    ],
)
def test_anything_short_of_a_valid_split_falls_back_to_oldest_wins(older: Claim, younger: Claim, why: str) -> None:
    conflicts, shares = route_plan([younger, older])
    assert set(conflicts) == {younger.key}
    assert conflicts[younger.key].owner == older.key
    assert why in conflicts[younger.key].message() and "not a traffic split" in conflicts[younger.key].message()
    assert younger.key not in shares
    assert (older.key in shares) == (older.traffic is not None)


def test_plain_conflicts_read_as_before() -> None:
    conflicts, shares = route_plan([claim("v2", 2, "m"), claim("v1", 1, "m")])
    assert shares == {} and "traffic split" not in conflicts[("a", "v2")].message()


def test_all_zero_weights_give_zero_shares() -> None:
    _, shares = route_plan([claim("v1", 1, "m", traffic=(0, False)), claim("v2", 2, "m", traffic=(0, False))])
    assert {s.percent for s in shares.values()} == {0.0}


def test_the_gateway_serves_the_merged_route_without_conflict() -> None:
    from rayleigh_gateway.routes import split_route

    def route(name: str) -> Route:
        return Route.model_validate(
            {"name": name, "namespace": "a", "backend": f"http://{name}:8000", "models": ["m", "m-lora"]}
        )

    merged = split_route([(route("v1"), 90), (route("v2"), 10)])
    served, dropped = served_routes([merged])
    assert served == [merged] and dropped == []


def test_status_shows_traffic_and_drops_it_when_the_object_leaves_the_split() -> None:
    base: dict[str, Any] = {"generation": 1, "desired_replicas": 1, "selector": "s", "served_models": ["m"]}
    traffic = {"weight": 10, "share": 10.0, "members": 2, "route": "a/v1"}
    member = status.compute_status(status.Observed(**base, endpoint="e", traffic=traffic), None, "t0")
    assert member["traffic"] == traffic
    alone = status.compute_status(status.Observed(**base, endpoint="e"), member, "t1")
    assert alone["traffic"] is None  # a merge patch removes it
    assert status.status_differs(member, alone)


def test_seeded_objects_count_in_their_split_before_their_first_apply() -> None:
    """After an operator restart the first listing already knows each object's weight, so the
    first routes write cannot turn a younger member into a Conflict or drop it from the split."""
    from rayleigh_operator.state import Tracked

    def body(name: str, second: int, weight: int) -> dict[str, Any]:
        d = doc(name, weight)
        d["apiVersion"], d["kind"] = api.API_VERSION, api.KIND
        d["metadata"]["creationTimestamp"] = f"2025-01-01T00:00:{second:02d}Z"
        return d

    tracked = Tracked()
    tracked.seed([body("v2", 2, 25), body("v1", 1, 75)], wait_seconds=60)
    assert tracked.entries[(NS, "v2")].traffic == (25, False)
    tracked.refresh_conflicts()
    assert tracked.conflicts() == {}
    share = tracked.entries[(NS, "v2")].share
    assert share is not None and share.route == (NS, "v1") and share.percent == 25.0

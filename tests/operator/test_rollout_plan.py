"""The rollout plan (rollout.py) and the analysis decision (analysis.py): pure functions.

The plan is driven here against a small model of what Serve reports (each application's target
and its replicas, which start and stop one poll later): that is a model of Ray Serve for the pure
planner, not a stand-in in a product test; tests/operator/test_rollout_ray.py runs the real one.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rayleigh_api as api
from rayleigh_operator import rollout
from rayleigh_operator.analysis import Sample, Tally, judge, queries

NAMES = ("m", "m-b")


def app(name: str, version: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "route_prefix": "/" if name == "m" else "/b",
        "import_path": "x:y",
        "args": {"llm_config": {"v": version, "deployment_config": {"name": "LLMServer"}}},
        "deployments": [{"name": "LLMServer", "num_replicas": replicas, "autoscaling_config": None}],
    }


class ServeModel:
    """Applications by name: config, replicas as [state]; a step of `tick` moves replicas one state."""

    def __init__(self) -> None:
        self.apps: dict[str, dict[str, Any]] = {}

    def details(self) -> dict[str, Any]:
        out = {}
        for name, a in self.apps.items():
            rebuilding = a.pop("rebuilding", False)
            out[name] = {
                "status": a["status"],
                "deployed_app_config": a["config"],
                # Serve lists no deployment while it rebuilds an application after a PUT.
                "deployments": {}
                if rebuilding
                else {
                    "D": {"replicas": [{"state": s, "replica_id": f"{name}{i}"} for i, s in enumerate(a["replicas"])]}
                },
            }
        return {"applications": out}

    def apply(self, apps: dict[str, dict[str, Any] | None]) -> None:
        for name, cfg in apps.items():
            if cfg is None:
                if name in self.apps:
                    self.apps[name]["status"] = "DELETING"
                continue
            a = self.apps.setdefault(name, {"replicas": [], "status": "DEPLOYING", "config": None})
            if a["config"] == cfg:
                continue  # the operator pushes only what differs
            if a["config"] is not None and rollout.revision(a["config"]) != rollout.revision(cfg):
                a["replicas"] = ["STOPPING" for _ in a["replicas"]]
            a["config"] = copy.deepcopy(cfg)
            a["rebuilding"] = True
            a["status"] = "DEPLOYING"

    def tick(self, broken: str | None = None) -> None:
        """One poll later: stopping replicas are gone, starting ones run, the target is met."""
        for name in list(self.apps):
            a = self.apps[name]
            # scale to zero: the autoscaling range 0..1 from 0 (num_replicas null), no replica
            target = 0 if a["status"] == "DELETING" else rollout.replica_target(a["config"])
            reps = ["RUNNING" if s == "STARTING" else s for s in a["replicas"] if s != "STOPPING"]
            stopping = []
            while len(reps) > target:
                reps.pop()
                stopping.append("STOPPING")
            while len(reps) < target:
                reps.append("STARTING")
            a["replicas"] = reps + stopping
            if a["status"] == "DELETING":
                if not a["replicas"]:
                    del self.apps[name]
                continue
            bad = broken is not None and a["config"]["args"]["llm_config"]["v"] == broken
            a["status"] = "DEPLOY_FAILED" if bad and "RUNNING" in reps else "RUNNING"

    def present(self) -> int:
        return sum(len(a["replicas"]) for a in self.apps.values())

    def versions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.apps.values():
            v = a["config"]["args"]["llm_config"]["v"]
            out[v] = out.get(v, 0) + sum(1 for s in a["replicas"] if s == "RUNNING")
        return out


def drive(
    serve: ServeModel, version: str, n: int, *, surge: int = 0, drain: int = 1, verdict: rollout.Verdict = "continue",
    blocked: str | None = None, broken: str | None = None, rounds: int = 200,
) -> tuple[int, list[str]]:  # fmt: skip
    """Run the plan until nothing changes; the most replicas seen at once, and the phases."""
    most, phases = 0, []
    for _ in range(rounds):
        details = serve.details()
        slots = tuple(rollout.observe(details, name, "D") for name in NAMES)
        desired = (app(NAMES[0], version, n), app(NAMES[1], version, n))
        p = rollout.plan(slots, desired, n, surge=surge, drain=drain, verdict=verdict, blocked=blocked)  # type: ignore[arg-type]
        phases.append(p.phase)
        if p.phase == "RollingBack":
            blocked = rollout.revision(desired[0])
        serve.apply(p.apps)
        serve.tick(broken)
        most = max(most, serve.present())
        if len([v for v, k in serve.versions().items() if k]) == 2:
            phases.append("Mixed")  # both versions served at once: replica by replica, not in place
    return most, phases


def started(n: int, version: str = "v1") -> ServeModel:
    serve = ServeModel()
    drive(serve, version, n)
    assert serve.versions() == {version: n}
    return serve


@given(n=st.integers(1, 6), drain=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_surge_zero_never_has_more_replicas_than_the_spec_and_ends_on_the_new_version(n: int, drain: int) -> None:
    serve = started(n)
    most, phases = drive(serve, "v2", n, drain=drain)
    assert most <= n
    assert ("Mixed" in phases) == (n > drain)
    assert serve.versions() == {"v2": n}
    assert len(serve.apps) == 1


@given(n=st.integers(1, 6), surge=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_surge_starts_at_most_surge_extra_replicas(n: int, surge: int) -> None:
    serve = started(n)
    most, _ = drive(serve, "v2", n, surge=surge, drain=0)
    assert most <= n + surge
    assert serve.versions() == {"v2": n}


def test_a_first_deploy_is_no_rollout() -> None:
    slots = (rollout.Slot("m"), rollout.Slot("m-b"))
    p = rollout.plan(slots, (app("m", "v1", 2), app("m-b", "v1", 2)), 2, surge=0, drain=1, verdict="wait", blocked=None)
    assert p.phase == "Steady" and list(p.apps) == ["m"]


def test_a_step_waits_for_the_verdict() -> None:
    serve = started(2)
    _, phases = drive(serve, "v2", 2, verdict="wait", rounds=30)
    assert serve.versions() == {"v1": 1, "v2": 1}  # one step, then it holds
    assert [x for x in phases if x != "Mixed"][-1] == "Progressing"


def test_pause_holds_the_step_and_reports_paused() -> None:
    serve = started(3)
    _, phases = drive(serve, "v2", 3, verdict="pause", rounds=30)
    assert serve.versions() == {"v1": 2, "v2": 1}
    assert [x for x in phases if x != "Mixed"][-1] == "Paused"


def test_rollback_removes_the_new_version_then_restores_the_old_one() -> None:
    serve = started(2)
    drive(serve, "v2", 2, verdict="wait", rounds=30)
    most, phases = drive(serve, "v2", 2, verdict="rollback", rounds=30)
    assert "RollingBack" in phases and phases[-1] == "RolledBack"
    assert serve.versions() == {"v1": 2}
    assert most <= 2


def test_a_new_version_that_fails_in_serve_is_rolled_back_without_a_verdict() -> None:
    serve = started(2)
    _, phases = drive(serve, "v2", 2, verdict="wait", broken="v2", rounds=40)
    assert "RollingBack" in phases and serve.versions() == {"v1": 2}


def test_a_blocked_revision_is_not_tried_again() -> None:
    serve = started(2)
    _, phases = drive(serve, "v2", 2, blocked=rollout.revision(app("m", "v2")), rounds=10)
    assert set(phases) == {"RolledBack"} and serve.versions() == {"v1": 2}


def test_a_replica_count_change_alone_is_no_rollout() -> None:
    serve = started(2)
    _, phases = drive(serve, "v1", 3, rounds=10)
    assert set(phases) == {"Steady"} and serve.versions() == {"v1": 3}


def test_scaling_to_zero_and_back_is_no_rollout() -> None:
    serve = started(1)
    _, phases = drive(serve, "v1", 0, rounds=10)
    assert set(phases) == {"Steady"} and list(serve.apps) == ["m"] and serve.present() == 0
    (dep,) = serve.apps["m"]["config"]["deployments"]
    assert dep["num_replicas"] is None and dep["autoscaling_config"]["max_replicas"] == 1
    _, phases = drive(serve, "v1", 1, rounds=10)
    assert set(phases) == {"Steady"} and serve.versions() == {"v1": 1} and list(serve.apps) == ["m"]


def test_a_replica_count_is_set_outside_the_args_serve_restarts_replicas_for() -> None:
    legacy = app("m", "v1")
    legacy["args"]["llm_config"]["deployment_config"]["num_replicas"] = 3
    resized = rollout.with_replicas(legacy, 2)
    assert resized["args"] == legacy["args"] and rollout.replica_target(resized) == 2


def test_an_application_removed_by_someone_else_is_deployed_again() -> None:
    serve = started(2)
    serve.apps["m"]["status"] = "DELETING"  # e.g. a restarted Ray head lost it
    slots = (rollout.observe(serve.details(), "m", "D"), rollout.Slot("m-b"))
    p = rollout.plan(slots, (app("m", "v1", 2), app("m-b", "v1", 2)), 2, surge=0, drain=1, verdict="wait", blocked=None)
    assert p.phase == "Steady" and p.apps == {"m": app("m", "v1", 2)}


def test_a_first_deploy_at_zero_runs_no_replica() -> None:
    slots = (rollout.Slot("m"), rollout.Slot("m-b"))
    p = rollout.plan(slots, (app("m", "v1", 0), app("m-b", "v1", 0)), 0, surge=0, drain=1, verdict="wait", blocked=None)
    cfg = p.apps["m"]
    assert cfg is not None and rollout.replica_target(cfg) == 0 and cfg["deployments"][0]["num_replicas"] is None


@pytest.mark.parametrize(
    ("surge", "unavailable", "n", "expected"),
    [(0, 1, 4, (0, 1)), ("25%", 0, 4, (1, 0)), ("0%", "50%", 4, (0, 2)), (0, "10%", 4, (0, 1)), ("10%", 1, 4, (1, 0))],
)
def test_step_sizes_round_like_kubernetes(surge: Any, unavailable: Any, n: int, expected: tuple[int, int]) -> None:
    assert rollout.step_sizes(surge, unavailable, n) == expected


@pytest.mark.parametrize(
    ("old", "new", "expected"), [(2, 0, (100, 0)), (1, 1, (50, 50)), (0, 0, (100, 0)), (1, 2, (33, 67))]
)
def test_weights_follow_ready_replicas(old: int, new: int, expected: tuple[int, int]) -> None:
    assert rollout.weights(old, new) == expected


def test_the_revision_ignores_the_replica_count_name_and_route() -> None:
    assert rollout.revision(app("m", "v1", 1)) == rollout.revision(app("m-b", "v1", 5))
    legacy = app("m", "v1")
    legacy["args"]["llm_config"]["deployment_config"]["num_replicas"] = 3  # an older operator's config
    assert rollout.revision(legacy) == rollout.revision(app("m", "v1"))
    assert rollout.revision(app("m", "v1")) != rollout.revision(app("m", "v2"))


# --- analysis ------------------------------------------------------------------------------------

SETTINGS = api.Analysis(min_requests=10, max_error_rate_increase=0.05, max_ttft_ratio=1.5, failure_limit=2)


@pytest.mark.parametrize(
    ("new", "old", "result"),
    [
        (Sample(100, 0, 0.1), Sample(100, 0, 0.1), "Passed"),
        (Sample(100, 4, 0.1), Sample(100, 0, 0.1), "Passed"),
        (Sample(100, 6, 0.1), Sample(100, 0, 0.1), "Failed"),
        (Sample(100, 50, 0.1), Sample(100, 48, 0.1), "Passed"),
        (Sample(100, 0, 0.16), Sample(100, 0, 0.1), "Failed"),
        (Sample(100, 0, 0.14), Sample(100, 0, 0.1), "Passed"),
        (Sample(100, 0, 0.5), Sample(None, None, None), "Passed"),
        (Sample(5, 5, None), Sample(100, 0, 0.1), "Inconclusive"),
        (Sample(None, None, None), Sample(100, 0, 0.1), "Inconclusive"),
        (Sample(20, 20, None), Sample(20, 0, None), "Failed"),
    ],
)
def test_judge_compares_the_new_version_with_the_old_one(new: Sample, old: Sample, result: str) -> None:
    assert judge(new, old, SETTINGS).result == result


@given(new_req=st.floats(10, 1e6), new_err=st.floats(0, 1), old_req=st.floats(1, 1e6), old_err=st.floats(0, 1))
def test_judge_never_fails_a_version_no_worse_than_the_old_one(
    new_req: float, new_err: float, old_req: float, old_err: float
) -> None:
    rate = min(new_err, old_err)
    new, old = Sample(new_req, rate * new_req, 0.1), Sample(old_req, old_err * old_req, 0.1)
    assert judge(new, old, SETTINGS).result == "Passed"


def test_the_tally_rolls_back_after_the_failure_limit_and_pauses_after_inconclusive_ones() -> None:
    t = Tally()
    assert t.record("Failed", SETTINGS) == "wait"
    assert t.record("Failed", SETTINGS) == "rollback"
    t = Tally()
    assert [t.record("Inconclusive", SETTINGS) for _ in range(3)] == ["wait", "wait", "pause"]
    t = Tally()
    assert [t.record(r, SETTINGS) for r in ("Failed", "Passed", "Failed")] == ["wait", "continue", "wait"]


def test_queries_select_a_version_by_its_replicas() -> None:
    q = queries(("w1", "w2"), ("r1",), 30)
    assert 'WorkerId=~"w1|w2"' in q["requests"] and "[30s]" in q["errors"]
    assert 'ReplicaId=~"r1"' in q["ttft_p95"]
    assert 'WorkerId=~"none"' in queries((), (), 5)["requests"]  # no replicas: matches nothing

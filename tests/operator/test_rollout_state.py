"""The operator's rollout memory (rollout_state.py): commands, status.rollout and its conditions."""

from __future__ import annotations

import asyncio
from typing import Any

import rayleigh_api as api
from rayleigh_operator import rollout
from rayleigh_operator.analysis import Prometheus
from rayleigh_operator.rollout_state import Rollouts
from rayleigh_operator.state import Entry


def md(replicas: int = 2) -> api.ModelDeployment:
    return api.ModelDeployment.model_validate(
        {
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"model": {"source": "hf://org/model"}, "replicas": replicas, "resources": {"gpus": 1}},
        }
    )


def slot(name: str, revision: str, target: int, running: int, status: str = "RUNNING") -> rollout.Slot:
    return rollout.Slot(
        name, exists=True, revision=revision, target=target, running=running, present=running, status=status
    )


def entry(status: dict[str, Any] | None = None) -> Entry:
    return Entry(namespace="default", name="m", body={"metadata": {"name": "m"}}, status=status)


def test_abort_rolls_back_with_the_reason() -> None:
    r, e = Rollouts(None), entry()
    slots = (slot("m", "old", 1, 1), slot("m-b", "new", 1, 1))
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "wait"  # the step's window starts now
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "continue"  # no Prometheus: readiness alone
    r.command(e, "abort")
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "rollback"
    r.observe(e, md(), "new", rollout.Plan(phase="RollingBack", old=slots[0], new=slots[1]))
    status: dict[str, Any] = {"conditions": []}
    r.decorate(e, status)
    assert status["rollout"]["phase"] == "RolledBack" and status["rollout"]["reason"] == "Aborted"
    cond = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert cond["status"] == "True" and cond["reason"] == "Aborted"


def test_a_new_version_serve_failed_is_rolled_back_as_new_version_failed() -> None:
    r, e = Rollouts(None), entry()
    bad = slot("m-b", "new", 1, 0, status="DEPLOY_FAILED")
    r.observe(e, md(), "new", rollout.Plan(phase="RollingBack", old=slot("m", "old", 1, 1), new=bad))
    assert r.of(e).status is not None and r.of(e).status["reason"] == "NewVersionFailed"  # type: ignore[index]


def test_a_rollback_survives_an_operator_restart() -> None:
    e = entry({"rollout": {"phase": "RolledBack", "newRevision": "new", "reason": "AnalysisFailed", "message": "x"}})
    r = Rollouts(None)
    assert r.of(e).blocked == "new"
    slots = (slot("m", "old", 2, 2), rollout.Slot("m-b"))
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "rollback"


def test_progressing_shows_the_step_and_weight() -> None:
    r, e = Rollouts(None), entry()
    old, new = slot("m", "old", 1, 1), slot("m-b", "new", 1, 1)
    asyncio.run(r.verdict(e, md(), "new", (old, new)))
    r.observe(e, md(), "new", rollout.Plan(phase="Progressing", old=old, new=new))
    status: dict[str, Any] = {"conditions": [{"type": "Progressing", "status": "False", "reason": "AllReplicasReady"}]}
    r.decorate(e, status)
    assert status["rollout"]["step"] == 1 and status["rollout"]["steps"] == 2 and status["rollout"]["newWeight"] == 50
    cond = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert cond["status"] == "True" and cond["reason"] == "RolloutStep" and "step 1/2" in cond["message"]


def test_promote_resumes_a_paused_rollout() -> None:
    r, e = Rollouts(None), entry()
    r.of(e).revision, r.of(e).phase = "new", "Paused"
    slots = (slot("m", "old", 1, 1), slot("m-b", "new", 1, 1))
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "pause"
    r.command(e, "promote")
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "continue"


class AnsweringPrometheus(Prometheus):
    """Prometheus' HTTP answer to every query (the edge only; `sample` and `queries` run for real)."""

    def __init__(self, value: float) -> None:
        super().__init__("http://prometheus.invalid")
        self.value = value
        self.asked = 0

    async def query(self, expr: str) -> float | None:
        self.asked += 1
        return self.value


def test_a_passed_step_keeps_moving_on_until_the_next_step() -> None:
    """Removing the drained application takes more than one sync (the route settles first): the
    step's pass must hold for those syncs, not only for the one that ran the analysis."""
    r, e = Rollouts(None), entry()
    prom = AnsweringPrometheus(50.0)
    r.prometheus = prom
    slots = (slot("m", "old", 1, 1), slot("m-b", "new", 1, 1))
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "wait"  # the step's window starts now
    r.of(e).step_since -= md().spec.rollout.analysis.interval_seconds  # the window has passed
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "continue"
    asked = prom.asked
    assert asyncio.run(r.verdict(e, md(), "new", slots)) == "continue"  # no new window needed
    assert prom.asked == asked
    next_step = (slot("m", "old", 0, 0), slot("m-b", "new", 2, 1))
    assert asyncio.run(r.verdict(e, md(), "new", next_step)) == "wait"

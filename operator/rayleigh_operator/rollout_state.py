"""Rollouts, the operator's side: per ModelDeployment what the plan (rollout.py) cannot read back
from Serve: when the current step's replicas were all in place, the analysis tally, the user's
`rayleigh rollout promote|abort` commands, a revision rolled back, and what to show in status.

The commands arrive as the annotation `serving.rayleigh.dev/rollout-command` (`promote` or
`abort`), which the operator removes once it has taken them in. The spec a rollout replaces is
kept in the annotation `serving.rayleigh.dev/previous-spec` for `rayleigh rollout undo`.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import rayleigh_api as api
from rayleigh_operator import rollout
from rayleigh_operator.analysis import Judgement, Prometheus, PrometheusError, Sample, Tally, judge
from rayleigh_operator.state import Entry

log = logging.getLogger("rayleigh.operator")

COMMAND_ANNOTATION = "serving.rayleigh.dev/rollout-command"
STABLE_SPEC_ANNOTATION = "serving.rayleigh.dev/stable-spec"
PREVIOUS_SPEC_ANNOTATION = "serving.rayleigh.dev/previous-spec"


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Memory:
    """One ModelDeployment's rollout, as far as Serve does not tell it."""

    revision: str | None = None  # the new revision this memory is about
    step_key: tuple[int, int] | None = None  # (old target, new target) of the step being judged
    step_since: float = 0.0  # monotonic: when its replicas were all in place
    passed: tuple[int, int] | None = None  # the step the analysis passed: it moves on, whatever syncs it takes
    tally: Tally = field(default_factory=Tally)
    judgement: Judgement | None = None
    samples: tuple[Sample, Sample] | None = None
    checked_at: str | None = None
    promoted: bool = False
    aborted: bool = False
    blocked: str | None = None  # a revision rolled back: not tried again until the spec changes
    reason: str = ""
    message: str = ""
    phase: str | None = None  # Progressing | Paused | Completed | RolledBack
    status: dict[str, Any] | None = None  # status.rollout as last computed


class Rollouts:
    def __init__(self, prometheus_url: str | None) -> None:
        self.prometheus = Prometheus(prometheus_url) if prometheus_url else None
        self.memory: dict[tuple[str, str], Memory] = {}

    def of(self, entry: Entry) -> Memory:
        mem = self.memory.get(entry.key)
        if mem is None:
            mem = self.memory[entry.key] = Memory()
            # After a restart: a rollback stays a rollback (status.rollout survives in the object).
            last = (entry.status or {}).get("rollout") or {}
            if last.get("phase") == "RolledBack":
                mem.blocked, mem.phase = last.get("newRevision"), "RolledBack"
                mem.reason, mem.message = last.get("reason", ""), last.get("message", "")
                mem.status = last
        return mem

    def forget(self, key: tuple[str, str]) -> None:
        self.memory.pop(key, None)

    def command(self, entry: Entry, command: str) -> None:
        mem = self.of(entry)
        if command == "promote":
            mem.promoted = True
            if mem.phase == "Paused":
                mem.phase = "Progressing"
        elif command == "abort":
            mem.aborted = True
        log.info("%s/%s: rollout %s", entry.namespace, entry.name, command)

    async def verdict(
        self, entry: Entry, md: api.ModelDeployment, want: str, slots: tuple[rollout.Slot, rollout.Slot]
    ) -> rollout.Verdict:
        """The word on the current step: the user's command, else the analysis once the window passed."""
        mem = self.of(entry)
        if mem.revision != want:  # a new rollout (or none): fresh memory, a rollback stays blocked
            blocked = mem.blocked if mem.blocked == want else None
            self.memory[entry.key] = mem = Memory(revision=want, blocked=blocked)
            if blocked:
                mem.phase = "RolledBack"
        if mem.phase == "RolledBack":
            return "rollback"
        if mem.aborted:
            mem.reason, mem.message = api.Reason.ABORTED, "aborted by `rayleigh rollout abort`"
            return "rollback"
        if mem.promoted:
            return "continue"
        if mem.phase == "Paused":
            return "pause"
        old, new = _old_new(slots, want)
        if old is None or new is None or new.target == 0:
            return "wait"
        key = (old.target, new.target)
        if mem.step_key != key or not (new.running >= new.target and old.present <= old.target):
            # The step is not in place yet: its window starts once it is.
            mem.step_key, mem.step_since = key, time.monotonic()
            return "wait"
        if mem.passed == key:
            # Passed: the next move (removing a drained application waits for the gateways to
            # read the new route first) takes more than this one sync.
            return "continue"
        settings = md.spec.rollout.analysis
        if not settings.enabled or self.prometheus is None:
            return "continue"
        if time.monotonic() - mem.step_since < settings.interval_seconds:
            return "wait"
        window = settings.interval_seconds
        try:
            new_s = await self.prometheus.sample(new.worker_ids, new.replica_ids, window)
            old_s = await self.prometheus.sample(old.worker_ids, old.replica_ids, window)
            j = judge(new_s, old_s, settings)
            mem.samples = (new_s, old_s)
        except PrometheusError as exc:
            j = Judgement("Inconclusive", str(exc))
        mem.judgement, mem.checked_at = j, _now()
        mem.step_since = time.monotonic()  # the next check reads the next window
        word = mem.tally.record(j.result, settings)
        log.info("%s/%s: rollout analysis %s: %s -> %s", entry.namespace, entry.name, j.result, j.message, word)
        if word == "continue":
            mem.passed = key
        elif word == "rollback":
            mem.reason, mem.message = api.Reason.ANALYSIS_FAILED, j.message
        elif word == "pause":
            mem.phase = "Paused"
            mem.reason, mem.message = api.Reason.ROLLOUT_PAUSED, f"analysis inconclusive: {j.message}"
        return word

    def observe(self, entry: Entry, md: api.ModelDeployment, want: str, p: rollout.Plan) -> None:
        """Fold the plan into the memory and status.rollout."""
        mem = self.of(entry)
        n = max(1, md.spec.replicas)
        if p.phase == "RollingBack":
            mem.blocked = want
            if p.new is not None and p.new.status in ("DEPLOY_FAILED", "UNHEALTHY") and not mem.reason:
                mem.reason = api.Reason.NEW_VERSION_FAILED
                mem.message = f"the new version failed in Serve: {p.new.message}"[:500]
            mem.phase = "RolledBack"
        elif p.phase == "RolledBack":
            mem.phase = "RolledBack"
        elif p.phase == "Paused":
            mem.phase = "Paused"
        elif p.phase == "Progressing":
            mem.phase = "Progressing"
        elif (
            mem.phase in ("Progressing", "Paused")
            and p.serving is not None
            and p.serving.revision == want
            and p.serving.running >= n
        ):
            mem.phase, mem.reason, mem.message = "Completed", api.Reason.ROLLOUT_COMPLETE, ""
        if mem.phase is None:
            mem.status = None
            return
        old_running, new_running = rollout.seats(p)
        new_slot = p.new or (p.serving if mem.phase == "Completed" else None)
        old_slot = p.old or (p.serving if mem.phase == "RolledBack" else None)
        st: dict[str, Any] = {
            "phase": mem.phase,
            "step": (new_slot.target if new_slot and not new_slot.deleting else 0) if mem.phase != "RolledBack" else 0,
            "steps": n,
            "oldReplicas": old_slot.present if old_slot else 0,
            "newReplicas": new_slot.present if new_slot and mem.phase != "RolledBack" else 0,
            "oldRevision": old_slot.revision if old_slot else None,
            "newRevision": want,
            "newWeight": rollout.weights(old_running, new_running)[1] if p.old and p.new else None,
            "reason": str(mem.reason),
            "message": mem.message,
        }
        if mem.judgement is not None:
            new_s, old_s = mem.samples or (Sample(), Sample())
            st["analysis"] = {
                "result": mem.judgement.result,
                "message": mem.judgement.message,
                "newErrorRate": new_s.error_rate,
                "oldErrorRate": old_s.error_rate,
                "newTtftP95Seconds": _finite(new_s.ttft_p95),
                "oldTtftP95Seconds": _finite(old_s.ttft_p95),
                "newRequests": new_s.requests,
                "failures": mem.tally.failures,
                "inconclusive": mem.tally.inconclusive,
                "checkedAt": mem.checked_at,
            }
        mem.status = api.RolloutStatus.model_validate(st).model_dump(by_alias=True, exclude_none=True, mode="json")

    def decorate(self, entry: Entry, status: dict[str, Any]) -> None:
        """status.rollout, the Progressing condition while a rollout runs, and RolledBack."""
        mem = self.memory.get(entry.key)
        if mem is None or mem.status is None:
            if (entry.status or {}).get("rollout") is not None:
                status["rollout"] = None  # a merge patch removes it: no rollout since (e.g. undone)
            return
        status["rollout"] = mem.status
        conditions = status.setdefault("conditions", [])
        previous = {c.get("type"): c for c in (entry.status or {}).get("conditions", [])}
        phase = mem.status["phase"]
        if phase in ("Progressing", "Paused"):
            st = mem.status
            if phase == "Progressing":
                value = (
                    "True",
                    api.Reason.ROLLOUT_STEP,
                    f"rollout step {st['step']}/{st['steps']}: "
                    f"{st['newReplicas']} new and {st['oldReplicas']} old replicas",
                )
            else:
                value = ("Unknown", api.Reason.ROLLOUT_PAUSED, mem.message or "paused")
            _set(conditions, previous, api.ConditionType.PROGRESSING, value)
        if phase == "RolledBack":
            _set(conditions, previous, api.ConditionType.ROLLED_BACK, ("True", str(mem.reason), mem.message))
        elif phase == "Completed":
            _set(conditions, previous, api.ConditionType.ROLLED_BACK, ("False", api.Reason.ROLLOUT_COMPLETE, ""))


def _finite(value: float | None) -> float | None:
    return None if value is None or value != value or value in (float("inf"), float("-inf")) else value


def _set(
    conditions: list[dict[str, Any]], previous: dict[Any, dict[str, Any]], ctype: str, value: tuple[str, str, str]
) -> None:
    status, reason, message = value
    old = previous.get(ctype) or {}
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    cond = {
        "type": str(ctype),
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": since or _now(),
    }
    for i, c in enumerate(conditions):
        if c.get("type") == ctype:
            cond["observedGeneration"] = c.get("observedGeneration")
            conditions[i] = {k: v for k, v in cond.items() if v is not None}
            return
    conditions.append(cond)


def _old_new(slots: tuple[rollout.Slot, rollout.Slot], want: str) -> tuple[rollout.Slot | None, rollout.Slot | None]:
    a, b = slots
    if a.exists and b.exists:
        return (b, a) if a.revision == want else (a, b)
    return None, None


def spec_without_replicas(body: dict[str, Any]) -> str:
    spec = dict(body.get("spec") or {})
    spec.pop("replicas", None)
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))

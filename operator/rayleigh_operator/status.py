"""Pure status computation: observed children + Serve state -> ModelDeployment status.

Nothing here reads a clock or the network: the operator passes what it observed and `now`, and
gets back the status to write (the typed `api.ModelDeploymentStatus`, as the API's JSON) and the
transitions to report as Events. Phases, condition types and reasons are rayleigh_api's
(`api.Phase`, `api.ConditionType`, `api.Reason`). Phases:

  Pending    the Ray head is not ready yet (nothing can be deployed)
  Deploying  the Serve application is being deployed / the model is loading / workers starting
  Ready      Serve runs the application and at least one replica serves
  Degraded   it served before (or still serves) but something is wrong: head lost, replicas
             unavailable, Serve reports the application unhealthy
  Failed     it cannot work as specified: invalid spec, a GPU count no node offers, Serve
             rejected or failed to deploy the application; the operator does not retry until
             the spec changes (no crash loop)

Conditions: Ready, Progressing, Degraded (status True/False with a CamelCase reason),
AutoscalingMetricMissing when spec.autoscaling names a metric the custom metrics API lacks, and
Conflict while an older ModelDeployment serves one of this one's model names (it then has no gateway
route and no endpoint; once the condition has appeared it stays, False, after the conflict ends).

An apply the API server refused (403: the operator's role lacks a permission) makes the phase
Degraded with reason Forbidden whatever else is seen: it cannot converge until an administrator
grants the permission, and it is retried meanwhile (so not Failed, which waits for a spec change).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import rayleigh_api as api
from rayleigh_api import ConditionType, Phase, Reason

# A condition's (status, reason, message). Reasons are `api.Reason` values, except the ones the
# custom metrics check names for AutoscalingMetricMissing (rayleigh_operator.preflight).
Value = tuple[Literal["True", "False"], str, str]


@dataclass(frozen=True)
class Observed:
    """What the operator saw, this round."""

    generation: int
    desired_replicas: int
    selector: str
    served_models: list[str]
    endpoint: str
    # A spec problem found before creating anything: (reason, message), the reason one of
    # api.FAILED_REASONS.
    spec_problem: tuple[str, str] | None = None
    head_ready: bool = False
    head_message: str = "the Ray head pod is not ready"
    workers_replicas: int = 0
    workers_ready: int = 0
    # Serve application: None when not asked (head not ready); else the AppState status string.
    serve_status: str | None = None
    serve_message: str = ""
    serve_running_replicas: int = 0
    # A PUT refused by Serve or by the operator's own checks (e.g. route prefix taken): message.
    serve_push_error: str | None = None
    # (reason, message) when spec.autoscaling's metric is missing; None when fine or unused.
    metric_missing: tuple[str, str] | None = None
    autoscaling: bool = False
    # (reason, message) when the API server refused applying children (Reason.FORBIDDEN).
    apply_error: tuple[str, str] | None = None
    # Message when an older ModelDeployment serves one of this one's names (no route).
    conflict: str | None = None
    # Its part in a traffic split (status.traffic: weight, share, members, route), if any.
    traffic: dict[str, Any] | None = None


@dataclass
class Decision:
    phase: Phase
    ready: Value
    progressing: Value
    degraded: Value
    ready_replicas: int


def decide(obs: Observed, previous_phase: str | None) -> Decision:
    d = _decide(obs, previous_phase)
    if obs.apply_error is None or obs.spec_problem is not None:
        return d
    reason, message = obs.apply_error
    # Still serving (a later change refused) keeps Ready True; nothing converges until the permission
    # is granted: Degraded, not progressing, retried with backoff.
    ready: Value = ("True", reason, message) if d.ready[0] == "True" else ("False", reason, message)
    return Decision(
        Phase.DEGRADED,
        ready,
        ("False", reason, "retried with backoff until the permission is granted"),
        ("True", reason, message),
        d.ready_replicas,
    )


def _decide(obs: Observed, previous_phase: str | None) -> Decision:
    served_before = previous_phase in (Phase.READY, Phase.DEGRADED)
    if obs.spec_problem is not None:
        reason, message = obs.spec_problem
        return Decision(
            Phase.FAILED,
            ("False", reason, message),
            ("False", reason, "not retried until the spec changes"),
            ("True", reason, message),
            0,
        )
    if not obs.head_ready:
        msg = obs.head_message
        if served_before:
            return Decision(
                Phase.DEGRADED,
                ("False", Reason.RAY_HEAD_NOT_READY, msg),
                ("True", Reason.RAY_HEAD_NOT_READY, msg),
                ("True", Reason.RAY_HEAD_NOT_READY, msg),
                0,
            )
        return Decision(
            Phase.PENDING,
            ("False", Reason.RAY_HEAD_NOT_READY, msg),
            ("True", Reason.RAY_HEAD_NOT_READY, msg),
            ("False", Reason.RAY_HEAD_NOT_READY, ""),
            0,
        )
    live = obs.serve_status not in (None, "MISSING", "NOT_STARTED", "DELETING")
    serving = min(obs.workers_ready, obs.serve_running_replicas) if live else 0
    if obs.serve_push_error is not None or obs.serve_status == "DEPLOY_FAILED":
        message = obs.serve_push_error or obs.serve_message or "Serve failed to deploy the application"
        phase = Phase.DEGRADED if serving > 0 else Phase.FAILED
        ready: Value = ("True" if serving > 0 else "False", Reason.SERVE_DEPLOY_FAILED, message)
        return Decision(
            phase,
            ready,
            ("False", Reason.SERVE_DEPLOY_FAILED, "not retried until the spec changes"),
            ("True", Reason.SERVE_DEPLOY_FAILED, message),
            serving,
        )
    if obs.serve_status == "UNHEALTHY":
        message = obs.serve_message or "Serve reports the application unhealthy"
        return Decision(
            Phase.DEGRADED,
            ("True" if serving else "False", Reason.SERVE_UNHEALTHY, message),
            ("False", Reason.SERVE_UNHEALTHY, message),
            ("True", Reason.SERVE_UNHEALTHY, message),
            serving,
        )
    if obs.serve_status != "RUNNING":
        message = f"Serve application {(obs.serve_status or 'not deployed').lower().replace('_', ' ')}"
        if obs.serve_message:
            message += f": {obs.serve_message}"
        if serving > 0:
            # Updating in place (e.g. a Serve-level change): still serving.
            return Decision(
                Phase.READY,
                ("True", Reason.MODEL_LOADING, message),
                ("True", Reason.MODEL_LOADING, message),
                ("False", Reason.MODEL_LOADING, ""),
                serving,
            )
        return Decision(
            Phase.DEPLOYING,
            ("False", Reason.MODEL_LOADING, message),
            ("True", Reason.MODEL_LOADING, message),
            ("False", Reason.MODEL_LOADING, ""),
            0,
        )
    desired = obs.desired_replicas
    if serving == 0 and desired > 0:
        message = (
            f"{obs.workers_ready}/{desired} worker pods ready, {obs.serve_running_replicas} Serve replicas running"
        )
        if served_before:
            return Decision(
                Phase.DEGRADED,
                ("False", Reason.REPLICAS_UNAVAILABLE, message),
                ("True", Reason.WORKERS_NOT_READY, message),
                ("True", Reason.REPLICAS_UNAVAILABLE, message),
                0,
            )
        return Decision(
            Phase.DEPLOYING,
            ("False", Reason.WORKERS_NOT_READY, message),
            ("True", Reason.WORKERS_NOT_READY, message),
            ("False", Reason.WORKERS_NOT_READY, ""),
            0,
        )
    if serving < desired:
        message = f"{serving}/{desired} replicas serving"
        scaling = obs.workers_replicas != desired or obs.serve_running_replicas < desired
        if scaling:
            return Decision(
                Phase.READY,
                ("True", Reason.SCALING, message),
                ("True", Reason.SCALING, message),
                ("False", Reason.SCALING, ""),
                serving,
            )
        return Decision(
            Phase.DEGRADED,
            ("True", Reason.REPLICAS_UNAVAILABLE, message),
            ("False", Reason.REPLICAS_UNAVAILABLE, ""),
            ("True", Reason.REPLICAS_UNAVAILABLE, message),
            serving,
        )
    message = f"{serving}/{desired} replicas serving"
    return Decision(
        Phase.READY,
        ("True", Reason.ALL_REPLICAS_READY, message),
        ("False", Reason.ALL_REPLICAS_READY, ""),
        ("False", Reason.ALL_REPLICAS_READY, ""),
        serving,
    )


def _condition(
    ctype: ConditionType, value: Value, previous: dict[str, dict[str, Any]], now: str, generation: int
) -> api.Condition:
    status, reason, message = value
    old = previous.get(ctype)
    changed = old is None or old.get("status") != status
    return api.Condition(
        type=ctype,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if changed or old is None else old.get("lastTransitionTime", now),
        observed_generation=generation,
    )


def compute_status(obs: Observed, previous: dict[str, Any] | None, now: str) -> dict[str, Any]:
    """The full status to write, as the API's JSON (a merge patch replaces conditions as a whole)."""
    previous = previous or {}
    prev_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    previous_phase = previous.get("phase")
    prev_ready = prev_conditions.get(ConditionType.READY) or {}
    if prev_ready.get("reason") == Reason.FORBIDDEN and prev_ready.get("status") != "True":
        previous_phase = None  # Degraded only because an apply was refused: it has not served
    d = decide(obs, previous_phase)
    conditions = [
        _condition(ConditionType.READY, d.ready, prev_conditions, now, obs.generation),
        _condition(ConditionType.PROGRESSING, d.progressing, prev_conditions, now, obs.generation),
        _condition(ConditionType.DEGRADED, d.degraded, prev_conditions, now, obs.generation),
    ]
    if obs.autoscaling:
        metric: Value = (
            ("True", *obs.metric_missing) if obs.metric_missing is not None else ("False", Reason.METRIC_AVAILABLE, "")
        )
        conditions.append(
            _condition(ConditionType.AUTOSCALING_METRIC_MISSING, metric, prev_conditions, now, obs.generation)
        )
    if obs.conflict is not None or ConditionType.CONFLICT in prev_conditions:
        conflict: Value = (
            ("True", Reason.MODEL_NAME_CONFLICT, obs.conflict)
            if obs.conflict is not None
            else ("False", Reason.NO_CONFLICT, "")
        )
        conditions.append(_condition(ConditionType.CONFLICT, conflict, prev_conditions, now, obs.generation))
    status = api.ModelDeploymentStatus(
        phase=d.phase,
        conditions=conditions,
        replicas=obs.workers_replicas,
        ready_replicas=d.ready_replicas,
        selector=obs.selector,
        served_models=list(obs.served_models),
        observed_generation=obs.generation,
        # No endpoint while not serving, or while another ModelDeployment holds the name (no route).
        endpoint=obs.endpoint if d.ready_replicas > 0 and obs.conflict is None else None,
        traffic=api.TrafficStatus.model_validate(obs.traffic) if obs.traffic is not None else None,
    )
    out = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    # A merge patch removes a field only when it is sent as null: a model that stops serving must
    # lose its endpoint, one that leaves a split its traffic.
    out.setdefault("endpoint", None)
    out.setdefault("traffic", None)
    return out


@dataclass(frozen=True)
class Transition:
    type: str  # Normal | Warning
    reason: str
    message: str


WARNING_PHASES = {Phase.FAILED, Phase.DEGRADED}


# Conditions independent of the phase: a change of theirs is posted even with a phase change.
_OWN_EVENT = frozenset({ConditionType.CONFLICT, ConditionType.ROLLED_BACK})


def transitions(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[Transition]:
    """Events to post: one per phase change, else one per condition whose status/reason changed
    (a Conflict change is posted in both cases: it says nothing about the phase)."""
    previous = previous or {}
    cur = {c["type"]: c for c in current.get("conditions", [])}
    prev = {c.get("type"): c for c in previous.get("conditions") or []}
    phase_changed = previous.get("phase") != current.get("phase")
    out = []
    if phase_changed:
        ready = cur.get(ConditionType.READY, {})
        phase = current["phase"]
        reason = ready.get("reason") or phase
        message = f"phase {previous.get('phase') or 'None'} -> {phase}"
        if ready.get("message"):
            message += f": {ready['message']}"
        out.append(Transition("Warning" if phase in WARNING_PHASES else "Normal", reason, message))
    for ctype, c in cur.items():
        if phase_changed and ctype not in _OWN_EVENT:
            continue
        p = prev.get(ctype)
        if p is None or p.get("status") != c["status"] or p.get("reason") != c["reason"]:
            bad = (ctype == ConditionType.READY and c["status"] == "False") or (
                ctype
                in (
                    ConditionType.DEGRADED,
                    ConditionType.AUTOSCALING_METRIC_MISSING,
                    ConditionType.CONFLICT,
                    ConditionType.ROLLED_BACK,
                )
                and c["status"] == "True"
            )
            out.append(
                Transition(
                    "Warning" if bad else "Normal",
                    c["reason"],
                    f"{ctype}={c['status']}" + (f": {c['message']}" if c["message"] else ""),
                )
            )
    return out


def status_differs(previous: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether writing `current` changes anything (ignoring transition timestamps)."""
    previous = previous or {}

    def strip(s: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in s.items() if k != "conditions" and v is not None}
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []
        ]
        return out

    prev = {k: v for k, v in previous.items() if k in current or k == "conditions"}
    return strip(prev) != strip(current)

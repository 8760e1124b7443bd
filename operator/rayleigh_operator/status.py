"""Pure status computation: observed children + Serve state -> ModelDeployment status.

Nothing here reads a clock or the network: the operator passes what it observed and `now`, and
gets back the status to write and the transitions to report as Events. Phases:

  Pending    the Ray head is not ready yet (nothing can be deployed)
  Deploying  the Serve application is being deployed / the model is loading / workers starting
  Ready      Serve runs the application and at least one replica serves
  Degraded   it served before (or still serves) but something is wrong: head lost, replicas
             unavailable, Serve reports the application unhealthy
  Failed     it cannot work as specified: invalid spec, a GPU count no node offers, Serve
             rejected or failed to deploy the application; the operator does not retry until
             the spec changes (no crash loop)

Conditions: Ready, Progressing, Degraded (status True/False with a CamelCase reason), and
AutoscalingMetricMissing when spec.autoscaling names a metric the custom metrics API lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Reasons (stable: documented in docs/OPERATOR.md, used by alerts and tests).
INVALID_SPEC = "InvalidSpec"
INSUFFICIENT_GPU = "InsufficientGPU"
RAY_HEAD_NOT_READY = "RayHeadNotReady"
SERVE_DEPLOY_FAILED = "ServeDeployFailed"
SERVE_UNHEALTHY = "ServeUnhealthy"
MODEL_LOADING = "ModelLoading"
WORKERS_NOT_READY = "WorkersNotReady"
SCALING = "Scaling"
REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
ALL_REPLICAS_READY = "AllReplicasReady"
METRIC_MISSING = "AutoscalingMetricMissing"
METRIC_AVAILABLE = "MetricAvailable"

FAILED_REASONS = {INVALID_SPEC, INSUFFICIENT_GPU}


@dataclass(frozen=True)
class Observed:
    """What the operator saw, this round."""

    generation: int
    desired_replicas: int
    selector: str
    served_models: list[str]
    endpoint: str
    # A spec problem found before creating anything: (reason, message).
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


@dataclass
class Decision:
    phase: str
    ready: tuple[str, str, str]  # status, reason, message
    progressing: tuple[str, str, str]
    degraded: tuple[str, str, str]
    ready_replicas: int
    extra: list[dict[str, Any]] = field(default_factory=list)


def decide(obs: Observed, previous_phase: str | None) -> Decision:
    served_before = previous_phase in ("Ready", "Degraded")
    if obs.spec_problem is not None:
        reason, message = obs.spec_problem
        return Decision(
            "Failed",
            ("False", reason, message),
            ("False", reason, "not retried until the spec changes"),
            ("True", reason, message),
            0,
        )
    if not obs.head_ready:
        msg = obs.head_message
        if served_before:
            return Decision(
                "Degraded",
                ("False", RAY_HEAD_NOT_READY, msg),
                ("True", RAY_HEAD_NOT_READY, msg),
                ("True", RAY_HEAD_NOT_READY, msg),
                0,
            )
        return Decision(
            "Pending",
            ("False", RAY_HEAD_NOT_READY, msg),
            ("True", RAY_HEAD_NOT_READY, msg),
            ("False", RAY_HEAD_NOT_READY, ""),
            0,
        )
    live = obs.serve_status not in (None, "MISSING", "NOT_STARTED", "DELETING")
    serving = min(obs.workers_ready, obs.serve_running_replicas) if live else 0
    if obs.serve_push_error is not None or obs.serve_status == "DEPLOY_FAILED":
        message = obs.serve_push_error or obs.serve_message or "Serve failed to deploy the application"
        phase = "Degraded" if serving > 0 else "Failed"
        ready = ("True" if serving > 0 else "False", SERVE_DEPLOY_FAILED, message)
        return Decision(
            phase,
            ready,
            ("False", SERVE_DEPLOY_FAILED, "not retried until the spec changes"),
            ("True", SERVE_DEPLOY_FAILED, message),
            serving,
        )
    if obs.serve_status == "UNHEALTHY":
        message = obs.serve_message or "Serve reports the application unhealthy"
        return Decision(
            "Degraded",
            ("True" if serving else "False", SERVE_UNHEALTHY, message),
            ("False", SERVE_UNHEALTHY, message),
            ("True", SERVE_UNHEALTHY, message),
            serving,
        )
    if obs.serve_status != "RUNNING":
        message = f"Serve application {(obs.serve_status or 'not deployed').lower().replace('_', ' ')}"
        if obs.serve_message:
            message += f": {obs.serve_message}"
        if serving > 0:
            # Updating in place (e.g. a Serve-level change): still serving.
            return Decision(
                "Ready",
                ("True", MODEL_LOADING, message),
                ("True", MODEL_LOADING, message),
                ("False", MODEL_LOADING, ""),
                serving,
            )
        return Decision(
            "Deploying",
            ("False", MODEL_LOADING, message),
            ("True", MODEL_LOADING, message),
            ("False", MODEL_LOADING, ""),
            0,
        )
    desired = obs.desired_replicas
    if serving == 0 and desired > 0:
        message = (
            f"{obs.workers_ready}/{desired} worker pods ready, {obs.serve_running_replicas} Serve replicas running"
        )
        if served_before:
            return Decision(
                "Degraded",
                ("False", REPLICAS_UNAVAILABLE, message),
                ("True", WORKERS_NOT_READY, message),
                ("True", REPLICAS_UNAVAILABLE, message),
                0,
            )
        return Decision(
            "Deploying",
            ("False", WORKERS_NOT_READY, message),
            ("True", WORKERS_NOT_READY, message),
            ("False", WORKERS_NOT_READY, ""),
            0,
        )
    if serving < desired:
        message = f"{serving}/{desired} replicas serving"
        scaling = obs.workers_replicas != desired or obs.serve_running_replicas < desired
        if scaling:
            return Decision(
                "Ready", ("True", SCALING, message), ("True", SCALING, message), ("False", SCALING, ""), serving
            )
        return Decision(
            "Degraded",
            ("True", REPLICAS_UNAVAILABLE, message),
            ("False", REPLICAS_UNAVAILABLE, ""),
            ("True", REPLICAS_UNAVAILABLE, message),
            serving,
        )
    message = f"{serving}/{desired} replicas serving"
    return Decision(
        "Ready",
        ("True", ALL_REPLICAS_READY, message),
        ("False", ALL_REPLICAS_READY, ""),
        ("False", ALL_REPLICAS_READY, ""),
        serving,
    )


def _condition(
    ctype: str, value: tuple[str, str, str], previous: dict[str, dict[str, Any]], now: str, generation: int
) -> dict[str, Any]:
    status, reason, message = value
    old = previous.get(ctype)
    changed = old is None or old.get("status") != status
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),  # type: ignore[union-attr]
        "observedGeneration": generation,
    }


def compute_status(obs: Observed, previous: dict[str, Any] | None, now: str) -> dict[str, Any]:
    """The full status to write (a merge patch replaces conditions as a whole)."""
    previous = previous or {}
    prev_conditions = {c.get("type", ""): c for c in previous.get("conditions") or []}
    d = decide(obs, previous.get("phase"))
    conditions = [
        _condition("Ready", d.ready, prev_conditions, now, obs.generation),
        _condition("Progressing", d.progressing, prev_conditions, now, obs.generation),
        _condition("Degraded", d.degraded, prev_conditions, now, obs.generation),
    ]
    if obs.autoscaling:
        value = ("True", *obs.metric_missing) if obs.metric_missing is not None else ("False", METRIC_AVAILABLE, "")
        conditions.append(_condition(METRIC_MISSING, value, prev_conditions, now, obs.generation))
    status: dict[str, Any] = {
        "phase": d.phase,
        "conditions": conditions,
        "replicas": obs.workers_replicas,
        "readyReplicas": d.ready_replicas,
        "selector": obs.selector,
        "servedModels": list(obs.served_models),
        "observedGeneration": obs.generation,
        "endpoint": obs.endpoint if d.ready_replicas > 0 else None,
    }
    return status


@dataclass(frozen=True)
class Transition:
    type: str  # Normal | Warning
    reason: str
    message: str


WARNING_PHASES = {"Failed", "Degraded"}


def transitions(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[Transition]:
    """Events to post: one per phase change, else one per condition whose status/reason changed."""
    previous = previous or {}
    cur = {c["type"]: c for c in current.get("conditions", [])}
    if previous.get("phase") != current.get("phase"):
        ready = cur.get("Ready", {})
        phase = current["phase"]
        reason = ready.get("reason") or phase
        message = f"phase {previous.get('phase') or 'None'} -> {phase}"
        if ready.get("message"):
            message += f": {ready['message']}"
        return [Transition("Warning" if phase in WARNING_PHASES else "Normal", reason, message)]
    prev = {c.get("type"): c for c in previous.get("conditions") or []}
    out = []
    for ctype, c in cur.items():
        p = prev.get(ctype)
        if p is None or p.get("status") != c["status"] or p.get("reason") != c["reason"]:
            bad = (ctype == "Ready" and c["status"] == "False") or (
                ctype in ("Degraded", METRIC_MISSING) and c["status"] == "True"
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

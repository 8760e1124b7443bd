"""Progressive rollouts on one Ray cluster: the pure plan (docs/ROLLOUT.md).

A spec change that needs new replicas (model, revision, quantization, engine arguments: anything
in the Serve application's `args`) does not update the Serve application in place. The new
version is a second Serve application of the same served model on the same Ray cluster, in the
other of two slots (`{app}` on the route prefix P, `{app}-b` on `P/b`); replicas move from the
old slot to the new one step by step, and the gateway's route splits requests between the two by
ready replicas. Everything the plan needs is read back from Serve (each slot's deployed config,
its replica target and the replicas that exist), so it survives an operator restart.

A step with `maxSurge` 0 (the default) drains `maxUnavailable` old replicas first (Serve stops
routing to them and lets in-flight streams finish, up to graceful_shutdown_timeout_s) and starts
their replacements only once they are gone: the new replicas take the GPUs the old ones freed,
and at no moment do more replicas exist than spec.replicas. With `maxSurge` s > 0 a step starts
s new replicas first, then drains as many old ones once those are ready.

Between steps the analysis (analysis.py) decides: continue, wait, pause or roll back. A roll
back removes the new application first and scales the old one back once the new replicas are
gone. The last step needs no analysis: the old version then has no replicas to compare with.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from rayleigh_operator.state import content_hash
from rayleigh_serving.config import DEPLOYMENT_NAME, replica_count

# The second slot's application name and route prefix suffixes.
SLOT_SUFFIX = "-b"
ROUTE_SUFFIX = "/b"

Verdict = Literal["continue", "wait", "pause", "rollback"]


def slot_names(app_name: str) -> tuple[str, str]:
    return app_name, app_name + SLOT_SUFFIX


def slot_prefix(route_prefix: str, slot: int) -> str:
    return route_prefix if slot == 0 else route_prefix.rstrip("/") + ROUTE_SUFFIX


def revision(app: dict[str, Any]) -> str:
    """The version of a Serve application: its `args`, import path and runtime env (what Serve
    restarts replicas for), not its name, route, replica count or adapters (`deployments`). A count
    left in `args` by an older operator is ignored too."""
    args = copy.deepcopy(app.get("args") or {})
    dep = (args.get("llm_config") or {}).get("deployment_config") or {}
    dep.pop("num_replicas", None)
    dep.pop("autoscaling_config", None)
    return content_hash({"args": args, "import_path": app.get("import_path"), "env": app.get("runtime_env")})


def _deployment(app: dict[str, Any]) -> dict[str, Any]:
    """The application's options entry of the model deployment (rayleigh_serving.config)."""
    deployments = app.setdefault("deployments", [])
    for d in deployments:
        if d.get("name") == DEPLOYMENT_NAME:
            return d
    d = {"name": DEPLOYMENT_NAME}
    deployments.append(d)
    return d


def replica_target(app: dict[str, Any]) -> int:
    """The replica count an application config asks for (0: scaled to zero)."""
    for d in app.get("deployments") or []:
        if d.get("name") == DEPLOYMENT_NAME and "num_replicas" in d:
            return int(d.get("num_replicas") or 0)
    legacy = ((app.get("args") or {}).get("llm_config") or {}).get("deployment_config") or {}
    return int(legacy.get("num_replicas") or 0)


def with_replicas(app: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The application at `replicas` (0: scale to zero), as rayleigh_serving.config writes it: in
    its `deployments` entry, which overrides a count in `args` (left there by an older operator;
    `args` stay as they are, a change there would restart every replica)."""
    out = copy.deepcopy(app)
    _deployment(out).update(replica_count(max(0, replicas)))
    return out


def resolve(value: int | str, replicas: int, *, round_up: bool) -> int:
    """maxSurge / maxUnavailable as a count of replicas (percentages as Kubernetes rounds them)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        exact = replicas * float(text[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def step_sizes(max_surge: int | str, max_unavailable: int | str, replicas: int) -> tuple[int, int]:
    """(surge, drain): replicas a step starts first, or drains first when surge is 0 (at least 1)."""
    surge = max(0, resolve(max_surge, replicas, round_up=True))
    drain = max(1, resolve(max_unavailable, replicas, round_up=False)) if surge == 0 else 0
    return surge, drain


@dataclass(frozen=True)
class Slot:
    """One slot's Serve application as Serve reports it."""

    name: str
    exists: bool = False
    deleting: bool = False
    revision: str | None = None
    target: int = 0  # num_replicas it is asked to run (0 while deleting)
    running: int = 0  # replicas RUNNING (serving)
    present: int = 0  # replicas that exist in any state (starting, running, stopping)
    status: str = "MISSING"
    message: str = ""
    config: dict[str, Any] | None = None
    replica_ids: tuple[str, ...] = ()
    worker_ids: tuple[str, ...] = ()
    # Serve lists the deployment (and so its replicas): while it rebuilds an application after a
    # PUT it may list none, and the replica counts above then mean nothing.
    listed: bool = True


def observe(details: dict[str, Any], name: str, deployment: str) -> Slot:
    app = (details.get("applications") or {}).get(name)
    if not app:
        return Slot(name)
    dep = (app.get("deployments") or {}).get(deployment) or {}
    replicas = dep.get("replicas") or []
    config = app.get("deployed_app_config")
    deleting = app.get("status") == "DELETING"
    target = 0
    if config and not deleting:
        target = replica_target(config)
    message = app.get("message") or dep.get("message") or ""
    return Slot(
        name=name,
        exists=True,
        deleting=deleting,
        revision=revision(config) if config else None,
        target=target,
        running=sum(1 for r in replicas if r.get("state") == "RUNNING"),
        present=len(replicas),
        status=str(app.get("status") or "NOT_STARTED"),
        message=message,
        config=config,
        replica_ids=tuple(str(r.get("replica_id")) for r in replicas if r.get("replica_id")),
        worker_ids=tuple(str(r.get("worker_id")) for r in replicas if r.get("worker_id")),
        listed=bool(dep) or app.get("status") == "DEPLOY_FAILED",
    )


@dataclass(frozen=True)
class Plan:
    """What to deploy: per slot name an application config, or None to remove it; slots not in
    `apps` stay as they are. `old`/`new` name the slots of a rollout in progress."""

    apps: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    phase: Literal["Steady", "Progressing", "Paused", "RolledBack", "RollingBack"] = "Steady"
    old: Slot | None = None
    new: Slot | None = None
    serving: Slot | None = None  # the one slot serving when no rollout runs
    # The step's replicas are all in place: the analysis may judge it (and its verdict moves it on).
    step_done: bool = False
    # Serve does not list an application's replicas right now: change nothing, report as before.
    hold: bool = False


def plan(
    slots: tuple[Slot, Slot],
    desired: tuple[dict[str, Any], dict[str, Any]],
    replicas: int,
    *,
    surge: int,
    drain: int,
    verdict: Verdict,
    blocked: str | None,
) -> Plan:
    """The next move. `desired` is the spec's application for each slot (its name and route, with
    num_replicas = spec.replicas); `verdict` is the analysis' word on the current step (or the
    user's: promote -> continue, abort -> rollback); `blocked` a revision rolled back before."""
    want = revision(desired[0])
    live = [i for i in (0, 1) if slots[i].exists]
    if not live:
        return Plan(apps={slots[0].name: with_replicas(desired[0], replicas)})
    unlisted = [slots[i] for i in live if not slots[i].listed and not slots[i].deleting]
    if unlisted:  # Serve is rebuilding an application: decide once it lists its replicas again
        return Plan(hold=True)
    if len(live) == 1:
        i = live[0]
        s = slots[i]
        if s.deleting:
            # Removed by someone else (a rollout removes a slot only while the other one exists),
            # e.g. a Ray head restarted without its Serve config: nothing serves, deploy it again.
            return Plan(apps={s.name: with_replicas(desired[i], replicas)}, serving=s)
        if s.revision == want:
            return Plan(apps={s.name: with_replicas(desired[i], replicas)}, serving=s)
        if want == blocked:  # rolled back: the old version runs at full size until the spec changes
            assert s.config is not None
            return Plan(apps={s.name: with_replicas(s.config, replicas)}, phase="RolledBack", serving=s)
        if (s.present == 0 and s.status != "DEPLOYING") or s.status == "DEPLOY_FAILED" or replicas <= 0:
            # nothing serves (failed, or scaled to zero): replace in place, nothing to protect
            return Plan(apps={s.name: with_replicas(desired[i], replicas)}, serving=s)
        j = 1 - i
        return _step(s, Slot(slots[j].name), desired[j], replicas, surge, drain, "continue")
    a, b = slots
    # Both exist: the new one runs the spec's revision (if neither does, the spec changed during the
    # rollout: the slot with fewer replicas is the new one and is updated in place).
    if a.revision == want and b.revision != want:
        old, new, j = b, a, 0
    elif b.revision == want and a.revision != want:
        old, new, j = a, b, 1
    else:
        j = 0 if a.target < b.target or (a.target == b.target and b.deleting) else 1
        old, new = slots[1 - j], slots[j]
    if want == blocked or verdict == "rollback" or new.status in ("DEPLOY_FAILED", "UNHEALTHY"):
        return _rollback(old, new)
    if new.revision != want and not new.deleting:
        assert new.config is not None
        return Plan(
            apps={new.name: with_replicas(desired[j], max(1, new.target))}, phase="Progressing", old=old, new=new
        )
    return _step(old, new, desired[j], replicas, surge, drain, verdict)


def _rollback(old: Slot, new: Slot) -> Plan:
    """Remove the new application first; the old one grows back once the new replicas are gone."""
    if not new.deleting:
        return Plan(apps={new.name: None}, phase="RollingBack", old=old, new=new)
    return Plan(phase="RollingBack", old=old, new=new)


def _step(old: Slot, new: Slot, app: dict[str, Any], replicas: int, surge: int, drain: int, verdict: Verdict) -> Plan:
    n = max(1, replicas)
    o = 0 if old.deleting else old.target
    k = new.target if new.exists and not new.deleting else 0
    progressing: dict[str, Any] = {"phase": "Progressing", "old": old, "new": new}
    if o == 0:
        # The old version is on its way out: the new one takes every seat once its replicas are gone.
        if old.exists and not old.deleting:
            return Plan(apps={old.name: None}, **progressing)
        if old.present == 0:
            return Plan(apps={new.name: with_replicas(app, n)}, **progressing)
        return Plan(**progressing)
    new_ready = new.running >= k and new.present == k
    old_drained = old.present <= o
    if o + k > n:  # surge started new replicas (or spec.replicas went down): drain once they are ready
        if new_ready:
            return Plan(apps={old.name: _resize(old, max(0, n - k))}, **progressing)
        return Plan(**progressing)
    if o + k < n:  # drained: the replacements start once the old replicas are gone
        if old_drained:
            return Plan(apps={new.name: with_replicas(app, n - o)}, **progressing)
        return Plan(**progressing)
    if not (new_ready and old_drained):
        return Plan(**progressing)
    if k > 0:  # a step is in place: the analysis judges it before the next one
        if verdict == "pause":
            return Plan(phase="Paused", old=old, new=new, step_done=True)
        if verdict != "continue":
            return Plan(step_done=True, **progressing)
    if surge == 0:
        return Plan(apps={old.name: _resize(old, max(0, o - drain))}, step_done=k > 0, **progressing)
    return Plan(apps={new.name: with_replicas(app, min(n, k + surge))}, step_done=k > 0, **progressing)


def _resize(slot: Slot, replicas: int) -> dict[str, Any] | None:
    """The slot's own config at `replicas` (None: remove the application at 0)."""
    if replicas <= 0 or slot.config is None:
        return None
    return with_replicas(slot.config, replicas)


def seats(plan_: Plan) -> tuple[int, int]:
    """(old, new) replicas that serve: the gateway's weights follow them."""
    old = plan_.old.running if plan_.old is not None and not plan_.old.deleting else 0
    new = plan_.new.running if plan_.new is not None and not plan_.new.deleting else 0
    return old, new


def weights(old_running: int, new_running: int) -> tuple[int, int]:
    """Percent weights of the old and new backends by ready replicas (0/0: all to the old one)."""
    total = old_running + new_running
    if total == 0:
        return 100, 0
    new = round(100 * new_running / total)
    return 100 - new, new


__all__ = [
    "Plan",
    "Slot",
    "observe",
    "plan",
    "resolve",
    "revision",
    "seats",
    "slot_names",
    "slot_prefix",
    "step_sizes",
    "weights",
    "with_replicas",
]

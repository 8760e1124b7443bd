"""Scale to zero: idle ModelDeployments go to zero replicas, a wake signal brings them back.

For a ModelDeployment with `autoscaling.minReplicas: 0` and `idleSeconds`, the operator, not the
HPA, owns the step between 0 and 1 (an HPA's minReplicas 0 needs the alpha feature gate
HPAScaleToZero). Activity is the gateway's POST to the wake endpoint (`--wake-port`, path `/wake`,
JSON `{"namespace", "name"}`): the gateway sends it when it holds a request for a model at zero and,
at most every 30 seconds, while requests flow to a scale-to-zero model. No activity for idleSeconds
(counted from the operator's start or the last signal) sets `spec.replicas` to 0; a signal while at
0 sets it to 1. The HPA, kept at minReplicas >= 1, stands still while the target is at 0
(Kubernetes' implicit maintenance-mode deactivation) and scales from 1 again after the wake.
A spec.replicas change is an ordinary update: the workers, the Serve config and the route (its
`coldStart` flag) follow.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from aiohttp import web

import rayleigh_api as api
from rayleigh_operator import metrics
from rayleigh_operator.kube import MODEL_DEPLOYMENTS, ApiError, KubeClient
from rayleigh_operator.state import Entry, Tracked

log = logging.getLogger("rayleigh.operator.idle")


# A cold start that has not served after this long is given up (the idle window runs again).
GIVE_UP_SECONDS = 3600


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def idle_seconds(entry: Entry) -> int | None:
    """The idle window of a scale-to-zero object, None for the others."""
    auto = entry.md.spec.autoscaling if entry.md is not None else None
    if auto is None or auto.min_replicas != 0 or auto.idle_seconds is None:
        return None
    return auto.idle_seconds


class IdleScaler:
    def __init__(self, kube: KubeClient, tracked: Tracked, clock: Any = time.monotonic) -> None:
        self.kube = kube
        self.tracked = tracked
        self.clock = clock
        self.started = clock()
        self.last_activity: dict[tuple[str, str], float] = {}
        self.wake_requested: dict[tuple[str, str], tuple[float, str]] = {}  # monotonic, RFC 3339
        self.wake_phases: dict[tuple[str, str], dict[str, float]] = {}  # phase -> seconds since the wake
        self.scaled_to_zero: dict[tuple[str, str], tuple[str, str]] = {}  # reason, message
        self.last_cold_start: dict[tuple[str, str], dict[str, Any]] = {}

    async def _set_replicas(self, entry: Entry, replicas: int) -> None:
        await self.kube.patch(MODEL_DEPLOYMENTS, entry.namespace, entry.name, {"spec": {"replicas": replicas}})

    async def wake(self, namespace: str, name: str) -> int:
        """A request for this model: activity, and 0 -> 1 when it is at zero. Returns an HTTP status."""
        entry = self.tracked.entries.get((namespace, name))
        if entry is None or entry.md is None:
            return 404
        if idle_seconds(entry) is None:
            return 409
        key = entry.key
        now = self.clock()
        self.last_activity[key] = now
        if entry.md.spec.replicas == 0 and key not in self.wake_requested:
            self.wake_requested[key] = (now, _now())
            log.info("%s/%s: woken by a request: replicas 0 -> 1", namespace, name)
            try:
                await self._set_replicas(entry, 1)
            except ApiError:
                del self.wake_requested[key]
                raise
            metrics.SCALE_TO_ZERO.labels("up").inc()
            self.scaled_to_zero[key] = (api.Reason.WOKEN, "woken by a request; starting a replica")
        return 202

    async def check(self) -> None:
        """Scale idle objects to zero; record finished cold starts. Called from the tracker loop."""
        now = self.clock()
        entries = self.tracked.entries
        states = (self.last_activity, self.wake_requested, self.wake_phases, self.scaled_to_zero, self.last_cold_start)
        for state in states:
            for gone in [k for k in state if k not in entries]:  # deleted objects
                del state[gone]
        for key, entry in list(entries.items()):
            window = idle_seconds(entry)
            if window is None or entry.md is None:
                continue
            woken = self.wake_requested.get(key)
            if woken is not None and now - woken[0] > GIVE_UP_SECONDS:
                # Never served after the wake (e.g. the model fails to load): the idle window runs again.
                log.warning("%s/%s: no replica %ds after the wake", entry.namespace, entry.name, GIVE_UP_SECONDS)
                del self.wake_requested[key]
                self.wake_phases.pop(key, None)
            st = entry.serve_state  # with Serve's view: a running replica (model loaded), not just a pod
            if key in self.wake_requested:
                self._record(entry, now, st.running_replicas if st is not None else None)
            last = self.last_activity.get(key, self.started)
            if entry.md.spec.replicas >= 1 and now - last >= window and key not in self.wake_requested:
                log.info("%s/%s: no request for %ds: replicas -> 0", entry.namespace, entry.name, window)
                try:
                    await self._set_replicas(entry, 0)
                except ApiError as exc:
                    log.warning("%s/%s: cannot scale to zero: %s", entry.namespace, entry.name, exc)
                    continue
                self.last_activity[key] = now
                metrics.SCALE_TO_ZERO.labels("down").inc()
                self.scaled_to_zero[key] = (api.Reason.IDLE, f"no request for {window}s: scaled to zero")

    def _record(self, entry: Entry, now: float, running: int | None) -> None:
        """The phases of a cold start as the operator sees them, each from the wake: the first worker
        pod ready (scheduled, started, joined the Ray cluster: its readiness probe) and the first
        Serve replica running (vLLM loaded the model); done when both are (`running` None: the
        dashboard cannot be read, the pod alone counts). The first token is the gateway's to see."""
        key = entry.key
        t0, requested_at = self.wake_requested[key]
        phases = self.wake_phases.setdefault(key, {})
        if entry.workers_ready >= 1:
            phases.setdefault("workersReadySeconds", round(now - t0, 3))
        if running is not None and running >= 1:
            phases.setdefault("modelLoadedSeconds", round(now - t0, 3))
        if "workersReadySeconds" not in phases or (running is not None and "modelLoadedSeconds" not in phases):
            return
        del self.wake_requested[key], self.wake_phases[key]
        seconds = round(now - t0, 3)
        metrics.COLD_START_SECONDS.observe(seconds)
        self.last_cold_start[key] = {"requestedAt": requested_at, "readyAt": _now(), "seconds": seconds, **phases}
        log.info("%s/%s: cold start took %.1fs (%s)", entry.namespace, entry.name, seconds, phases)

    def decorate(self, entry: Entry, status: dict[str, Any]) -> None:
        """Add the ScaledToZero condition and lastColdStart to a status about to be written."""
        if idle_seconds(entry) is None or entry.md is None:
            return
        key = entry.key
        at_zero = entry.md.spec.replicas == 0
        reason, message = self.scaled_to_zero.get(
            key, (api.Reason.IDLE, "scaled to zero") if at_zero else (api.Reason.WOKEN, "replicas run")
        )
        if not at_zero and reason == api.Reason.IDLE:
            reason, message = api.Reason.WOKEN, "replicas run"
        state = "True" if at_zero else "False"
        previous = {c.get("type"): c for c in (entry.status or {}).get("conditions", [])}.get(
            api.ConditionType.SCALED_TO_ZERO, {}
        )
        since = previous.get("lastTransitionTime") if previous.get("status") == state else None
        condition = {
            "type": api.ConditionType.SCALED_TO_ZERO.value,
            "status": state,
            "reason": str(reason),
            "message": message,
            "lastTransitionTime": since or _now(),
        }
        conditions = [c for c in status.get("conditions", []) if c.get("type") != api.ConditionType.SCALED_TO_ZERO]
        if at_zero and status.get("phase") in (api.Phase.DEPLOYING, api.Phase.READY):
            # At zero on purpose, and the Ray head is up: ready to serve on demand (the gateway holds
            # and wakes), as a Knative Service scaled to zero stays Ready. Not Deploying, which would
            # page (RayleighModelDeploymentNotReady) for every idle model.
            status["phase"] = api.Phase.READY.value
            for c in conditions:
                if c.get("type") in (api.ConditionType.READY, api.ConditionType.PROGRESSING):
                    ready = c["type"] == api.ConditionType.READY
                    if c.get("status") != ("True" if ready else "False"):
                        c["lastTransitionTime"] = condition["lastTransitionTime"]
                    c.update(status="True" if ready else "False", reason=api.Reason.IDLE.value, message=message)
        elif key in self.wake_requested and status.get("phase") == api.Phase.DEGRADED:
            # Woken, no replica serving yet: a cold start in progress (a worker pod, the model load),
            # not a fault. Deploying, without a Warning event on every wake; after GIVE_UP_SECONDS
            # without a replica the wake is dropped and Degraded shows again.
            status["phase"] = api.Phase.DEPLOYING.value
            wanted = {api.ConditionType.READY: "False", api.ConditionType.PROGRESSING: "True"}
            wanted[api.ConditionType.DEGRADED] = "False"
            for c in conditions:
                want = wanted.get(c.get("type"))
                if want is None:
                    continue
                if c.get("status") != want:
                    c["lastTransitionTime"] = _now()
                c.update(status=want, reason=api.Reason.WOKEN.value, message="starting from zero replicas (cold start)")
        status["conditions"] = [*conditions, condition]
        cold = self.last_cold_start.get(key) or (entry.status or {}).get("lastColdStart")
        if cold:
            status["lastColdStart"] = cold

    # --- the wake endpoint -----------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4096)
        app.router.add_post("/wake", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            namespace, name = str(body["namespace"]), str(body["name"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'send {"namespace": ..., "name": ...}'}, status=400)
        try:
            code = await self.wake(namespace, name)
        except ApiError as exc:
            return web.json_response({"error": str(exc)}, status=502)
        return web.json_response({"namespace": namespace, "name": name}, status=code)

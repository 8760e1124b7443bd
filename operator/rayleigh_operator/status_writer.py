"""Status and Events: what the operator saw -> the status subresource, one Event per transition.

The status itself is computed by the pure `status` module; this module gathers what it needs
from an Entry, writes the result with a merge patch only when something changed (transition
timestamps aside), posts an Event for each transition (`status.transitions`) and keeps the
phase gauges: `rayleigh_operator_model_deployments{phase}` (a count per phase) and
`rayleigh_operator_model_deployment_phase{model_namespace, model_deployment, phase}` (one series per
object, bounded by the objects the operator tracks, as kube-state-metrics does).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import rayleigh_api as api
from rayleigh_operator import metrics, render, status
from rayleigh_operator.kube import EVENTS, MODEL_DEPLOYMENTS, ApiError, KubeClient
from rayleigh_operator.state import Entry, OperatorConfig, as_int

log = logging.getLogger("rayleigh.operator")


_PHASES = frozenset(phase.value for phase in api.Phase)


def _timestamp() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    def __init__(self, kube: KubeClient, config: OperatorConfig, on_gone: Callable[[str, str], None]) -> None:
        """`on_gone(namespace, name)` runs when the ModelDeployment no longer exists (status 404)."""
        self.kube = kube
        self.config = config
        self.on_gone = on_gone
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._counted: dict[tuple[str, str], str] = {}  # the phase each object is counted under
        # Adds what other parts own to a status before it is compared and written (idle.py).
        self.decorate: Callable[[Entry, dict[str, Any]], None] | None = None

    def observed(self, entry: Entry) -> status.Observed:
        md = entry.md
        meta = entry.body["metadata"]
        spec = entry.body.get("spec") or {}
        st = entry.serve_state
        return status.Observed(
            generation=int(meta.get("generation") or 1),
            desired_replicas=md.spec.replicas if md else as_int(spec.get("replicas")),
            selector=render.worker_selector(md) if md else f"{render.MD_LABEL}={entry.name}",
            served_models=md.served_models() if md else [],
            endpoint=self.config.endpoint_for(md) if md else "",
            spec_problem=entry.spec_problem,
            head_ready=entry.head_ready and entry.dashboard_error is None,
            head_message=entry.dashboard_error or "the Ray head pod is not ready",
            workers_replicas=entry.workers_replicas,
            workers_ready=entry.workers_ready,
            serve_status=None if st is None else st.status,
            serve_message="" if st is None else st.message,
            serve_running_replicas=0 if st is None else st.running_replicas,
            serve_push_error=entry.serve_push_error,
            metric_missing=entry.metric_missing,
            autoscaling=bool(md and md.spec.autoscaling),
            apply_error=entry.apply_error,
            conflict=entry.conflict.message() if entry.conflict is not None else None,
            traffic=entry.share.status() if entry.share is not None else None,
        )

    async def write(self, entry: Entry) -> None:
        """Write the status when it differs from the last one written, then post its Events."""
        new = status.compute_status(self.observed(entry), entry.status, _timestamp())
        if self.decorate is not None:
            self.decorate(entry, new)
        if not status.status_differs(entry.status, new):
            # Unchanged (e.g. after an operator restart, the stored status is already right):
            # counted all the same.
            self.count_phase(entry.key, (entry.status or {}).get("phase"))
            return
        previous = entry.status
        try:
            await self.kube.patch_status(MODEL_DEPLOYMENTS, entry.namespace, entry.name, new)
        except ApiError as exc:
            if exc.status == 404:
                self.on_gone(entry.namespace, entry.name)
                return
            raise
        entry.status = new
        self.count_phase(entry.key, new.get("phase"))
        for t in status.transitions(previous, new):
            await self.post_event(entry, t)

    def count_phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Count object `key` (namespace, name) under `phase` in the phase gauges (None: no longer
        counted, e.g. deleted)."""
        old = self._counted.get(key)
        if old == phase or (phase is not None and phase not in _PHASES):
            return
        if old is not None:
            del self._counted[key]
            metrics.MODEL_DEPLOYMENTS.labels(old).dec()
            metrics.MODEL_DEPLOYMENT_PHASE.remove(*key, old)
        if phase is not None:
            self._counted[key] = phase
            metrics.MODEL_DEPLOYMENTS.labels(phase).inc()
            metrics.MODEL_DEPLOYMENT_PHASE.labels(*key, phase).set(1)

    async def post_event(self, entry: Entry, t: status.Transition) -> None:
        meta = entry.body["metadata"]
        now = _timestamp()
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{entry.name}.", "namespace": entry.namespace},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": entry.name,
                "namespace": entry.namespace,
                "uid": meta.get("uid"),
            },
            "type": t.type,
            "reason": t.reason,
            "message": t.message[:1024],
            "source": {"component": render.FIELD_MANAGER},
            "reportingComponent": render.FIELD_MANAGER,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        log.info("%s/%s: %s %s: %s", entry.namespace, entry.name, t.type, t.reason, t.message)
        try:
            await self.kube.create(EVENTS, entry.namespace, event)
        except ApiError as exc:
            log.warning("cannot post event for %s/%s: %s", entry.namespace, entry.name, exc)

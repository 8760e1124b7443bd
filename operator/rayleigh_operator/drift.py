"""Drift: children deleted or edited by hand are re-applied.

- Deployments (head, workers): their watch events (`deployment_watch`) call `restore` at once.
- Every other child kind (Services, route ConfigMap, PDB, NetworkPolicy, HPA, PodMonitor):
  `resync_children` lists each kind once per `resync_seconds` and restores what is missing or
  different. That interval is the drift bound.
- The Ray token Secret: read by name (the operator may not list Secrets) and created again only
  when missing, never changed. A recreated Secret holds a new token that the running Ray pods do
  not know, so the head and workers are then restarted (a pod-template annotation, as `kubectl
  rollout restart` does): until they are, the dashboard refuses the operator and new workers could
  not join the head.

"Different" is `subset`: every field the operator applies still has the value it applies; what
the API server adds around it (defaults, status, metadata) is not drift. A child restored twice
within `poll_seconds` is left until the next round, so the operator does not fight another writer
in a tight loop. The resync also redoes an apply that failed part-way, and the apply of an object
whose custom metric has appeared since (to create its HPA).
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from rayleigh_operator import metrics, render
from rayleigh_operator.apply import Applier
from rayleigh_operator.kube import DEPLOYMENTS, MODEL_DEPLOYMENTS, SECRETS, ApiError, KubeClient, type_of
from rayleigh_operator.preflight import Preflight
from rayleigh_operator.state import MANAGED_SELECTOR, Entry, OperatorConfig, Tracked
from rayleigh_operator.subset import subset

log = logging.getLogger("rayleigh.operator")


def drifted(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    """Whether the stored child `observed` (None: missing) no longer holds what `desired` applies."""
    if observed is None:
        return True
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "status")}
    return not subset(want, observed)


class Drift:
    def __init__(
        self, kube: KubeClient, config: OperatorConfig, tracked: Tracked, applier: Applier, preflight: Preflight
    ) -> None:
        self.kube = kube
        self.config = config
        self.tracked = tracked
        self.applier = applier
        self.preflight = preflight

    def desired_children(self, entry: Entry) -> list[dict[str, Any]]:
        """The children as last applied (re-rendered from the spec and options that produced them)."""
        if entry.md is None or entry.options is None:
            return []
        return render.render(entry.md, options=entry.options)

    def desired_deployment(self, entry: Entry, name: str) -> dict[str, Any] | None:
        md, options = entry.md, entry.options
        if md is None or options is None:
            return None
        if name == render.child_name(md, "head"):
            return render.render_head(md, options)[0]
        if name == render.child_name(md, "workers"):
            return render.render_workers(md, options)
        return None

    async def restore(self, entry: Entry, desired: dict[str, Any], why: str) -> bool:
        """Re-apply one child, unless its owner is going away or it was restored a moment ago;
        True when it was re-applied."""
        key = f"{desired['kind']}/{desired['metadata']['name']}"
        now = time.monotonic()
        if now - entry.last_restore.get(key, -1e9) < self.config.poll_seconds:
            # Something keeps changing it back: do not fight in a tight loop.
            self.tracked.schedule(entry, self.config.poll_seconds)
            return False
        owner = await self.kube.get(MODEL_DEPLOYMENTS, entry.namespace, entry.name)
        if (
            owner is None
            or owner["metadata"].get("deletionTimestamp")
            or (owner["metadata"].get("uid") != entry.body["metadata"].get("uid"))
        ):
            return False  # going away with its owner: garbage collection, not drift
        entry.last_restore[key] = now
        log.info("%s/%s: re-applying %s %s", entry.namespace, entry.name, why, key)
        metrics.CHILD_RESTORES.labels(desired["kind"]).inc()
        result = await self.applier.apply_child(desired)
        entry.record_applied(result)
        if entry.observe_deployment(result):
            self.tracked.schedule(entry, 0)
        return True

    async def resync_children(self) -> None:
        """List every child kind once and re-apply what is missing or edited (the drift bound)."""
        wanted: dict[tuple[str, str], list[tuple[Entry, dict[str, Any]]]] = {}
        for entry in list(self.tracked.entries.values()):
            if not entry.applied and entry.spec_problem is None:
                # The last apply failed part-way (API error, e.g. 403): do it again, level-triggered,
                # with backoff (apply.retry_delay).
                if time.monotonic() < entry.retry_at or entry.key in self.tracked.initial:
                    continue  # backing off, or listed at start and not yet applied by kopf's resume
                try:
                    await self.applier.apply(entry.body)
                except Exception as exc:
                    log.warning("%s/%s: re-apply failed: %r", entry.namespace, entry.name, exc)
                continue
            if entry.md is None or entry.spec_problem is not None:
                continue
            metric_appeared = (
                entry.md.spec.autoscaling is not None
                and entry.metric_missing is not None
                and await self.preflight.metric_problem(entry.md) is None
            )
            if metric_appeared:
                await self.applier.apply(entry.body)  # the metric now exists: create the HPA
                continue
            for child in self.desired_children(entry):
                wanted.setdefault((child["apiVersion"], child["kind"]), []).append((entry, child))
        for (_, kind), pairs in wanted.items():
            if kind == "Secret":
                await self._resync_secrets(pairs)
                continue
            rtype = type_of(pairs[0][1])
            try:
                # Per watched namespace: a namespaced Role grants no cluster-wide list.
                items = [
                    item
                    for ns in (self.config.namespaces or (None,))
                    for item in await self.kube.list(rtype, ns, label_selector=MANAGED_SELECTOR)
                ]
            except ApiError as exc:
                log.warning("resync: cannot list %s: %s", kind, exc)
                continue
            observed = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}
            for entry, child in pairs:
                obj = observed.get((child["metadata"]["namespace"], child["metadata"]["name"]))
                if kind == "Deployment" and obj is not None and entry.observe_deployment(obj):
                    self.tracked.schedule(entry, 0)
                if drifted(child, obj):
                    await self.restore(entry, child, "missing" if obj is None else "edited")

    async def _resync_secrets(self, pairs: list[tuple[Entry, dict[str, Any]]]) -> None:
        """The token Secrets, one GET each (no `list` on Secrets: it would read every Secret of the
        namespace); a missing one is created again, an existing one is never changed."""
        for entry, child in pairs:
            meta = child["metadata"]
            try:
                obj = await self.kube.get(SECRETS, meta["namespace"], meta["name"])
            except ApiError as exc:
                log.warning("resync: cannot get Secret %s/%s: %s", meta["namespace"], meta["name"], exc.status)
                continue
            if obj is None and await self.restore(entry, child, "missing"):
                await self._restart_ray_pods(entry, meta["namespace"])

    async def _restart_ray_pods(self, entry: Entry, namespace: str) -> None:
        """Roll the head and the workers so that they start with the new token."""
        if entry.md is None:
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {render.TOKEN_RESTART_ANNOTATION: now}}}}}
        for component in ("head", "workers"):
            try:
                await self.kube.patch(DEPLOYMENTS, namespace, render.child_name(entry.md, component), body)
            except ApiError as exc:
                log.warning("%s/%s: cannot restart the Ray %s: %s", entry.namespace, entry.name, component, exc)
        log.info("%s/%s: Ray token Secret created again: Ray pods restarted", entry.namespace, entry.name)

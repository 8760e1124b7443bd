"""The watch on our Deployment children (Ray heads and workers).

Their events carry readiness into the Entry (a change makes the object due for a Serve sync and a
status write), and a deleted or hand-edited Deployment is restored at once through `Drift`. An
event that our own apply produced (its resourceVersion is `Entry.own_versions`) needs no drift
check: the common case, one event per apply.

A plain watch, not kopf: these events need no handler bookkeeping, and at scale kopf's per-event
processing costs more than the work done here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rayleigh_operator import render
from rayleigh_operator.drift import Drift, drifted
from rayleigh_operator.kube import DEPLOYMENTS, KubeClient
from rayleigh_operator.state import MANAGED_SELECTOR, Tracked

log = logging.getLogger("rayleigh.operator")


class DeploymentWatch:
    def __init__(self, kube: KubeClient, tracked: Tracked, drift: Drift) -> None:
        self.kube = kube
        self.tracked = tracked
        self.drift = drift

    async def on_event(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(render.MD_LABEL)
        entry = self.tracked.get(meta.get("namespace") or "default", owner or "")
        if entry is None or entry.md is None or entry.spec_problem is not None:
            return
        name = str(meta.get("name"))
        if event_type == "DELETED":
            desired = self.drift.desired_deployment(entry, name)
            if desired is not None:
                await self.drift.restore(entry, desired, "deleted")
            return
        changed = entry.observe_deployment(obj)
        # Our own apply's result needs no drift check (the common case: one event per apply).
        if entry.own_versions.get(name) != str(meta.get("resourceVersion")):
            desired = self.drift.desired_deployment(entry, name)
            if desired is not None and drifted(desired, obj):
                await self.drift.restore(entry, desired, "edited")
        if changed:
            self.tracked.schedule(entry, 0)

    async def run(self, namespace: str | None = None) -> None:
        """List, then watch from the list's resourceVersion; relist when it expires or fails."""
        version: str | None = None
        while True:
            try:
                if not version:
                    items, version = await self.kube.list_with_version(
                        DEPLOYMENTS, namespace, label_selector=MANAGED_SELECTOR
                    )
                    for obj in items:
                        await self.on_event("ADDED", obj)
                async for event in self.kube.watch(
                    DEPLOYMENTS, namespace, label_selector=MANAGED_SELECTOR, resource_version=version
                ):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        version = None  # expired: relist
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        try:
                            await self.on_event(str(event["type"]), obj)
                        except Exception:
                            log.exception("deployment event failed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("deployment watch: %r; retrying", exc)
                version = None
                await asyncio.sleep(1)

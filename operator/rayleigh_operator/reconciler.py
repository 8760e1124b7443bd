"""The operator's core loop, independent of kopf: a small facade over the parts that do the work.

kopf delivers ModelDeployment create/update/resume and delete (handlers.py) to this facade;
the work is done by one part per concern, composed here:

  state.Tracked            every ModelDeployment's Entry
  preflight.Preflight      GPU, custom metrics API and monitoring checks
  apply.Applier            render + server-side apply of every child, then status
  status_writer.StatusWriter  status subresource, Events, the per-phase gauge
  serve_sync.ServeSync     Serve deploys on each Ray head, deletion costs, app removal
  drift.Drift              restore deleted or edited children; the periodic resync
  deployment_watch.DeploymentWatch  our Deployments' events: readiness and drift at once
  routes_writer.RoutesWriter  the gateway's aggregated routes ConfigMap

`run()` is the tracker: it syncs the Serve application of each object that is due (progressing
objects every `poll_seconds`, settled ones every `resync_seconds`), runs the drift resync every
`resync_seconds`, and owns the Deployment watches and the routes writer as tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

import rayleigh_api as api
from rayleigh_operator import serve_client
from rayleigh_operator.apply import Applier
from rayleigh_operator.deployment_watch import DeploymentWatch
from rayleigh_operator.drift import Drift
from rayleigh_operator.idle import IdleScaler
from rayleigh_operator.kube import MODEL_DEPLOYMENTS, ApiError, KubeClient
from rayleigh_operator.preflight import Preflight
from rayleigh_operator.rollout_state import COMMAND_ANNOTATION, Rollouts
from rayleigh_operator.routes_writer import RoutesWriter
from rayleigh_operator.serve_sync import ServeSync
from rayleigh_operator.state import Entry, OperatorConfig, Tracked
from rayleigh_operator.status_writer import StatusWriter

__all__ = ["Entry", "OperatorConfig", "Reconciler"]

log = logging.getLogger("rayleigh.operator")


class Reconciler:
    def __init__(self, kube: KubeClient, config: OperatorConfig, serve: serve_client.ServeClient | None = None) -> None:
        self.kube = kube
        self.config = config
        self.serve = serve or serve_client.ServeClient()
        self.tracked = Tracked()
        self.preflight = Preflight(kube, config)
        self.status = StatusWriter(kube, config, on_gone=self.forget)
        self.routes = RoutesWriter(kube, config, self.tracked)
        self.applier = Applier(kube, config, self.tracked, self.preflight, self.status, self.routes)
        self.rollouts = Rollouts(config.prometheus_url)
        self.serve_sync = ServeSync(kube, config, self.serve, self.tracked, self.status, self.rollouts)
        self.serve_sync.on_route_change = self.routes.mark_dirty
        self.drift = Drift(kube, config, self.tracked, self.applier, self.preflight)
        self.deployment_watch = DeploymentWatch(kube, self.tracked, self.drift)
        self.idle = IdleScaler(kube, self.tracked)
        self.status.decorate = self._decorate

    def _decorate(self, entry: Entry, status: dict[str, Any]) -> None:
        self.idle.decorate(entry, status)
        self.rollouts.decorate(entry, status)

    @property
    def entries(self) -> dict[tuple[str, str], Entry]:
        return self.tracked.entries

    # --- what kopf's handlers call ----------------------------------------------------------

    def entry_for(self, body: dict[str, Any]) -> Entry:
        return self.tracked.entry_for(body)

    async def apply(self, body: dict[str, Any]) -> Entry:
        """Render and apply every child, then write status. Safe to run any number of times."""
        return await self.applier.apply(body)

    async def remove_serve_app(self, body: dict[str, Any]) -> None:
        """Take this ModelDeployment's application off a shared Ray cluster (others untouched)."""
        await self.serve_sync.remove_app(body)

    def forget(self, namespace: str, name: str) -> None:
        """The ModelDeployment is gone: drop its Entry, its route and its count in the phase gauge."""
        self.tracked.pop(namespace, name)
        self.rollouts.forget((namespace, name))
        self.routes.refresh()  # a younger object may now take over a name this one served
        self.status.count_phase((namespace, name), None)

    async def rollout_command(self, body: dict[str, Any]) -> None:
        """`rayleigh rollout promote|abort`: take the annotation's command in, then remove it."""
        meta = body.get("metadata") or {}
        command = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
        if not command:
            return
        namespace = meta.get("namespace") or "default"
        entry = self.tracked.get(namespace, meta["name"])
        if entry is not None:
            self.rollouts.command(entry, command)
            self.tracked.schedule(entry, 0)
        patch = {"metadata": {"annotations": {COMMAND_ANNOTATION: None}}}
        with contextlib.suppress(ApiError):
            await self.kube.patch(MODEL_DEPLOYMENTS, namespace, meta["name"], patch)

    async def sync_serve(self, entry: Entry) -> None:
        """Deploy or update the Serve application when the head is ready; refresh status."""
        await self.serve_sync.sync(entry)

    # --- the tracker -------------------------------------------------------------------------

    def _next_interval(self, entry: Entry) -> float:
        phase = (entry.status or {}).get("phase")
        conditions = {c["type"]: c for c in (entry.status or {}).get("conditions", [])}
        progressing = conditions.get(api.ConditionType.PROGRESSING, {}).get("status")
        settled = phase == api.Phase.FAILED or (phase == api.Phase.READY and progressing == "False")
        return self.config.resync_seconds if settled else self.config.poll_seconds

    async def _sync_one(self, entry: Entry, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                await self.sync_serve(entry)
            except Exception:
                log.exception("%s/%s: sync failed", entry.namespace, entry.name)
            if entry.spec_problem is None and entry.md is not None:
                self.tracked.schedule(entry, self._next_interval(entry))

    async def run(self) -> None:
        """The tracker: Serve deploys and status for due objects, and the drift resync."""
        tasks = [
            asyncio.create_task(self.deployment_watch.run(ns), name=f"watch-deployments-{ns or 'all'}")
            for ns in (self.config.namespaces or (None,))
        ]
        tasks.append(asyncio.create_task(self.routes.run(), name="gateway-routes"))
        runner = None
        if self.config.wake_port:
            runner = web.AppRunner(self.idle.app(), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "0.0.0.0", self.config.wake_port).start()
        try:
            await self._track()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()

    async def _track(self) -> None:
        sem = asyncio.Semaphore(self.config.concurrency)
        next_resync = time.monotonic() + self.config.resync_seconds
        entries = self.tracked.entries
        while True:
            now = time.monotonic()
            due = [e for e in entries.values() if e.next_due <= now]
            for e in due:
                e.next_due = float("inf")
            if due:
                await asyncio.gather(*(self._sync_one(e, sem) for e in due))
            try:
                await self.idle.check()
            except Exception:
                log.exception("scale to zero check failed")
            if now >= next_resync:
                try:
                    await self.drift.resync_children()
                except Exception:
                    log.exception("resync failed")
                self.routes.verify()  # a hand-edited routes ConfigMap is restored too
                next_resync = time.monotonic() + self.config.resync_seconds
                for e in entries.values():
                    if e.md is not None and e.spec_problem is None and e.next_due == float("inf"):
                        self.tracked.schedule(e, 0)
            soonest = min([e.next_due for e in entries.values()] + [next_resync])
            self.tracked.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.tracked.wake.wait(), max(0.05, soonest - time.monotonic()))

    async def close(self) -> None:
        await self.serve.close()
        if self.rollouts.prometheus is not None:
            await self.rollouts.prometheus.close()
        await self.kube.close()

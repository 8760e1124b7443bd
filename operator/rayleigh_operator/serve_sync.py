"""Serve sync: keep each ModelDeployment's Serve application deployed on its Ray head.

For an object that is due (see the tracker in `reconciler`), once its Ray head is ready: GET the
Serve applications on the head's dashboard, PUT the Serve config when Serve runs something else
(first deploy, spec change, scale, or a restarted head that lost it), and fold Serve's replica
states into the Entry (then the status) and into the worker pods' deletion costs. A config Serve
failed to deploy (or the operator refused, e.g. a route prefix taken) is not pushed again until
the spec changes. With a shared Ray cluster, `remove_app` takes one application off it on delete.

A Serve PUT replaces every application on a head: GET-then-PUT is a read-modify-write, so two of
them on one head (two ModelDeployments sharing a Ray cluster, or a deploy racing a delete) run
under that head's lock (`head_lock`), or one would undo the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

import rayleigh_api as api
from rayleigh_api.validation import SpecError
from rayleigh_operator import metrics, render, serve_client
from rayleigh_operator.kube import PODS, ApiError, KubeClient
from rayleigh_operator.state import Entry, OperatorConfig, Tracked, content_hash, parse_spec
from rayleigh_operator.status_writer import StatusWriter
from rayleigh_serving.config import DEPLOYMENT_NAME

log = logging.getLogger("rayleigh.operator")


class ServeSync:
    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        serve: serve_client.ServeClient,
        tracked: Tracked,
        status_writer: StatusWriter,
    ) -> None:
        self.kube = kube
        self.config = config
        self.serve = serve
        self.tracked = tracked
        self.status = status_writer
        self._head_locks: dict[str, asyncio.Lock] = {}

    def head_lock(self, dashboard_url: str) -> asyncio.Lock:
        return self._head_locks.setdefault(dashboard_url, asyncio.Lock())

    async def sync(self, entry: Entry) -> None:
        """Deploy or update the Serve application when the head is ready; refresh status."""
        async with entry.lock:
            md = entry.md
            if md is None or entry.spec_problem is not None or entry.deleting:
                return
            if not entry.head_ready:
                entry.serve_state = None
                entry.dashboard_error = None
                await self.status.write(entry)
                return
            url = self.config.dashboard_url_for(md)
            async with self.head_lock(url):
                state = await self._sync_locked(entry, md, url)
            if state is None:
                await self.status.write(entry)
                return
            entry.serve_state = state
            await self.status.write(entry)
            await self._update_deletion_costs(entry, state)

    async def _sync_locked(self, entry: Entry, md: api.ModelDeployment, url: str) -> serve_client.AppState | None:
        """GET the head's applications and PUT ours when Serve runs something else; the state seen.

        Runs under the head's lock (`head_lock`): the PUT body is built from this very GET.
        """
        app_name = self.config.app_name_for(md)
        try:
            details = await self.serve.get(url)
        except serve_client.ServeError as exc:
            if entry.dashboard_error is None:
                log.info("%s/%s: %s", entry.namespace, entry.name, exc)
            entry.dashboard_error = str(exc)
            entry.serve_state = None
            return None
        entry.dashboard_error = None
        state = serve_client.app_state(details, app_name, DEPLOYMENT_NAME)
        desired = self.config.serve_config_for(md)
        app = desired["applications"][0]
        app_hash = content_hash(app)
        if state.status == "DEPLOY_FAILED" and serve_client.needs_push(app, state) is False:
            entry.failed_app_hash = app_hash  # Serve ran exactly this config and it failed
        push = serve_client.needs_push(app, state) and entry.failed_app_hash != app_hash
        if push and state.status == "MISSING" and entry.failed_app_hash == app_hash:
            push = False
        if push:
            conflict = serve_client.route_conflict(details, app_name, app["route_prefix"])
            if conflict:
                metrics.SERVE_DEPLOYS.labels("conflict").inc()
                entry.serve_push_error = (
                    f"route prefix {app['route_prefix']} is already served by Serve application "
                    f"{conflict!r} on this Ray cluster"
                )
                entry.failed_app_hash = app_hash
            else:
                try:
                    await self.serve.put(url, serve_client.put_body(details, desired))
                except serve_client.ServeError as exc:
                    metrics.SERVE_DEPLOYS.labels("rejected" if exc.reachable else "unreachable").inc()
                    if exc.reachable:
                        entry.serve_push_error = str(exc)
                        entry.failed_app_hash = app_hash
                else:
                    metrics.SERVE_DEPLOYS.labels("accepted").inc()
                    log.info("%s/%s: Serve config pushed to %s", entry.namespace, entry.name, url)
                    entry.serve_push_error = None
                    state = dataclasses.replace(
                        state,
                        status="DEPLOYING"
                        if state.status in ("MISSING", "NOT_STARTED", "DEPLOY_FAILED")
                        else state.status,
                    )
        return state

    async def _update_deletion_costs(self, entry: Entry, state: serve_client.AppState) -> None:
        """Idle worker pods go first on scale-down (pod-deletion-cost), updated when placement changes."""
        placement = content_hash(sorted((r.get("node_ip") or "", r.get("state") or "") for r in state.replicas))
        if placement == entry.replica_placement or entry.md is None:
            return
        pods = await self.kube.list(PODS, entry.namespace, label_selector=render.worker_selector(entry.md))
        for pod_name, cost in render.deletion_costs(pods, state.replicas).items():
            body = {"metadata": {"annotations": {render.DELETION_COST_ANNOTATION: cost}}}
            with contextlib.suppress(ApiError):
                await self.kube.patch(PODS, entry.namespace, pod_name, body)
        entry.replica_placement = placement

    async def remove_app(self, body: dict[str, Any]) -> None:
        """Take this ModelDeployment's application off a shared Ray cluster (others untouched)."""
        entry = self.tracked.entry_for(body)
        md = entry.md
        if md is None:
            try:
                md = parse_spec({k: v for k, v in body.items() if k != "status"})
            except (SpecError, ValueError):
                return
        async with entry.lock:  # waits for a sync in progress; none deploys it after this
            entry.deleting = True
        url, app_name = self.config.dashboard_url_for(md), self.config.app_name_for(md)
        async with self.head_lock(url):
            try:
                details = await self.serve.get(url)
            except serve_client.ServeError as exc:
                if exc.reachable:
                    raise
                return  # no Ray head, nothing to remove
            if app_name in (details.get("applications") or {}):
                await self.serve.put(url, serve_client.remove_body(details, app_name))
                log.info("%s/%s: Serve application %s removed from %s", entry.namespace, entry.name, app_name, url)

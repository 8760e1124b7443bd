"""Serve sync: keep each ModelDeployment's Serve application deployed on its Ray head.

For an object that is due (see the tracker in `reconciler`), once its Ray head is ready: GET the
Serve applications on the head's dashboard, PUT the Serve config when Serve runs something else
(first deploy, spec change, scale, or a restarted head that lost it), and fold Serve's replica
states into the Entry (then the status) and into the worker pods' deletion costs. A config Serve
failed to deploy (or the operator refused, e.g. a route prefix taken) is not pushed again until
the spec changes. With a shared Ray cluster, `remove_app` takes one application off it on delete.

The dashboard wants the Ray cluster's auth token (render/security.py): the operator reads it from
the ModelDeployment's token Secret (`NAME-ray-token`, GET by name) and keeps it until the dashboard
answers 401/403, then reads it again. With `--external-ray` the cluster is not a child and its token
is the operator's own `RAY_AUTH_TOKEN` (or the file named by `RAY_AUTH_TOKEN_PATH`), Ray's names;
neither set: no token is sent.

A Serve PUT replaces every application on a head: GET-then-PUT is a read-modify-write, so two of
them on one head (two ModelDeployments sharing a Ray cluster, or a deploy racing a delete) run
under that head's lock (`head_lock`), or one would undo the other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rayleigh_api as api
from rayleigh_api.validation import SpecError
from rayleigh_operator import metrics, render, rollout, serve_client
from rayleigh_operator.kube import MODEL_DEPLOYMENTS, PODS, SECRETS, ApiError, KubeClient
from rayleigh_operator.rollout_state import (
    PREVIOUS_SPEC_ANNOTATION,
    STABLE_SPEC_ANNOTATION,
    Rollouts,
    spec_without_replicas,
)
from rayleigh_operator.state import Entry, OperatorConfig, Tracked, content_hash, parse_spec
from rayleigh_operator.status_writer import StatusWriter
from rayleigh_operator.subset import subset
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
        rollouts: Rollouts | None = None,
    ) -> None:
        self.kube = kube
        self.config = config
        self.serve = serve
        self.tracked = tracked
        self.status = status_writer
        self.rollouts = rollouts or Rollouts(config.prometheus_url)
        # The gateway's route follows the Serve slots (set by the reconciler: the routes writer).
        self.on_route_change: Callable[[], None] = lambda: None
        self._head_locks: dict[str, asyncio.Lock] = {}
        # (namespace, name) -> (uid, token) of each ModelDeployment's Ray token Secret, as last read.
        self._tokens: dict[tuple[str, str], tuple[str, str]] = {}

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
            token = await self.ray_token(md)
            details = await self.serve.get(url, token=token)
        except serve_client.ServeError as exc:
            if exc.auth_refused:
                self.forget_token(md)
            if entry.dashboard_error is None:
                log.info("%s/%s: %s", entry.namespace, entry.name, exc)
            entry.dashboard_error = str(exc)
            entry.serve_state = None
            return None
        entry.dashboard_error = None
        desired = self.config.serve_config_for(md)
        app0 = desired["applications"][0]
        names = rollout.slot_names(app_name)
        app1 = {**app0, "name": names[1], "route_prefix": rollout.slot_prefix(app0["route_prefix"], 1)}
        slots = (
            rollout.observe(details, names[0], DEPLOYMENT_NAME),
            rollout.observe(details, names[1], DEPLOYMENT_NAME),
        )
        want = rollout.revision(app0)
        verdict = await self.rollouts.verdict(entry, md, want, slots)
        surge, drain = rollout.step_sizes(md.spec.rollout.max_surge, md.spec.rollout.max_unavailable, md.spec.replicas)
        mem = self.rollouts.of(entry)
        p = rollout.plan(
            slots, (app0, app1), md.spec.replicas, surge=surge, drain=drain, verdict=verdict, blocked=mem.blocked
        )
        if p.hold:
            return entry.serve_state or serve_client.app_state(details, app_name, DEPLOYMENT_NAME)
        self.rollouts.observe(entry, md, want, p)
        by_name = {s.name: s for s in slots}
        changes = {
            name: cfg
            for name, cfg in p.apps.items()
            if (cfg is None and by_name[name].exists and not by_name[name].deleting)
            or (
                cfg is not None
                and (by_name[name].deleting or by_name[name].config is None or not subset(cfg, by_name[name].config))
            )
        }
        route_slots = _route_slots(p, slots)
        removing = {name for name, cfg in changes.items() if cfg is None}
        if removing:
            # An application leaves the gateway's route first and is removed only once the gateways
            # had time to read the new route (--route-settle-seconds): Serve's proxy answers 404 for a
            # deleted application's prefix at once, so a request still sent to it would fail.
            kept = tuple((i, w) for i, w in route_slots if slots[i].name not in removing)
            route_slots = tuple((i, 100) for i, _ in kept[:1]) or route_slots
            since = entry.unrouted_since.setdefault(frozenset(removing), time.monotonic())
            settle = self.config.route_settle_seconds if self.config.routes_configmap else 0.0
            if time.monotonic() - since < settle:
                changes = {name: cfg for name, cfg in changes.items() if cfg is not None}
                self.tracked.schedule(entry, settle)
        else:
            entry.unrouted_since.clear()
        if route_slots != entry.route_slots:
            entry.route_slots = route_slots
            self.on_route_change()
        if p.serving is not None and p.serving.revision == want and p.apps.get(p.serving.name) is not None:
            await self._note_stable(entry)
        state = _state(details, p)
        app_hash = content_hash(p.apps)
        if state.status == "DEPLOY_FAILED" and not changes and p.serving is not None:
            entry.failed_app_hash = app_hash  # Serve ran exactly this config and it failed
        push = bool(changes) and entry.failed_app_hash != app_hash
        if push and state.status == "MISSING" and entry.failed_app_hash == app_hash:
            push = False
        if push:
            conflict = next(
                (
                    c
                    for name, cfg in changes.items()
                    if cfg is not None
                    and (c := serve_client.route_conflict(details, name, cfg["route_prefix"])) is not None
                    and c not in names
                ),
                None,
            )
            if conflict:
                metrics.SERVE_DEPLOYS.labels("conflict").inc()
                entry.serve_push_error = (
                    f"route prefix {app0['route_prefix']} is already served by Serve application "
                    f"{conflict!r} on this Ray cluster"
                )
                entry.failed_app_hash = app_hash
            else:
                try:
                    await self.serve.put(url, serve_client.put_apps(details, desired, changes), token=token)
                except serve_client.ServeError as exc:
                    if exc.auth_refused:  # not the config's fault: read the token again, retry
                        self.forget_token(md)
                        metrics.SERVE_DEPLOYS.labels("unauthorized").inc()
                        entry.dashboard_error = str(exc)
                        entry.serve_state = None
                        return None
                    metrics.SERVE_DEPLOYS.labels("rejected" if exc.reachable else "unreachable").inc()
                    if exc.reachable:
                        entry.serve_push_error = str(exc)
                        entry.failed_app_hash = app_hash
                else:
                    metrics.SERVE_DEPLOYS.labels("accepted").inc()
                    log.info("%s/%s: Serve config pushed to %s: %s", entry.namespace, entry.name, url, sorted(changes))
                    entry.serve_push_error = None
                    state = dataclasses.replace(
                        state,
                        status="DEPLOYING"
                        if state.status in ("MISSING", "NOT_STARTED", "DEPLOY_FAILED")
                        else state.status,
                    )
        return state

    async def _note_stable(self, entry: Entry) -> None:
        """The spec runs everywhere: remember it for `rayleigh rollout undo` (annotations)."""
        meta = entry.body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        spec = spec_without_replicas(entry.body)
        stable = annotations.get(STABLE_SPEC_ANNOTATION)
        if stable == spec:
            return
        patch = {STABLE_SPEC_ANNOTATION: spec}
        if stable is not None:
            patch[PREVIOUS_SPEC_ANNOTATION] = stable
        with contextlib.suppress(ApiError):
            await self.kube.patch(MODEL_DEPLOYMENTS, entry.namespace, entry.name, {"metadata": {"annotations": patch}})
            meta.setdefault("annotations", {}).update(patch)

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
                token = await self.ray_token(md)
                details = await self.serve.get(url, token=token)
            except serve_client.ServeError as exc:
                if exc.reachable:
                    raise
                return  # no Ray head, nothing to remove
            slots = set(rollout.slot_names(app_name))
            if slots & set(details.get("applications") or {}):
                body = serve_client.remove_body(details, app_name)
                body["applications"] = [a for a in body["applications"] if a["name"] not in slots]
                await self.serve.put(url, body, token=token)
                log.info("%s/%s: Serve application %s removed from %s", entry.namespace, entry.name, app_name, url)

    async def ray_token(self, md: api.ModelDeployment) -> str | None:
        """The token the Ray dashboard of this ModelDeployment wants (ServeError when unreadable)."""
        if self.config.external_ray:
            return external_ray_token()
        uid = str(md.metadata.get("uid") or "")
        cached = self._tokens.get((md.namespace, md.name))
        if cached is not None and cached[0] == uid:
            return cached[1]
        name = render.child_name(md, "ray-token")
        try:
            secret = await self.kube.get(SECRETS, md.namespace, name)
        except ApiError as exc:
            raise serve_client.ServeError(
                f"cannot read the Ray token Secret {md.namespace}/{name}: HTTP {exc.status} {exc.reason}",
                reachable=False,
            ) from None
        token = _decoded((secret or {}).get("data", {}).get(render.RAY_TOKEN_KEY))
        if not token:
            raise serve_client.ServeError(
                f"the Ray token Secret {md.namespace}/{name} is missing or has no {render.RAY_TOKEN_KEY!r} "
                "(created again at the next resync)",
                reachable=False,
            )
        self._tokens[(md.namespace, md.name)] = (uid, token)
        return token

    def forget_token(self, md: api.ModelDeployment) -> None:
        self._tokens.pop((md.namespace, md.name), None)


def _route_slots(p: rollout.Plan, slots: tuple[rollout.Slot, rollout.Slot]) -> tuple[tuple[int, int], ...]:
    """The gateway's backends as (slot, weight): the serving slot alone, or both by ready replicas."""
    index = {s.name: i for i, s in enumerate(slots)}
    if p.old is not None and p.new is not None and not p.new.deleting and p.new.exists:
        w_old, w_new = rollout.weights(*rollout.seats(p))
        if p.old.deleting or not p.old.exists:
            return ((index[p.new.name], 100),)
        return ((index[p.old.name], w_old), (index[p.new.name], w_new))
    if p.old is not None:
        return ((index[p.old.name], 100),)
    serving = p.serving or slots[0]
    return ((index.get(serving.name, 0), 100),)


def _state(details: dict[str, Any], p: rollout.Plan) -> serve_client.AppState:
    """Serve's view for status: the serving application, or both of a rollout together."""
    if p.old is None or p.new is None:
        name = p.serving.name if p.serving is not None else next(iter(p.apps), "")
        return serve_client.app_state(details, name, DEPLOYMENT_NAME)
    old = serve_client.app_state(details, p.old.name, DEPLOYMENT_NAME)
    new = serve_client.app_state(details, p.new.name, DEPLOYMENT_NAME)
    lead = old if old.status not in ("MISSING", "DELETING") else new
    return dataclasses.replace(
        lead,
        status="RUNNING" if "RUNNING" in (old.status, new.status) else lead.status,
        running_replicas=old.running_replicas + new.running_replicas,
        target_replicas=(old.target_replicas or 0) + (new.target_replicas or 0),
        replicas=[*old.replicas, *new.replicas],
    )


def _decoded(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode().strip() or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def external_ray_token() -> str | None:
    """The operator's own token for a shared Ray cluster: Ray's `RAY_AUTH_TOKEN`, else the file at
    `RAY_AUTH_TOKEN_PATH`; None (no header) when neither is set."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip() or None
    return None

"""The gateway's aggregated routes: one ConfigMap, one key per served ModelDeployment.

The gateway mounts the ConfigMap `--routes-configmap` (in the gateway's namespace) as its routes
directory and loads each key as one route. Each ModelDeployment's route is the JSON its rendered
route ConfigMap holds (`Entry.route_json`); invalid or not yet rendered objects get no key, and
keys of deleted objects are removed.

Route conflicts: a ModelDeployment that serves a model name (base or adapter) an older one
already serves gets no key (`state.route_conflicts`: oldest by creationTimestamp wins, ties by
namespace/name, the gateway's own rule) and a `Conflict` condition; `refresh` recomputes them
after every apply and delete and schedules a status write for each object whose conflict changed,
so when the older one is deleted or renames, the younger one gets its route and the condition clears.

Traffic splits: ModelDeployments in one namespace that serve the same names and all set
spec.traffic (`state.route_plan`) get one key, named after the oldest member, whose route has one
weighted backend per member (`rayleigh_gateway.routes.split_route`; the oldest member's gateway
settings apply); the other members get no key of their own, and no `Conflict`.

After an operator (re)start, nothing is written until every ModelDeployment of the first listing
(`Tracked.seed`) has been applied once, or `--resync-seconds` have passed: a write before that would
drop the routes of objects not applied yet, and let a younger object take over an older one's name.

Writes are debounced (one write for a burst of changes) and happen only when the routes differ
from what was last written; the ConfigMap is read back only at start, on each resync (to restore
hand edits) and after a failed write.
"""

from __future__ import annotations

import asyncio
import json
import logging

from rayleigh_gateway.routes import Route, split_route
from rayleigh_operator import render, rollout
from rayleigh_operator.kube import CONFIGMAPS, MODEL_DEPLOYMENTS, KubeClient
from rayleigh_operator.state import Entry, OperatorConfig, Share, Tracked

log = logging.getLogger("rayleigh.operator")


def rollout_route(entry: Entry) -> str:
    """The route, its backend moved to the Serve slot(s) a rollout uses (rollout.py), weighted by
    ready replicas while both versions serve. (A member of a traffic split keeps its one backend.)"""
    assert entry.route_json is not None
    if entry.route_slots == ((0, 100),):
        return entry.route_json
    data = json.loads(entry.route_json)
    base = data.pop("backend", None)
    if base is None:
        return entry.route_json
    data.pop("backends", None)
    who = f"{entry.namespace}/{entry.name}"
    urls = [base if slot == 0 else base.rstrip("/") + rollout.ROUTE_SUFFIX for slot, _ in entry.route_slots]
    if len(entry.route_slots) == 1:
        data["backend"] = urls[0]
    else:
        data["backends"] = [
            {"name": who + ("" if slot == 0 else rollout.SLOT_SUFFIX), "url": url, "weight": weight}
            for (slot, weight), url in zip(entry.route_slots, urls, strict=True)
        ]
    route = Route.model_validate(data)
    return json.dumps(route.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"


class RoutesWriter:
    def __init__(self, kube: KubeClient, config: OperatorConfig, tracked: Tracked) -> None:
        self.kube = kube
        self.config = config
        self.tracked = tracked
        self._dirty = asyncio.Event()
        self._written: dict[str, str] | None = None  # what the last write put in the ConfigMap
        self._verify = True  # re-read the ConfigMap before the next write (start, resync)

    def mark_dirty(self) -> None:
        """A route may have changed: write (after the debounce) if the routes differ."""
        self._dirty.set()

    def refresh(self, skip: Entry | None = None) -> None:
        """A route or a served name may have changed: recompute the route conflicts, schedule a
        status write for every object whose conflict changed (but `skip`, whose caller writes its
        status itself), and write the routes (debounced)."""
        if not self.config.routes_configmap:
            return  # no gateway routes, so no route conflicts: each model has its own Serve URL
        if skip is not None:
            self.tracked.note_claim(skip)
        self._update_conflicts(skip)
        self._dirty.set()

    def _update_conflicts(self, skip: Entry | None = None) -> None:
        for entry in self.tracked.refresh_conflicts():
            if entry is not skip and entry.md is not None:
                self.tracked.schedule(entry, 0)

    def verify(self) -> None:
        """Read the ConfigMap back before the next write (a hand edit is restored too), and write."""
        self.tracked.rebuild_claims()
        self._verify = True
        self._dirty.set()

    def desired(self) -> dict[str, str]:
        """One key per served ModelDeployment (`namespace_name.json`): the gateway loads each file
        of the mounted ConfigMap as one route. Invalid or not yet rendered objects get no route, nor
        do those that claim a model name an older one serves."""
        entries = self.tracked.entries
        conflicts = self.tracked.conflicts()
        shares = self.tracked.shares()
        out: dict[str, str] = {}
        for (namespace, name), entry in sorted(entries.items()):
            if entry.route_json is None or entry.spec_problem is not None or (namespace, name) in conflicts:
                continue
            share = shares.get((namespace, name))
            if share is None:
                out[f"{namespace}_{name}.json"] = rollout_route(entry)
            elif share.route == (namespace, name) and (split := self._split_json(share)) is not None:
                out[f"{namespace}_{name}.json"] = split
            # else: a younger member of a split, served through the oldest member's key
        return out

    def _split_json(self, share: Share) -> str | None:
        """The one route of a traffic split: every routed member's backend with its weight."""
        members: list[tuple[Route, int]] = []
        for key, weight in zip(share.members, share.weights, strict=True):
            entry = self.tracked.entries.get(key)
            if entry is not None and entry.route_json is not None and entry.spec_problem is None:
                members.append((Route.model_validate_json(entry.route_json), weight))
        if not members:
            return None
        route = split_route(members, sticky=share.sticky)
        return json.dumps(route.model_dump(mode="json", by_alias=True), indent=2, sort_keys=True) + "\n"

    async def write(self) -> None:
        """Apply the aggregated routes ConfigMap; keys of deleted ModelDeployments are removed.

        The ConfigMap is read back only at start and on each resync (to restore hand edits); in
        between, a write happens only when the routes differ from what was last written.
        """
        name = self.config.routes_configmap
        if not name:
            return
        if self.tracked.initial_pending():
            self._dirty.set()  # the run loop comes back after the debounce
            return
        self._update_conflicts()  # objects of the first listing never applied may have been forgotten
        namespace = self.config.render.gateway_namespace
        desired = self.desired()
        if self._verify:
            current = await self.kube.get(CONFIGMAPS, namespace, name)
            self._written = None if current is None else dict(current.get("data") or {})
            self._verify = False
        if self._written == desired:
            return
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/name": "rayleigh",
                    "app.kubernetes.io/component": "gateway-routes",
                    "app.kubernetes.io/managed-by": render.FIELD_MANAGER,
                    "app.kubernetes.io/part-of": "rayleigh",
                },
            },
            "data": desired,
        }
        await self.kube.apply(body, field_manager=render.FIELD_MANAGER)
        stale = set(self._written or {}) - set(desired)
        if stale:
            # Server-side apply drops keys we no longer own; a merge patch makes sure of it.
            await self.kube.patch(CONFIGMAPS, namespace, name, {"data": dict.fromkeys(stale)})
        self._written = desired
        log.info("gateway routes: %d models in %s/%s", len(desired), namespace, name)

    async def seed(self) -> None:
        """List the ModelDeployments once at start (`Tracked.seed`), so that route conflicts and
        the first routes write account for objects kopf has not resumed yet."""
        if not self.config.routes_configmap:
            return
        try:
            listed = await asyncio.gather(
                *(self.kube.list(MODEL_DEPLOYMENTS, ns) for ns in (self.config.namespaces or (None,)))
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("gateway routes: cannot list ModelDeployments at start: %r", exc)
            return
        self.tracked.seed((body for items in listed for body in items), self.config.resync_seconds)
        self.refresh()

    async def run(self) -> None:
        """Write whenever marked dirty, debounced; a failed write is retried after a second."""
        await self.seed()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.config.routes_debounce_seconds)  # one write for a burst of changes
            self._dirty.clear()
            try:
                await self.write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("gateway routes: %r; retrying", exc)
                self._verify = True  # the write may have half-happened: read back first
                await asyncio.sleep(1)
                self._dirty.set()

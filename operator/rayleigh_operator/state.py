"""What the operator knows: its settings, and per ModelDeployment the parsed spec and what it saw.

- `OperatorConfig`: the flags of `rayleigh operator`, and the per-object settings derived from
  them (Serve application name, route prefix, dashboard URL, endpoint, Serve config, render
  options), all templates over the ModelDeployment's name and namespace.
- `parse_spec`: the typed ModelDeployment of a stored object, or SpecError.
- `Entry`: one ModelDeployment's state between events (spec, problems, readiness, Serve state,
  the status last written, when it is next due).
- `route_conflicts`, `route_plan` (in `route_plan.py`, re-exported): which ModelDeployments claim a
  model name an older one already serves, and which form a traffic split.
- `Tracked`: every Entry, and the wake-up of the tracker when one becomes due.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rayleigh_api as api
from rayleigh_api.validation import validate_document
from rayleigh_operator import render, serve_client
from rayleigh_operator.render import RenderOptions
from rayleigh_operator.route_plan import Claim, Conflict, Share, route_conflicts, route_plan, traffic_of

__all__ = [
    "Claim",
    "Conflict",
    "Entry",
    "OperatorConfig",
    "Share",
    "Tracked",
    "parse_spec",
    "route_conflicts",
    "route_plan",
    "traffic_of",
]
from rayleigh_serving.config import build_serve_config

# The label selector of every child this operator manages (lists and watches use it).
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={render.FIELD_MANAGER}"


@dataclass(frozen=True)
class OperatorConfig:
    """Flags of `rayleigh operator`."""

    render: RenderOptions = field(default_factory=RenderOptions)
    # Templates with {name} and {namespace} (and {route_prefix} for the endpoint).
    dashboard_url: str = "http://{name}-head.{namespace}.svc:8265"
    # status.endpoint: the gateway's /v1 URL; None: no gateway, the model's own Serve URL.
    endpoint: str | None = None
    app_name: str = "{name}"
    route_prefix: str = "/"
    # The Ray cluster is not a child of the ModelDeployment (shared, external): deleting the
    # ModelDeployment must then remove its Serve application (a finalizer does).
    external_ray: bool = False
    # Local mode / tests: relative file:// model paths resolve against this directory.
    local_base: Path | None = None
    poll_seconds: float = 2.0
    resync_seconds: float = 30.0
    gpu_check: bool = True
    metric_check: bool = True
    monitoring: str = "auto"  # auto | on | off
    concurrency: int = 16
    # Namespaces to serve; empty: all (cluster-wide watches).
    namespaces: tuple[str, ...] = ()
    # The one ConfigMap, in the gateway's namespace (render.gateway_namespace), that gathers every
    # ModelDeployment's route, one key each: the gateway mounts it as its routes directory. None: no
    # gateway, nothing written (the chart names one per release).
    routes_configmap: str | None = None
    routes_debounce_seconds: float = 0.2
    # Scale to zero: the port of the wake endpoint the gateway POSTs to (idle.py); 0: none.
    wake_port: int = 0
    # Rollout analysis (analysis.py): Prometheus' base URL; None: steps continue on readiness alone.
    prometheus_url: str | None = None
    # A Serve application leaves the gateway's route this long before it is removed (the gateways
    # must have read the route without it: a mounted ConfigMap takes up to about a minute).
    route_settle_seconds: float = 60.0

    # --- per-object settings -----------------------------------------------------------------

    def _fmt(self, template: str, md: api.ModelDeployment, **extra: str) -> str:
        return template.format(name=md.name, namespace=md.namespace, **extra)

    def route_prefix_for(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.route_prefix, md)

    def app_name_for(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.app_name, md)

    def dashboard_url_for(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.dashboard_url, md)

    def endpoint_for(self, md: api.ModelDeployment) -> str:
        prefix = self.route_prefix_for(md).rstrip("/")
        if self.endpoint is None:
            # No gateway: the Serve HTTP proxies of the model's own Ray cluster (in-cluster only, and
            # only for pods the per-model NetworkPolicy admits: --gateway-pod-label).
            return f"http://{render.child_name(md, 'serve')}.{md.namespace}.svc:{render.SERVE_PORT}{prefix}/v1"
        return self._fmt(self.endpoint, md, route_prefix=prefix)

    def serve_config_for(self, md: api.ModelDeployment) -> dict[str, Any]:
        """The Serve config PUT to the dashboard (raises ServeConfigError for what it cannot express)."""
        return build_serve_config(
            md,
            route_prefix=self.route_prefix_for(md),
            app_name=self.app_name_for(md),
            local_base=self.local_base,
            ingress=self.render.serve_ingress,
        )

    def render_options_for(
        self, md: api.ModelDeployment, *, monitoring: bool, metric_available: bool | None
    ) -> RenderOptions:
        """The flags' RenderOptions with this object's route prefix and what the cluster offers."""
        return dataclasses.replace(
            self.render,
            route_prefix=self.route_prefix_for(md),
            monitoring=monitoring,
            autoscaling_metric_available=metric_available,
        )


def parse_spec(doc: dict[str, Any]) -> api.ModelDeployment:
    """The typed ModelDeployment, or SpecError naming every problem.

    The API server enforces the CRD's schema and CEL rules at admission, so a stored object
    already satisfies them; the operator re-checks the types (pydantic, microseconds) and leaves
    the CEL rules to admission: evaluating them here with cel-python costs about 0.1 s per object.
    Only when parsing fails does it run the full offline validation, for its field-path messages.
    """
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    try:
        return api.ModelDeployment.model_validate(body)
    except ValueError:
        validate_document(doc)  # raises SpecError with every problem and its field path
        raise


def as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def content_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able value (a Serve application, a replica placement)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Entry:
    namespace: str
    name: str
    body: dict[str, Any]
    md: api.ModelDeployment | None = None
    spec_problem: tuple[str, str] | None = None
    options: RenderOptions | None = None
    # This object's route as the gateway reads it (the rendered route ConfigMap's JSON); None while
    # the spec is invalid or not yet rendered, so the gateway serves no route for it.
    route_json: str | None = None
    # The model names its route claims (base + adapters): set when the route renders, and from the
    # operator's first listing until then; empty while the spec is invalid.
    served: tuple[str, ...] = ()
    # spec.traffic (weight, sticky), set with `served`; None when it sets none.
    traffic: tuple[int, bool] | None = None
    # An older ModelDeployment already serves one of those names: no route (route_conflicts).
    conflict: Conflict | None = None
    # Its part in a traffic split (route_plan), when it sets spec.traffic and is routed.
    share: Share | None = None
    # A cluster-side refusal of the last apply, e.g. (Reason.FORBIDDEN, message); retried with
    # backoff (`apply_failures`, `retry_at`, monotonic) at the resync.
    apply_error: tuple[str, str] | None = None
    apply_failures: int = 0
    retry_at: float = 0.0
    own_versions: dict[str, str] = field(default_factory=dict)
    metric_missing: tuple[str, str] | None = None
    head_ready: bool = False
    dashboard_error: str | None = None
    workers_replicas: int = 0
    workers_ready: int = 0
    status: dict[str, Any] | None = None
    serve_state: serve_client.AppState | None = None
    serve_push_error: str | None = None
    failed_app_hash: str | None = None
    replica_placement: str | None = None
    # The gateway's backends as (Serve slot, weight): slot 0 alone unless a rollout moved it (rollout.py).
    route_slots: tuple[tuple[int, int], ...] = ((0, 100),)
    # Applications waiting to be removed, and since when (monotonic) they are out of the route.
    unrouted_since: dict[frozenset[str], float] = field(default_factory=dict)
    applied: bool = False
    # Set by the delete handler: the tracker must not deploy this application again.
    deleting: bool = False
    next_due: float = float("inf")
    last_restore: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def created(self) -> str | None:
        value = self.body.get("metadata", {}).get("creationTimestamp")
        return None if value is None else str(value)

    def claim(self) -> Claim | None:
        """The names this object's route serves, unless its spec is invalid."""
        if not self.served or self.spec_problem is not None:
            return None
        return Claim(self.key, self.created, self.served, self.traffic)

    def observe_deployment(self, obj: dict[str, Any]) -> bool:
        """Fold a Deployment child's status into the entry; True when readiness changed."""
        if obj.get("kind") != "Deployment":
            return False
        st = obj.get("status") or {}
        name = obj["metadata"]["name"]
        before = (self.head_ready, self.workers_replicas, self.workers_ready)
        if name.endswith("-head"):
            self.head_ready = int(st.get("readyReplicas") or 0) >= 1
        elif name.endswith("-workers"):
            self.workers_replicas = int(st.get("replicas") or 0)
            self.workers_ready = int(st.get("readyReplicas") or 0)
        return before != (self.head_ready, self.workers_replicas, self.workers_ready)

    def record_applied(self, obj: dict[str, Any]) -> None:
        """Remember the resourceVersion our own apply produced: its watch event is not drift."""
        if obj.get("kind") == "Deployment":
            self.own_versions[obj["metadata"]["name"]] = str(obj["metadata"].get("resourceVersion"))


class Tracked:
    """Every ModelDeployment this operator knows, by (namespace, name), and the tracker's wake-up."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], Entry] = {}
        self.wake = asyncio.Event()
        # ModelDeployments of the operator's first listing not applied yet (`seed`), and until when
        # (monotonic) the routes writer waits for them rather than drop their routes.
        self.initial: set[tuple[str, str]] = set()
        self.initial_deadline = 0.0
        # Every Entry's claim, kept by `note_claim` (and rebuilt by `rebuild_claims`), and their
        # route_conflicts, recomputed only when a claim changed: an apply that changes none, the
        # common case, costs a comparison, not a pass over every object.
        self._claims: dict[tuple[str, str], Claim] = {}
        self._conflicts: dict[tuple[str, str], Conflict] = {}
        self._shares: dict[tuple[str, str], Share] = {}
        self._stale = False  # claims changed since the conflicts were computed
        self._unsynced = False  # conflicts recomputed since entries' `conflict` were last set

    def seed(self, bodies: Iterable[dict[str, Any]], wait_seconds: float) -> None:
        """Remember every existing ModelDeployment before its first apply: the names it serves
        count in route conflicts at once (a younger object applied first must not take them over
        after an operator restart), and the routes writer keeps their routes meanwhile."""
        for body in bodies:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            entry = self.entry_for(body)
            if entry.md is not None or entry.applied or entry.lock.locked():
                continue  # kopf's resume got there first
            with contextlib.suppress(ValueError):  # SpecError too: its apply reports it
                md = parse_spec({k: v for k, v in body.items() if k != "status"})
                entry.served = tuple(md.served_models())
                entry.traffic = traffic_of(md)
            self.note_claim(entry)
            self.initial.add(entry.key)
        self.initial_deadline = time.monotonic() + wait_seconds

    def initial_pending(self) -> bool:
        """Whether ModelDeployments of the first listing are still waiting for their first apply;
        once the deadline passes, those never applied (deleted meanwhile) are forgotten."""
        if not self.initial:
            return False
        if time.monotonic() < self.initial_deadline:
            return True
        for key in self.initial:
            entry = self.entries.get(key)
            if entry is None or entry.md is not None or entry.spec_problem is not None or entry.applied:
                continue
            if entry.lock.locked():  # its first apply is running: it sets the claim itself
                continue
            del self.entries[key]
            self._drop_claim(key)
        self.initial.clear()
        return False

    def applied_once(self, key: tuple[str, str]) -> None:
        self.initial.discard(key)

    def note_claim(self, entry: Entry) -> None:
        """The names `entry` serves (or its spec's validity) may have changed."""
        claim = entry.claim()
        if self._claims.get(entry.key) != claim:
            if claim is None:
                self._claims.pop(entry.key, None)
            else:
                self._claims[entry.key] = claim
            self._stale = True

    def _drop_claim(self, key: tuple[str, str]) -> None:
        if self._claims.pop(key, None) is not None:
            self._stale = True

    def rebuild_claims(self) -> None:
        """Every claim from scratch (at each resync: whatever path changed one unnoticed)."""
        claims = {e.key: c for e in self.entries.values() if (c := e.claim()) is not None}
        if claims != self._claims:
            self._claims = claims
            self._stale = True

    def conflicts(self) -> dict[tuple[str, str], Conflict]:
        """route_conflicts over every claim, recomputed when one changed."""
        if self._stale:
            self._conflicts, self._shares = route_plan(self._claims.values())
            self._stale = False
            self._unsynced = True
        return self._conflicts

    def shares(self) -> dict[tuple[str, str], Share]:
        """route_plan's traffic split shares over every claim, recomputed when one changed."""
        self.conflicts()
        return self._shares

    def refresh_conflicts(self) -> list[Entry]:
        """Set every Entry's route conflict and split share; the entries where either changed."""
        conflicts = self.conflicts()
        if not self._unsynced:
            return []
        self._unsynced = False
        changed = []
        for key, entry in self.entries.items():
            conflict, share = conflicts.get(key), self._shares.get(key)
            if conflict != entry.conflict or share != entry.share:
                entry.conflict, entry.share = conflict, share
                changed.append(entry)
        return changed

    def entry_for(self, body: dict[str, Any]) -> Entry:
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(namespace=key[0], name=key[1], body=body)
            entry.status = body.get("status") or None
        entry.body = body
        return entry

    def get(self, namespace: str, name: str) -> Entry | None:
        return self.entries.get((namespace, name))

    def pop(self, namespace: str, name: str) -> Entry | None:
        self.initial.discard((namespace, name))
        self._drop_claim((namespace, name))
        return self.entries.pop((namespace, name), None)

    def schedule(self, entry: Entry, delay: float | None) -> None:
        """Make `entry` due for a Serve sync in `delay` seconds (None: not due), if sooner than now planned."""
        due = float("inf") if delay is None else time.monotonic() + delay
        if due < entry.next_due:
            entry.next_due = due
            self.wake.set()

"""The operator's core loop, independent of kopf: apply children, deploy Serve, report status.

kopf delivers ModelDeployment create/update/resume and Deployment events (handlers.py); this
module does the work:

- `apply(body)`: validate, render, server-side apply every child, write status. Runs on every
  create, spec change and operator start (resume), so a restart mid-reconcile converges: names
  are deterministic and apply is idempotent, so nothing is duplicated.
- a tracker task: for each ModelDeployment that is due, once its Ray head is ready, GET the Serve
  applications on the head's dashboard, PUT the Serve config when Serve runs something else
  (first deploy, spec change, scale, or a restarted head that lost it), and fold Serve's replica
  states into status. Progressing objects are polled every `poll_seconds`; settled ones every
  `resync_seconds`.
- drift: a deleted or edited Deployment child is seen through its watch event and re-applied at
  once; other children (Services, ConfigMap, PDB, NetworkPolicy, HPA) are listed every
  `resync_seconds` and re-applied when missing or different. That interval is the drift bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rayleigh_api as api
from rayleigh_operator import metrics, render, serve_client, status
from rayleigh_operator.kube import (
    CONFIGMAPS,
    DEPLOYMENTS,
    EVENTS,
    MODEL_DEPLOYMENTS,
    NODES,
    PODS,
    ApiError,
    KubeClient,
    type_of,
)
from rayleigh_api.validation import SpecError, validate_document
from rayleigh_serving.config import DEPLOYMENT_NAME, ServeConfigError, build_serve_config

log = logging.getLogger("rayleigh.operator")

MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={render.FIELD_MANAGER}"


@dataclass(frozen=True)
class OperatorConfig:
    """Flags of `rayleigh operator`."""

    render: render.RenderOptions = field(default_factory=render.RenderOptions)
    # Templates with {name} and {namespace} (and {route_prefix} for the endpoint).
    dashboard_url: str = "http://{name}-head.{namespace}.svc:8265"
    endpoint: str = "http://rayleigh-gateway.rayleigh-system.svc/v1"
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
    # ModelDeployment's route, one key each: the gateway mounts it as its routes directory. None: off.
    routes_configmap: str | None = "rayleigh-gateway-routes"
    routes_debounce_seconds: float = 0.2


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _subset(want: Any, have: Any) -> bool:
    """Every field we apply has the value we apply (the API server may add defaults around it)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and _subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(_subset, want, have))
    if isinstance(want, int | float) and isinstance(have, int | float) and not isinstance(want, bool):
        return float(want) == float(have)
    return bool(want == have) or str(want) == str(have)


def drifted(desired: dict[str, Any], observed: dict[str, Any] | None) -> bool:
    if observed is None:
        return True
    want = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "status")}
    return not _subset(want, observed)


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


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Entry:
    namespace: str
    name: str
    body: dict[str, Any]
    md: api.ModelDeployment | None = None
    spec_problem: tuple[str, str] | None = None
    options: render.RenderOptions | None = None
    # This object's route as the gateway reads it (the rendered route ConfigMap's JSON); None while
    # the spec is invalid or not yet rendered, so the gateway serves no route for it.
    route_json: str | None = None
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
    applied: bool = False
    # Set by the delete handler: the tracker must not deploy this application again.
    deleting: bool = False
    next_due: float = float("inf")
    last_restore: dict[str, float] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name


class Reconciler:
    def __init__(self, kube: KubeClient, config: OperatorConfig, serve: serve_client.ServeClient | None = None) -> None:
        self.kube = kube
        self.config = config
        self.serve = serve or serve_client.ServeClient()
        self.entries: dict[tuple[str, str], Entry] = {}
        self._wake = asyncio.Event()
        self._routes_dirty = asyncio.Event()
        self._routes_written: dict[str, str] | None = None  # what the last write put in the ConfigMap
        self._routes_verify = True  # re-read the ConfigMap before the next write (start, resync)
        self._nodes_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._metrics_cache: tuple[float, set[str] | None] | None = None
        self._monitoring: bool | None = None
        self._instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._phases: dict[str, int] = dict.fromkeys(("Pending", "Deploying", "Ready", "Degraded", "Failed"), 0)
        # A Serve PUT replaces every application on a head: GET-then-PUT is a read-modify-write,
        # so two of them on one head (two ModelDeployments sharing a Ray cluster, or a deploy racing
        # a delete) must not interleave, or one undoes the other.
        self._head_locks: dict[str, asyncio.Lock] = {}

    # --- per-object settings ---------------------------------------------------------------

    def _fmt(self, template: str, md: api.ModelDeployment, **extra: str) -> str:
        return template.format(name=md.name, namespace=md.namespace, **extra)

    def route_prefix(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.config.route_prefix, md)

    def app_name(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.config.app_name, md)

    def dashboard_url(self, md: api.ModelDeployment) -> str:
        return self._fmt(self.config.dashboard_url, md)

    def endpoint(self, md: api.ModelDeployment) -> str:
        prefix = self.route_prefix(md).rstrip("/")
        return self._fmt(self.config.endpoint, md, route_prefix=prefix)

    def serve_config(self, md: api.ModelDeployment) -> dict[str, Any]:
        return build_serve_config(
            md, route_prefix=self.route_prefix(md), app_name=self.app_name(md), local_base=self.config.local_base
        )

    def head_lock(self, dashboard_url: str) -> asyncio.Lock:
        return self._head_locks.setdefault(dashboard_url, asyncio.Lock())

    # --- cluster facts (cached) ------------------------------------------------------------

    async def monitoring_enabled(self) -> bool:
        if self.config.monitoring != "auto":
            return self.config.monitoring == "on"
        if self._monitoring is None:
            doc = await self.kube.discover("monitoring.coreos.com/v1")
            self._monitoring = bool(doc and any(r.get("name") == "podmonitors" for r in doc.get("resources", [])))
        return self._monitoring

    async def _gpu_problem(self, md: api.ModelDeployment) -> tuple[str, str] | None:
        gpus = md.spec.resources.gpus
        if not self.config.gpu_check or gpus == 0:
            return None
        now = time.monotonic()
        if self._nodes_cache is None or now - self._nodes_cache[0] > self.config.resync_seconds:
            try:
                self._nodes_cache = (now, await self.kube.list(NODES))
            except ApiError as exc:
                log.warning("cannot list nodes for the GPU check (%s); skipping it", exc)
                return None
        resource = md.spec.resources.gpu_resource_name
        offers = []
        for node in self._nodes_cache[1]:
            value = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
            with contextlib.suppress(TypeError, ValueError):
                offers.append(int(str(value)))
        if not offers or max(offers) >= gpus:
            # No node advertises this GPU at all: a cluster autoscaler may add one; not a spec error.
            return None
        return (
            status.INSUFFICIENT_GPU,
            f"spec.resources.gpus is {gpus} but no node offers more than {max(offers)} {resource}: lower "
            "engine.tensorParallelSize (and resources.gpus) or add larger GPU nodes",
        )

    async def _metric_problem(self, md: api.ModelDeployment) -> tuple[str, str] | None:
        metric = render.autoscaling_metric(md)
        if metric is None or not self.config.metric_check:
            return None
        now = time.monotonic()
        if self._metrics_cache is None or now - self._metrics_cache[0] > self.config.resync_seconds:
            doc = await self.kube.discover("custom.metrics.k8s.io/v1beta1")
            names = None if doc is None else {str(r.get("name", "")) for r in doc.get("resources", [])}
            self._metrics_cache = (now, names)
        names = self._metrics_cache[1]
        if names is None:
            return (
                "CustomMetricsAPIUnavailable",
                f"custom.metrics.k8s.io is not served (install prometheus-adapter with Rayleigh's rules): no "
                f"HPA created, replicas stay at spec.replicas; it scales on {metric} once the metric exists",
            )
        if f"pods/{metric}" not in names:
            return (
                "MetricNotFound",
                f"the custom metrics API has no pods/{metric} (check prometheus-adapter's rules and that "
                "Prometheus scrapes the Ray pods): no HPA created until it appears",
            )
        return None

    # --- apply (create / update / resume) --------------------------------------------------

    def entry_for(self, body: dict[str, Any]) -> Entry:
        meta = body["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(namespace=key[0], name=key[1], body=body)
            entry.status = body.get("status") or None
        entry.body = body
        return entry

    async def apply(self, body: dict[str, Any]) -> Entry:
        """Render and apply every child, then write status. Safe to run any number of times."""
        started = time.perf_counter()
        entry = self.entry_for(body)
        async with entry.lock:
            entry.applied = False
            try:
                await self._apply_locked(entry)
                entry.applied = True
            except Exception:
                metrics.RECONCILES.labels("error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return entry

    async def _apply_locked(self, entry: Entry) -> None:
        body = entry.body
        doc = {k: v for k, v in body.items() if k != "status"}
        doc["metadata"] = {
            k: body["metadata"][k] for k in ("name", "namespace", "uid", "generation") if k in body["metadata"]
        }
        generation = int(body["metadata"].get("generation") or 1)
        if entry.md is None or entry.md.metadata.get("generation") != generation:
            # The spec changed: a failed Serve deploy may now succeed.
            entry.serve_push_error = None
            entry.failed_app_hash = None
        entry.spec_problem = None
        entry.route_json = None
        try:
            md = parse_spec(doc)
        except SpecError as exc:
            entry.md = None
            entry.spec_problem = (status.INVALID_SPEC, str(exc))
        else:
            entry.md = md
            entry.spec_problem = await self._gpu_problem(md)
            if entry.spec_problem is None:
                try:
                    self.serve_config(md)  # fail early on what the Serve config cannot express
                except ServeConfigError as exc:
                    entry.spec_problem = (status.INVALID_SPEC, str(exc))
        if entry.spec_problem is not None or entry.md is None:
            metrics.RECONCILES.labels("invalid").inc()
            log.warning("%s/%s: %s", entry.namespace, entry.name, entry.spec_problem)
            await self.write_status(entry)
            entry.next_due = float("inf")
            return
        md = entry.md
        entry.metric_missing = await self._metric_problem(md)
        options = dataclasses.replace(
            self.config.render,
            route_prefix=self.route_prefix(md),
            monitoring=await self.monitoring_enabled(),
            autoscaling_metric_available=None if md.spec.autoscaling is None else entry.metric_missing is None,
        )
        try:
            children = render.render(md, options=options)
        except render.RenderError as exc:
            entry.spec_problem = (status.INVALID_SPEC, str(exc))
            metrics.RECONCILES.labels("invalid").inc()
            await self.write_status(entry)
            return
        # The rendered children are not kept (re-rendering costs about 0.2 ms; keeping them
        # costs about 100 KB per ModelDeployment): only the options that produced them.
        entry.options = options
        entry.route_json = next(
            c["data"][render.ROUTE_KEY]
            for c in children
            if c["kind"] == "ConfigMap" and render.ROUTE_LABEL in c["metadata"].get("labels", {})
        )
        results = await asyncio.gather(*(self._apply_child(c) for c in children))
        for obj in results:
            self._observe_deployment(entry, obj)
            if obj.get("kind") == "Deployment":
                entry.own_versions[obj["metadata"]["name"]] = str(obj["metadata"].get("resourceVersion"))
        metrics.RECONCILES.labels("applied").inc()
        self._routes_dirty.set()
        await self.write_status(entry)
        self._schedule(entry, 0 if entry.head_ready else None)

    async def _apply_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        return await self.kube.apply(obj, field_manager=render.FIELD_MANAGER)

    def _observe_deployment(self, entry: Entry, obj: dict[str, Any]) -> bool:
        """Fold a Deployment child's status into the entry; True when readiness changed."""
        if obj.get("kind") != "Deployment":
            return False
        st = obj.get("status") or {}
        name = obj["metadata"]["name"]
        before = (entry.head_ready, entry.workers_replicas, entry.workers_ready)
        if name.endswith("-head"):
            entry.head_ready = int(st.get("readyReplicas") or 0) >= 1
        elif name.endswith("-workers"):
            entry.workers_replicas = int(st.get("replicas") or 0)
            entry.workers_ready = int(st.get("readyReplicas") or 0)
        return before != (entry.head_ready, entry.workers_replicas, entry.workers_ready)

    # --- status ----------------------------------------------------------------------------

    def observed(self, entry: Entry) -> status.Observed:
        md = entry.md
        meta = entry.body["metadata"]
        spec = entry.body.get("spec") or {}
        st = entry.serve_state
        return status.Observed(
            generation=int(meta.get("generation") or 1),
            desired_replicas=md.spec.replicas if md else _int(spec.get("replicas")),
            selector=render.worker_selector(md) if md else f"{render.MD_LABEL}={entry.name}",
            served_models=md.served_models() if md else [],
            endpoint=self.endpoint(md) if md else "",
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
        )

    async def write_status(self, entry: Entry) -> None:
        new = status.compute_status(self.observed(entry), entry.status, _now())
        if not status.status_differs(entry.status, new):
            return
        previous = entry.status
        try:
            await self.kube.patch_status(MODEL_DEPLOYMENTS, entry.namespace, entry.name, new)
        except ApiError as exc:
            if exc.status == 404:
                self.forget(entry.namespace, entry.name)
                return
            raise
        entry.status = new
        self._update_phase_gauge((previous or {}).get("phase"), new.get("phase"))
        for t in status.transitions(previous, new):
            await self.post_event(entry, t)

    def _update_phase_gauge(self, old: str | None = None, new: str | None = None) -> None:
        if old == new:
            return
        if old in self._phases:
            self._phases[old] -= 1
            metrics.MODEL_DEPLOYMENTS.labels(old).set(self._phases[old])
        if new in self._phases:
            self._phases[new] += 1
            metrics.MODEL_DEPLOYMENTS.labels(new).set(self._phases[new])

    async def post_event(self, entry: Entry, t: status.Transition) -> None:
        meta = entry.body["metadata"]
        now = datetime.datetime.now(tz=datetime.UTC)
        event = {
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
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        log.info("%s/%s: %s %s: %s", entry.namespace, entry.name, t.type, t.reason, t.message)
        try:
            await self.kube.create(EVENTS, entry.namespace, event)
        except ApiError as exc:
            log.warning("cannot post event for %s/%s: %s", entry.namespace, entry.name, exc)

    # --- child events and drift ------------------------------------------------------------

    async def on_deployment_event(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(render.MD_LABEL)
        entry = self.entries.get((meta.get("namespace") or "default", owner or ""))
        if entry is None or entry.md is None or entry.spec_problem is not None:
            return
        name = str(meta.get("name"))
        if event_type == "DELETED":
            desired = self.desired_deployment(entry, name)
            if desired is not None:
                await self.restore(entry, desired, "deleted")
            return
        changed = self._observe_deployment(entry, obj)
        # Our own apply's result needs no drift check (the common case: one event per apply).
        if entry.own_versions.get(name) != str(meta.get("resourceVersion")):
            desired = self.desired_deployment(entry, name)
            if desired is not None and drifted(desired, obj):
                await self.restore(entry, desired, "edited")
        if changed:
            self._schedule(entry, 0)

    def desired_children(self, entry: Entry) -> list[dict[str, Any]]:
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

    async def restore(self, entry: Entry, desired: dict[str, Any], why: str) -> None:
        key = f"{desired['kind']}/{desired['metadata']['name']}"
        now = time.monotonic()
        if now - entry.last_restore.get(key, -1e9) < self.config.poll_seconds:
            # Something keeps changing it back: do not fight in a tight loop.
            self._schedule(entry, self.config.poll_seconds)
            return
        owner = await self.kube.get(MODEL_DEPLOYMENTS, entry.namespace, entry.name)
        if (
            owner is None
            or owner["metadata"].get("deletionTimestamp")
            or (owner["metadata"].get("uid") != entry.body["metadata"].get("uid"))
        ):
            return  # going away with its owner: garbage collection, not drift
        entry.last_restore[key] = now
        log.info("%s/%s: re-applying %s %s", entry.namespace, entry.name, why, key)
        metrics.CHILD_RESTORES.labels(desired["kind"]).inc()
        result = await self._apply_child(desired)
        if result.get("kind") == "Deployment":
            entry.own_versions[result["metadata"]["name"]] = str(result["metadata"].get("resourceVersion"))
        if self._observe_deployment(entry, result):
            self._schedule(entry, 0)

    async def resync_children(self) -> None:
        """List every child kind once and re-apply what is missing or edited (the drift bound)."""
        wanted: dict[tuple[str, str], list[tuple[Entry, dict[str, Any]]]] = {}
        for entry in list(self.entries.values()):
            if not entry.applied and entry.spec_problem is None:
                # The last apply failed part-way (API error): do it again, level-triggered.
                try:
                    await self.apply(entry.body)
                except Exception as exc:
                    log.warning("%s/%s: re-apply failed: %r", entry.namespace, entry.name, exc)
                continue
            if entry.md is None or entry.spec_problem is not None:
                continue
            metric_appeared = (
                entry.md.spec.autoscaling is not None
                and entry.metric_missing is not None
                and await self._metric_problem(entry.md) is None
            )
            if metric_appeared:
                await self.apply(entry.body)  # the metric now exists: create the HPA
                continue
            for child in self.desired_children(entry):
                wanted.setdefault((child["apiVersion"], child["kind"]), []).append((entry, child))
        for (_, kind), pairs in wanted.items():
            rtype = type_of(pairs[0][1])
            try:
                items = await self.kube.list(rtype, label_selector=MANAGED_SELECTOR)
            except ApiError as exc:
                log.warning("resync: cannot list %s: %s", kind, exc)
                continue
            observed = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}
            for entry, child in pairs:
                obj = observed.get((child["metadata"]["namespace"], child["metadata"]["name"]))
                if kind == "Deployment" and obj is not None and self._observe_deployment(entry, obj):
                    self._schedule(entry, 0)
                if drifted(child, obj):
                    await self.restore(entry, child, "missing" if obj is None else "edited")

    # --- Serve -----------------------------------------------------------------------------

    async def sync_serve(self, entry: Entry) -> None:
        """Deploy or update the Serve application when the head is ready; refresh status."""
        async with entry.lock:
            md = entry.md
            if md is None or entry.spec_problem is not None or entry.deleting:
                return
            if not entry.head_ready:
                entry.serve_state = None
                entry.dashboard_error = None
                await self.write_status(entry)
                return
            url = self.dashboard_url(md)
            async with self.head_lock(url):
                state = await self._sync_serve_locked(entry, md, url)
            if state is None:
                await self.write_status(entry)
                return
            entry.serve_state = state
            await self.write_status(entry)
            await self._update_deletion_costs(entry, state)

    async def _sync_serve_locked(self, entry: Entry, md: api.ModelDeployment, url: str) -> serve_client.AppState | None:
        """GET the head's applications and PUT ours when Serve runs something else; the state seen.

        Runs under the head's lock (`head_lock`): the PUT body is built from this very GET.
        """
        app_name = self.app_name(md)
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
        desired = self.serve_config(md)
        app = desired["applications"][0]
        app_hash = _hash(app)
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
        placement = _hash(sorted((r.get("node_ip") or "", r.get("state") or "") for r in state.replicas))
        if placement == entry.replica_placement or entry.md is None:
            return
        pods = await self.kube.list(PODS, entry.namespace, label_selector=render.worker_selector(entry.md))
        for pod_name, cost in render.deletion_costs(pods, state.replicas).items():
            body = {"metadata": {"annotations": {render.DELETION_COST_ANNOTATION: cost}}}
            with contextlib.suppress(ApiError):
                await self.kube.patch(PODS, entry.namespace, pod_name, body)
        entry.replica_placement = placement

    async def remove_serve_app(self, body: dict[str, Any]) -> None:
        """Take this ModelDeployment's application off a shared Ray cluster (others untouched)."""
        entry = self.entry_for(body)
        md = entry.md
        if md is None:
            try:
                md = parse_spec({k: v for k, v in body.items() if k != "status"})
            except (SpecError, ValueError):
                return
        async with entry.lock:  # waits for a sync in progress; none deploys it after this
            entry.deleting = True
        url, app_name = self.dashboard_url(md), self.app_name(md)
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

    # --- tracker ---------------------------------------------------------------------------

    def _schedule(self, entry: Entry, delay: float | None) -> None:
        due = float("inf") if delay is None else time.monotonic() + delay
        if due < entry.next_due:
            entry.next_due = due
            self._wake.set()

    def forget(self, namespace: str, name: str) -> None:
        entry = self.entries.pop((namespace, name), None)
        self._routes_dirty.set()
        if entry is not None:
            self._update_phase_gauge((entry.status or {}).get("phase"), None)

    def _next_interval(self, entry: Entry) -> float:
        phase = (entry.status or {}).get("phase")
        conditions = {c["type"]: c for c in (entry.status or {}).get("conditions", [])}
        settled = phase == "Failed" or (phase == "Ready" and conditions.get("Progressing", {}).get("status") == "False")
        return self.config.resync_seconds if settled else self.config.poll_seconds

    async def _sync_one(self, entry: Entry, sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                await self.sync_serve(entry)
            except Exception:
                log.exception("%s/%s: sync failed", entry.namespace, entry.name)
            if entry.spec_problem is None and entry.md is not None:
                self._schedule(entry, self._next_interval(entry))

    # --- the gateway's aggregated routes ----------------------------------------------------

    def desired_routes(self) -> dict[str, str]:
        """One key per served ModelDeployment (`namespace_name.json`): the gateway loads each file
        of the mounted ConfigMap as one route. Invalid or not yet rendered objects get no route."""
        return {
            f"{namespace}_{name}.json": entry.route_json
            for (namespace, name), entry in sorted(self.entries.items())
            if entry.route_json is not None and entry.spec_problem is None
        }

    async def write_routes(self) -> None:
        """Apply the aggregated routes ConfigMap; keys of deleted ModelDeployments are removed.

        The ConfigMap is read back only at start and on each resync (to restore hand edits); in
        between, a write happens only when the routes differ from what was last written.
        """
        name = self.config.routes_configmap
        if not name:
            return
        namespace = self.config.render.gateway_namespace
        desired = self.desired_routes()
        if self._routes_verify:
            current = await self.kube.get(CONFIGMAPS, namespace, name)
            self._routes_written = None if current is None else dict(current.get("data") or {})
            self._routes_verify = False
        if self._routes_written == desired:
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
        stale = set(self._routes_written or {}) - set(desired)
        if stale:
            # Server-side apply drops keys we no longer own; a merge patch makes sure of it.
            await self.kube.patch(CONFIGMAPS, namespace, name, {"data": dict.fromkeys(stale)})
        self._routes_written = desired
        log.info("gateway routes: %d models in %s/%s", len(desired), namespace, name)

    async def _routes_writer(self) -> None:
        while True:
            await self._routes_dirty.wait()
            await asyncio.sleep(self.config.routes_debounce_seconds)  # one write for a burst of changes
            self._routes_dirty.clear()
            try:
                await self.write_routes()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("gateway routes: %r; retrying", exc)
                self._routes_verify = True  # the write may have half-happened: read back first
                await asyncio.sleep(1)
                self._routes_dirty.set()

    async def run(self) -> None:
        """The tracker: Serve deploys and status for due objects, and the drift resync."""
        watches = [
            asyncio.create_task(self.watch_deployments(ns), name=f"watch-deployments-{ns or 'all'}")
            for ns in (self.config.namespaces or (None,))
        ]
        watches.append(asyncio.create_task(self._routes_writer(), name="gateway-routes"))
        try:
            await self._track()
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _track(self) -> None:
        sem = asyncio.Semaphore(self.config.concurrency)
        next_resync = time.monotonic() + self.config.resync_seconds
        while True:
            now = time.monotonic()
            due = [e for e in self.entries.values() if e.next_due <= now]
            for e in due:
                e.next_due = float("inf")
            if due:
                await asyncio.gather(*(self._sync_one(e, sem) for e in due))
            if now >= next_resync:
                try:
                    await self.resync_children()
                except Exception:
                    log.exception("resync failed")
                self._routes_verify = True  # a hand-edited routes ConfigMap is restored too
                self._routes_dirty.set()
                next_resync = time.monotonic() + self.config.resync_seconds
                for e in self.entries.values():
                    if e.md is not None and e.spec_problem is None and e.next_due == float("inf"):
                        self._schedule(e, 0)
            soonest = min([e.next_due for e in self.entries.values()] + [next_resync])
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, soonest - time.monotonic()))

    async def watch_deployments(self, namespace: str | None = None) -> None:
        """Our Deployment children's events (readiness into status; deletions and edits restored).

        A plain watch, not kopf: these events need no handler bookkeeping, and at scale kopf's
        per-event processing costs more than the work done here.
        """
        version: str | None = None
        while True:
            try:
                if not version:
                    items, version = await self.kube.list_with_version(
                        DEPLOYMENTS, namespace, label_selector=MANAGED_SELECTOR
                    )
                    for obj in items:
                        await self.on_deployment_event("ADDED", obj)
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
                            await self.on_deployment_event(str(event["type"]), obj)
                        except Exception:
                            log.exception("deployment event failed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("deployment watch: %r; retrying", exc)
                version = None
                await asyncio.sleep(1)

    async def close(self) -> None:
        await self.serve.close()
        await self.kube.close()

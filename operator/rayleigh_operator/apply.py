"""Apply: one ModelDeployment -> its children in the cluster, and its status.

Runs on every create, spec change and operator start (resume), and again at resync after an
apply that failed part-way, so a restart mid-reconcile converges: names are deterministic and
server-side apply is idempotent, so nothing is duplicated.

In order, because each step needs the one before:
  1. parse the spec (SpecError -> InvalidSpec);
  2. preflight: GPUs per replica (InsufficientGPU) and what the Serve config can express
     (InvalidSpec); a spec problem writes status Failed and stops here: nothing is created;
  3. the custom metric (no HPA while missing) and PodMonitor support -> render options;
  4. render (RenderError -> InvalidSpec);
  5. server-side apply of every child;
  6. the routes ConfigMap is marked for a write (route conflicts recomputed), the status written,
     the Serve sync scheduled.

A child the API server refuses with 403 (the operator's role lacks a permission, e.g. `create`,
which the API server checks for an apply that creates its object) is not a crash: the other
children are still applied, the status gets phase Degraded with reason `Forbidden` and a message
naming the verb, resource, API group and namespace, one Warning Event is posted, and the apply is
retried at the resync with backoff (`retry_delay`) until an administrator grants the permission.

Concurrently, within step 5: all children at once (`asyncio.gather`), since none needs another
to exist when it is applied. Services, the PDB, the NetworkPolicy and the PodMonitor select pods
by label whenever those come; the HPA targets the ModelDeployment itself; the gateway reads the
route from the aggregated routes ConfigMap, written after step 5. The only ordering the cluster
could notice is the pods' (workers resolve the head Service by name; the NetworkPolicy should
hold before a Ray port serves), and pods are scheduled and started long after the API server
has stored every child of the same round; a worker started earlier would only be restarted.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import time
from typing import Any

import rayleigh_api as api
from rayleigh_api.validation import SpecError
from rayleigh_operator import metrics, render
from rayleigh_operator.kube import SECRETS, ApiError, KubeClient, type_of
from rayleigh_operator.preflight import Preflight
from rayleigh_operator.routes_writer import RoutesWriter
from rayleigh_operator.state import Entry, OperatorConfig, Tracked, parse_spec, traffic_of
from rayleigh_operator.status_writer import StatusWriter
from rayleigh_serving.config import ServeConfigError

log = logging.getLogger("rayleigh.operator")

# responsewriters/errors.go forbiddenMessage: `User "u" cannot VERB resource "R" in API group "G" ...`.
_CANNOT = re.compile(r'cannot (?P<verb>[a-z]+) resource "(?P<resource>[^"]+)" in API group "(?P<group>[^"]*)"')
MAX_RETRY_FACTOR = 8  # a refused apply is retried after 1, 2, 4, 8, 8, ... resync intervals


def retry_delay(failures: int, resync_seconds: float) -> float:
    """Seconds before the apply that failed `failures` times in a row is tried again."""
    return resync_seconds * min(2 ** max(failures - 1, 0), MAX_RETRY_FACTOR)


def forbidden_message(refused: list[tuple[dict[str, Any], ApiError]]) -> str:
    """What the operator may not do, for the status: verb, resource, API group and namespace of
    each child the API server refused with 403, and the server's own message.

    The verb comes from the server's message when it names one (the authorization filter's
    `cannot patch resource ...`); a server-side apply that would create its object is authorized
    again as `create`, and that refusal names no verb (update.go withAuthorization builds it from
    the RBAC authorizer's reason, which is empty): `services "x" is forbidden: `. Then it is `create`.
    """
    missing: dict[tuple[str, str, str, str], str] = {}
    for child, exc in refused:
        rtype = type_of(child)
        found = _CANNOT.search(exc.message)
        verb, resource, group = (
            (found["verb"], found["resource"], found["group"]) if found else ("create", rtype.plural, rtype.group)
        )
        namespace = child["metadata"].get("namespace") or ""
        missing.setdefault((verb, resource, group, namespace), exc.message)
    parts = []
    for (verb, resource, group, namespace), server in sorted(missing.items()):
        where = f' in namespace "{namespace}"' if namespace else ""
        parts.append(f'{verb} {resource} (API group "{group}"){where} [API server: {server.strip()}]')
    return (
        "the operator's service account is forbidden to "
        + "; ".join(parts)
        + ": grant it in the operator's Role/ClusterRole; the apply is retried with backoff"
    )


class Applier:
    def __init__(
        self,
        kube: KubeClient,
        config: OperatorConfig,
        tracked: Tracked,
        preflight: Preflight,
        status_writer: StatusWriter,
        routes: RoutesWriter,
    ) -> None:
        self.kube = kube
        self.config = config
        self.tracked = tracked
        self.preflight = preflight
        self.status = status_writer
        self.routes = routes

    async def apply(self, body: dict[str, Any]) -> Entry:
        """Render and apply every child, then write status. Safe to run any number of times."""
        started = time.perf_counter()
        entry = self.tracked.entry_for(body)
        async with entry.lock:
            entry.applied = False
            try:
                entry.applied = await self._apply_locked(entry)
            except Exception:
                metrics.RECONCILES.labels("error").inc()
                self._failed(entry)
                raise
            finally:
                self.tracked.applied_once(entry.key)
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return entry

    def _failed(self, entry: Entry) -> None:
        """Count a failed apply: the resync retries it after `retry_delay`."""
        entry.apply_failures += 1
        entry.retry_at = time.monotonic() + retry_delay(entry.apply_failures, self.config.resync_seconds)

    async def apply_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one child (as the operator's field manager); the object stored.
        The Ray token Secret is created once instead (`create_token_secret`)."""
        if obj["kind"] == "Secret":
            return await self.create_token_secret(obj)
        return await self.kube.apply(obj, field_manager=render.FIELD_MANAGER)

    async def create_token_secret(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the Ray token Secret with a new random token, or leave the one that exists.

        Create-only (a POST, answered 409 AlreadyExists when it exists), never server-side applied:
        an apply would own `data.token` and have to send the same token on every reconcile, or
        change it under the running Ray cluster. 256 random bits, as Ray's own generator
        (ray/_private/authentication/authentication_token_generator.py). Returns the object without
        its data: nothing after this needs the token, and nothing should log or keep it.
        """
        token = secrets.token_hex(32)
        body = {**obj, "data": {render.RAY_TOKEN_KEY: base64.b64encode(token.encode()).decode()}}
        try:
            created: dict[str, Any] = await self.kube.create(SECRETS, obj["metadata"]["namespace"], body)
        except ApiError as exc:
            if exc.status == 409:
                return obj  # exists: kept as it is
            raise
        return {k: v for k, v in created.items() if k != "data"}

    async def _check_spec(self, entry: Entry) -> None:
        """Steps 1-2: set entry.md and entry.spec_problem."""
        body = entry.body
        doc = {k: v for k, v in body.items() if k != "status"}
        # creationTimestamp: the route's createdAt, by which the gateway too lets the oldest win a name.
        doc["metadata"] = {
            k: body["metadata"][k]
            for k in ("name", "namespace", "uid", "generation", "creationTimestamp")
            if k in body["metadata"]
        }
        generation = int(body["metadata"].get("generation") or 1)
        if entry.md is None or entry.md.metadata.get("generation") != generation:
            # The spec changed: a failed Serve deploy may now succeed.
            entry.serve_push_error = None
            entry.failed_app_hash = None
        # The route of the last good spec stays until this one renders (a re-apply must not take a
        # model off the gateway, or hand its name to a younger ModelDeployment, for a moment).
        entry.spec_problem = None
        try:
            md = parse_spec(doc)
        except SpecError as exc:
            entry.md = None
            entry.spec_problem = (api.Reason.INVALID_SPEC, str(exc))
            return
        entry.md = md
        entry.spec_problem = await self.preflight.gpu_problem(md)
        if entry.spec_problem is None:
            try:
                self.config.serve_config_for(md)  # fail early on what the Serve config cannot express
            except ServeConfigError as exc:
                entry.spec_problem = (api.Reason.INVALID_SPEC, str(exc))

    async def _apply_locked(self, entry: Entry) -> bool:
        """Steps 1-6; True when every child was applied (a spec problem counts as done: it waits
        for a spec change), False when the API server refused some (403: retried with backoff)."""
        await self._check_spec(entry)
        if entry.spec_problem is not None or entry.md is None:
            metrics.RECONCILES.labels("invalid").inc()
            reason, message = entry.spec_problem or ("", "")
            log.warning("%s/%s: %s: %s", entry.namespace, entry.name, reason, message)
            self._unroute(entry)
            await self.status.write(entry)
            entry.next_due = float("inf")
            return True
        md = entry.md
        entry.metric_missing = await self.preflight.metric_problem(md)
        options = self.config.render_options_for(
            md,
            monitoring=await self.preflight.monitoring_enabled(),
            metric_available=None if md.spec.autoscaling is None else entry.metric_missing is None,
        )
        try:
            children = render.render(md, options=options)
        except render.RenderError as exc:
            entry.spec_problem = (api.Reason.INVALID_SPEC, str(exc))
            metrics.RECONCILES.labels("invalid").inc()
            self._unroute(entry)
            await self.status.write(entry)
            return True
        # The rendered children are not kept (re-rendering costs about 0.2 ms; keeping them
        # costs about 100 KB per ModelDeployment): only the options that produced them.
        entry.options = options
        entry.route_json = next(
            c["data"][render.ROUTE_KEY]
            for c in children
            if c["kind"] == "ConfigMap" and render.ROUTE_LABEL in c["metadata"].get("labels", {})
        )
        entry.served = tuple(md.served_models())
        entry.traffic = traffic_of(md)
        # Concurrently: no child needs another to exist when it is applied (module docstring).
        results = await asyncio.gather(*(self.apply_child(c) for c in children), return_exceptions=True)
        refused: list[tuple[dict[str, Any], ApiError]] = []
        errors: list[BaseException] = []
        for child, obj in zip(children, results, strict=True):
            if isinstance(obj, ApiError) and obj.status == 403:
                refused.append((child, obj))
            elif isinstance(obj, BaseException):
                errors.append(obj)
            else:
                entry.observe_deployment(obj)
                entry.record_applied(obj)
        self.routes.refresh(skip=entry)
        if errors:
            raise errors[0]
        if refused:
            metrics.RECONCILES.labels("error").inc()
            message = forbidden_message(refused)
            log.warning("%s/%s: %s: %s", entry.namespace, entry.name, api.Reason.FORBIDDEN, message)
            entry.apply_error = (api.Reason.FORBIDDEN, message)
            self._failed(entry)
            await self.status.write(entry)
            self.tracked.schedule(entry, 0 if entry.head_ready else None)
            return False
        entry.apply_error = None
        entry.apply_failures = 0
        metrics.RECONCILES.labels("applied").inc()
        await self.status.write(entry)
        self.tracked.schedule(entry, 0 if entry.head_ready else None)
        return True

    def _unroute(self, entry: Entry) -> None:
        """An invalid spec: no route, no claim on its names (a younger object may take them)."""
        entry.route_json = None
        entry.served = ()
        entry.traffic = None
        entry.apply_error = None
        self.routes.refresh(skip=entry)

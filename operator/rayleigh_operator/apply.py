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
  6. the routes ConfigMap is marked for a write, the status written, the Serve sync scheduled.

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
import logging
import time
from typing import Any

import rayleigh_api as api
from rayleigh_api.validation import SpecError
from rayleigh_operator import metrics, render
from rayleigh_operator.kube import KubeClient
from rayleigh_operator.preflight import Preflight
from rayleigh_operator.routes_writer import RoutesWriter
from rayleigh_operator.state import Entry, OperatorConfig, Tracked, parse_spec
from rayleigh_operator.status_writer import StatusWriter
from rayleigh_serving.config import ServeConfigError

log = logging.getLogger("rayleigh.operator")


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
                await self._apply_locked(entry)
                entry.applied = True
            except Exception:
                metrics.RECONCILES.labels("error").inc()
                raise
            finally:
                metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return entry

    async def apply_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one child (as the operator's field manager); the object stored."""
        return await self.kube.apply(obj, field_manager=render.FIELD_MANAGER)

    async def _check_spec(self, entry: Entry) -> None:
        """Steps 1-2: set entry.md and entry.spec_problem."""
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
            entry.spec_problem = (api.Reason.INVALID_SPEC, str(exc))
            return
        entry.md = md
        entry.spec_problem = await self.preflight.gpu_problem(md)
        if entry.spec_problem is None:
            try:
                self.config.serve_config_for(md)  # fail early on what the Serve config cannot express
            except ServeConfigError as exc:
                entry.spec_problem = (api.Reason.INVALID_SPEC, str(exc))

    async def _apply_locked(self, entry: Entry) -> None:
        await self._check_spec(entry)
        if entry.spec_problem is not None or entry.md is None:
            metrics.RECONCILES.labels("invalid").inc()
            reason, message = entry.spec_problem or ("", "")
            log.warning("%s/%s: %s: %s", entry.namespace, entry.name, reason, message)
            await self.status.write(entry)
            entry.next_due = float("inf")
            return
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
            await self.status.write(entry)
            return
        # The rendered children are not kept (re-rendering costs about 0.2 ms; keeping them
        # costs about 100 KB per ModelDeployment): only the options that produced them.
        entry.options = options
        entry.route_json = next(
            c["data"][render.ROUTE_KEY]
            for c in children
            if c["kind"] == "ConfigMap" and render.ROUTE_LABEL in c["metadata"].get("labels", {})
        )
        # Concurrently: no child needs another to exist when it is applied (module docstring).
        results = await asyncio.gather(*(self.apply_child(c) for c in children))
        for obj in results:
            entry.observe_deployment(obj)
            entry.record_applied(obj)
        metrics.RECONCILES.labels("applied").inc()
        self.routes.mark_dirty()
        await self.status.write(entry)
        self.tracked.schedule(entry, 0 if entry.head_ready else None)

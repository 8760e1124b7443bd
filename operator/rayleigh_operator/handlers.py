"""kopf handlers: thin edges that hand objects to the Reconciler.

- ModelDeployment create / update / resume -> Reconciler.apply (render, server-side apply,
  status). No kopf timers or daemons: they would put a finalizer on every object, and the
  tracker task (Reconciler.run) already polls what needs polling.
- ModelDeployment events -> the tracker learns deletions (children go by garbage collection).
- Deployment events of our children are watched by the reconciler itself (a plain watch is
  cheaper per event than kopf's machinery): readiness into status, drift restored at once.
- With an external (shared) Ray cluster only: a delete handler removes the Serve application
  (a finalizer, since the application does not live in a child that garbage collection removes).
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import kopf

import rayleigh_api as api
from rayleigh_operator.reconciler import Reconciler

log = logging.getLogger("rayleigh.operator")


class MemoryDiffBase(kopf.DiffBaseStorage):
    """kopf's "last handled" essence, kept in memory instead of an annotation on every object.

    kopf needs it only to tell a spec change (run the apply handler) from a status-only change
    while it runs. After a restart every object counts as new and gets the create handler, which
    is the same level-triggered apply as resume: nothing is lost, and each object is spared one
    PATCH and one watch event per change (measured in bench/operator_scale.py).
    """

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, str] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        encoded = self._essences.get(str(body.metadata.uid))
        return None if encoded is None else cast(kopf.BodyEssence, json.loads(encoded))

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._essences[str(body.metadata.uid)] = json.dumps(essence)

    def forget(self, uid: str) -> None:
        self._essences.pop(uid, None)


class MemoryProgress(kopf.ProgressStorage):
    """kopf's per-handler progress, in memory: no `kopf-managed` marker or progress annotations.

    A failed apply is retried by the reconciler's resync (every --resync-seconds), not by kopf's
    annotation-driven retry loop, so nothing needs persisting on the object.
    """

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[tuple[str, str], kopf.ProgressRecord] = {}

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return self._records.get((str(body.metadata.uid), str(key)))

    def store(self, *, key: kopf.HandlerId, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records[(str(body.metadata.uid), str(key))] = record

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        self._records.pop((str(body.metadata.uid), str(key)), None)

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, json.loads(json.dumps(essence)))

    def forget(self, uid: str) -> None:
        for k in [k for k in self._records if k[0] == uid]:
            del self._records[k]


def build_registry(
    reconciler: Reconciler, diffbase: MemoryDiffBase | None = None, progress: MemoryProgress | None = None
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    md = (api.GROUP, api.VERSION, api.PLURAL)

    async def apply_md(body: kopf.Body, **_: Any) -> None:
        await reconciler.apply(dict(body))

    kopf.on.create(*md, registry=registry, id="apply")(apply_md)
    kopf.on.resume(*md, registry=registry, id="apply")(apply_md)
    kopf.on.update(*md, registry=registry, id="apply", field="spec")(apply_md)

    @kopf.on.event(*md, registry=registry)
    async def md_event(event: kopf.RawEvent, **_: Any) -> None:
        if event["type"] == "MODIFIED":
            await reconciler.rollout_command(dict(event["object"]))
        if event["type"] == "DELETED":
            meta = event["object"]["metadata"]
            reconciler.forget(meta.get("namespace") or "default", meta["name"])
            if diffbase is not None:
                diffbase.forget(str(meta.get("uid")))
            if progress is not None:
                progress.forget(str(meta.get("uid")))

    if reconciler.config.external_ray:

        @kopf.on.delete(*md, registry=registry, id="remove-serve-app")
        async def remove_app(body: kopf.Body, **_: Any) -> None:
            await reconciler.remove_serve_app(dict(body))
            meta = body["metadata"]
            reconciler.forget(meta.get("namespace") or "default", meta["name"])

    return registry

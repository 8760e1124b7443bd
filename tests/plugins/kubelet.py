"""A stand-in for what a cluster does around one ModelDeployment when no kubelet runs here.

The operator runs against the emulated API and a real local Ray head (`--external-ray`); three
things a cluster would do are done by `KubeletStandIn`, in a thread, and nothing else:
- the kubelet and the Deployment controller: the head Deployment reports 1 ready pod, the workers
  Deployment reports as many ready pods as its spec.replicas asks, at once (no pod is scheduled,
  no Ray worker joins: the Serve replicas run on the local head);
- the kubelet's ConfigMap volume: the operator's route ConfigMap (`rayleigh-route-NAME`) is copied
  into the gateway's config directory, as a mounted ConfigMap would be;
- cluster DNS and the Service: the route's backend (`http://NAME-serve.NS.svc:8000/PREFIX`) is
  rewritten to the local Serve proxy (`serve_base`), keeping the prefix.

Used by tests/operator/test_cold_start_ray.py and bench/cold_start.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.plugins.kube import Kube

SERVE_PORT = 8000


class KubeletStandIn:
    def __init__(self, kube: Kube, name: str, serve_base: str, routes_dir: Path, namespace: str = "default") -> None:
        self.kube = kube
        self.name = name
        self.namespace = namespace
        self.serve_base = serve_base.rstrip("/")
        self.routes_dir = routes_dir
        self.route_file = routes_dir / f"{namespace}_{name}.json"
        self.route: dict[str, Any] = {}
        self.workers_ready_at: dict[int, float] = {}  # replicas -> monotonic time reported ready
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kubelet-{name}", daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _deployment(self, suffix: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = self.kube.api(
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}-{suffix}"
        )
        return doc

    def _report_ready(self, suffix: str, replicas: int) -> None:
        body = {
            "status": {
                "replicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
                "updatedReplicas": replicas,
                "observedGeneration": 1,
            }
        }
        req = urllib.request.Request(
            f"{self.kube.url}/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.name}-{suffix}/status",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/merge-patch+json"},
            method="PATCH",
        )
        urllib.request.urlopen(req, timeout=10).close()

    def _sync_pods(self) -> None:
        for suffix in ("head", "workers"):
            dep = self._deployment(suffix)
            if dep is None:
                continue
            replicas = 1 if suffix == "head" else int(dep["spec"].get("replicas", 1))
            if int((dep.get("status") or {}).get("readyReplicas") or 0) != replicas:
                self._report_ready(suffix, replicas)
                if suffix == "workers":
                    self.workers_ready_at[replicas] = time.monotonic()

    def _sync_route(self) -> None:
        cm = self.kube.api(f"/api/v1/namespaces/{self.namespace}/configmaps/rayleigh-route-{self.name}")
        text = ((cm or {}).get("data") or {}).get("route.json")
        if not text:
            return
        route: dict[str, Any] = json.loads(text)
        in_cluster = f"http://{self.name}-serve.{self.namespace}.svc:{SERVE_PORT}"
        if str(route.get("backend", "")).startswith(in_cluster):
            route["backend"] = self.serve_base + route["backend"][len(in_cluster) :]
        if route == self.route:
            return
        tmp = self.route_file.with_name(f".{self.route_file.name}.tmp")
        tmp.write_text(json.dumps(route))
        os.replace(tmp, self.route_file)
        self.route = route

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_pods()
                self._sync_route()
            except Exception as exc:  # the emulator restarting, a ConfigMap mid-write: next round
                self.errors.append(repr(exc))
            self._stop.wait(0.2)

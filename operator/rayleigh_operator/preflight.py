"""Checks against the cluster before anything is created: GPUs, the custom metrics API, monitoring.

- GPU: a spec asking for more GPUs per replica than any node offers fails at once
  (`InsufficientGPU`) instead of leaving pods Pending forever. No node offering the GPU resource
  at all is not a spec error (a cluster autoscaler may add one).
- metrics: an HPA whose custom metric is not served never scales; without it the operator
  creates no HPA and sets the AutoscalingMetricMissing condition (rechecked every resync).
- monitoring: PodMonitors are rendered when monitoring.coreos.com/v1 serves them (checked once).

Nodes and discovery documents are cached for `resync_seconds`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import rayleigh_api as api
from rayleigh_operator import render
from rayleigh_operator.kube import NODES, ApiError, KubeClient
from rayleigh_operator.state import OperatorConfig

log = logging.getLogger("rayleigh.operator")

# AutoscalingMetricMissing reasons (the condition's True reasons; not spec problems).
CUSTOM_METRICS_API_UNAVAILABLE = "CustomMetricsAPIUnavailable"
METRIC_NOT_FOUND = "MetricNotFound"


class Preflight:
    def __init__(self, kube: KubeClient, config: OperatorConfig) -> None:
        self.kube = kube
        self.config = config
        self._nodes_cache: tuple[float, list[dict[str, Any]]] | None = None
        self._metrics_cache: tuple[float, set[str] | None] | None = None
        self._monitoring: bool | None = None

    async def monitoring_enabled(self) -> bool:
        if self.config.monitoring != "auto":
            return self.config.monitoring == "on"
        if self._monitoring is None:
            doc = await self.kube.discover("monitoring.coreos.com/v1")
            self._monitoring = bool(doc and any(r.get("name") == "podmonitors" for r in doc.get("resources", [])))
        return self._monitoring

    async def gpu_problem(self, md: api.ModelDeployment) -> tuple[str, str] | None:
        """(InsufficientGPU, message) when no node offers a replica's GPUs; else None."""
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
            api.Reason.INSUFFICIENT_GPU,
            f"spec.resources.gpus is {gpus} but no node offers more than {max(offers)} {resource}: lower "
            "engine.tensorParallelSize (and resources.gpus) or add larger GPU nodes",
        )

    async def metric_problem(self, md: api.ModelDeployment) -> tuple[str, str] | None:
        """(reason, message) when spec.autoscaling's metric is not served; None when fine or unused."""
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
                CUSTOM_METRICS_API_UNAVAILABLE,
                f"custom.metrics.k8s.io is not served (install prometheus-adapter with Rayleigh's rules): no "
                f"HPA created, replicas stay at spec.replicas; it scales on {metric} once the metric exists",
            )
        if f"pods/{metric}" not in names:
            return (
                METRIC_NOT_FOUND,
                f"the custom metrics API has no pods/{metric} (check prometheus-adapter's rules and that "
                "Prometheus scrapes the Ray pods): no HPA created until it appears",
            )
        return None

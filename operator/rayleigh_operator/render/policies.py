"""Policies around the Ray pods: HPA (autoscaling), PodDisruptionBudget, NetworkPolicy, PodMonitor."""

from __future__ import annotations

from typing import Any

import rayleigh_api as api
from rayleigh_operator.render.names import (
    DASHBOARD_PORT,
    MD_LABEL,
    METRICS_PORT,
    SERVE_PORT,
    child_name,
    metadata,
    selector_labels,
)
from rayleigh_operator.render.options import RenderOptions

# Custom metric names served by prometheus-adapter (rules in docs/OPERATOR.md and the chart):
# vLLM's gauges as exported by Ray (`ray_` prefix), averaged per worker pod.
AUTOSCALING_METRICS: dict[str, str] = {
    "queueDepth": "ray_vllm_num_requests_waiting",
    "inFlightRequests": "rayleigh_inflight_requests",
    "kvCacheUsage": "ray_vllm_kv_cache_usage_perc",
}
DEFAULT_TARGETS: dict[str, float] = {"queueDepth": 2.0, "inFlightRequests": 16.0, "kvCacheUsage": 0.8}


def autoscaling_metric(md: api.ModelDeployment) -> str | None:
    """The custom metric (prometheus-adapter name) the HPA scales on, or None without autoscaling."""
    auto = md.spec.autoscaling
    return AUTOSCALING_METRICS[auto.metric] if auto else None


def _quantity(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def render_hpa(md: api.ModelDeployment) -> dict[str, Any] | None:
    auto = md.spec.autoscaling
    if auto is None:
        return None
    target = auto.target if auto.target is not None else DEFAULT_TARGETS[auto.metric]
    metrics: list[dict[str, Any]] = [_pods_metric(AUTOSCALING_METRICS[auto.metric], target)]
    if auto.metric != "inFlightRequests":
        # Second signal: requests in flight per replica (a queue can stay empty while every
        # replica is saturated; KV usage can plateau while requests pile up).
        metrics.append(_pods_metric(AUTOSCALING_METRICS["inFlightRequests"], DEFAULT_TARGETS["inFlightRequests"]))
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(md, child_name(md, "autoscaler"), "autoscaler"),
        "spec": {
            "scaleTargetRef": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": md.name},
            # Scale to zero (minReplicas 0) is the operator's, not the HPA's: an HPA's minReplicas 0 needs
            # the alpha feature gate HPAScaleToZero. At least 1 here; while the operator holds the
            # scale at 0 the HPA stands still ("implicit maintenance-mode deactivation").
            "minReplicas": max(1, auto.min_replicas),
            "maxReplicas": auto.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": auto.scale_up_stabilization_seconds,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": auto.scale_down_stabilization_seconds,
                    "selectPolicy": "Min",
                    # One replica at a time: a removed replica takes minutes to come back.
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                },
            },
        },
    }


def _pods_metric(name: str, target: float) -> dict[str, Any]:
    return {
        "type": "Pods",
        "pods": {"metric": {"name": name}, "target": {"type": "AverageValue", "averageValue": _quantity(target)}},
    }


def render_pdb(md: api.ModelDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(md, child_name(md, "pdb"), "workers"),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(md, "workers")},
            # A replica still loading its model is not serving: let drains evict it.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _ns_selector(namespace: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": namespace}}


def render_network_policy(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    metrics_from: list[dict[str, Any]]
    if options.metrics_namespaces:
        metrics_from = [{"namespaceSelector": _ns_selector(ns)} for ns in options.metrics_namespaces]
    else:
        metrics_from = [{"namespaceSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(md, child_name(md, "network-policy"), "network-policy"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(md)},
            "policyTypes": ["Ingress"],
            "ingress": [
                # Ray's own traffic (GCS, object store, raylets) stays inside this Ray cluster.
                {"from": [{"podSelector": {"matchLabels": selector_labels(md)}}]},
                # Only the gateway calls the Serve HTTP port.
                {
                    "from": [
                        {
                            "namespaceSelector": _ns_selector(options.gateway_namespace),
                            "podSelector": {"matchLabels": dict(options.gateway_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": SERVE_PORT}],
                },
                # Only the operator calls the dashboard (Serve REST API).
                {
                    "from": [
                        {
                            "namespaceSelector": _ns_selector(options.operator_namespace),
                            "podSelector": {"matchLabels": dict(options.operator_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}],
                },
                # Prometheus scrapes the metrics port.
                {"from": metrics_from, "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
        },
    }


def render_pod_monitor(md: api.ModelDeployment, options: RenderOptions | None = None) -> dict[str, Any]:
    """The PodMonitor of the Ray pods' metrics port, with `options.podmonitor_labels` added to its
    labels: a Prometheus Operator selects PodMonitors by label (kube-prometheus-stack by default
    only those labelled `release: <its release>`), so without them nothing is scraped."""
    meta = metadata(md, child_name(md, "pod-monitor"), "monitoring")
    if options is not None and options.podmonitor_labels:
        # The standard labels win (the flags refuse them anyway): the operator lists children by them.
        meta["labels"] = {**options.podmonitor_labels, **meta["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(md)},
            "podMetricsEndpoints": [
                {
                    "port": "metrics",
                    "interval": "15s",
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_" + _prom_label(MD_LABEL)],
                            "targetLabel": "model_deployment",
                        },
                    ],
                }
            ],
        },
    }


def _prom_label(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)

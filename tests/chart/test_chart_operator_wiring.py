"""The chart tells the operator what its per-model objects must match in the same release.

The operator's PodMonitors need the labels Prometheus selects them by (`monitoring.labels`), and its
per-model NetworkPolicies must admit the metrics namespaces (`networkPolicy.metricsNamespaces`) and
the gateway and operator pods by the labels this render gives those pods, whatever `nameOverride`
says. Each test renders the chart with the real helm binary, parses the operator's arguments with
the real `rayleigh operator` command, and renders the per-model objects with the options that gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rayleigh_operator import render as r
from rayleigh_operator.run import config_from_params
from rayleigh_operator.run import operator as operator_cmd
from rayleigh_operator.state import OperatorConfig, parse_spec
from tests.chart.helpers import find, render

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "tiny.yaml"


def operator_config(docs: list[dict[str, Any]], suffix: str = "-operator") -> OperatorConfig:
    container = find(docs, "Deployment", suffix)["spec"]["template"]["spec"]["containers"][0]
    return config_from_params(operator_cmd.make_context("operator", list(container["args"])).params)


def pod_labels(docs: list[dict[str, Any]], suffix: str) -> dict[str, str]:
    labels: dict[str, str] = find(docs, "Deployment", suffix)["spec"]["template"]["metadata"]["labels"]
    return labels


def model_objects(config: OperatorConfig) -> dict[str, dict[str, Any]]:
    md = parse_spec(yaml.safe_load(EXAMPLE.read_text()))
    options = config.render_options_for(md, monitoring=True, metric_available=None)
    return {o["kind"]: o for o in r.render(md, options=options)}


def peers(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    (rule,) = [i for i in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in i.get("ports", [])]
    found: list[dict[str, Any]] = rule["from"]
    return found


def test_name_override_gives_selector_labels_that_match_the_gateway_and_operator_pods() -> None:
    docs = render({"nameOverride": "foo"})
    config = operator_config(docs, "-foo-operator")
    gateway = pod_labels(docs, "-foo-gateway")
    operator = pod_labels(docs, "-foo-operator")
    assert config.render.gateway_pod_labels.items() <= gateway.items()
    assert config.render.operator_pod_labels.items() <= operator.items()
    # This release's pods only: another release's gateway in the namespace is not admitted.
    assert config.render.gateway_pod_labels["app.kubernetes.io/instance"] == "rayleigh"
    policy = model_objects(config)["NetworkPolicy"]
    (gateway_peer,) = peers(policy, r.SERVE_PORT)
    assert gateway_peer["podSelector"]["matchLabels"].items() <= gateway.items()
    assert gateway_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "rayleigh-system"}
    (operator_peer,) = peers(policy, r.DASHBOARD_PORT)
    assert operator_peer["podSelector"]["matchLabels"].items() <= operator.items()


def test_monitoring_labels_and_metrics_namespaces_reach_the_podmonitor_and_network_policy() -> None:
    values = {
        "monitoring.labels": {"release": "kube-prometheus-stack"},
        "networkPolicy.metricsNamespaces": ["monitoring", "observability"],
    }
    config = operator_config(render(values))
    objs = model_objects(config)
    labels = objs["PodMonitor"]["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/managed-by"] == r.FIELD_MANAGER  # the operator still finds it
    assert peers(objs["NetworkPolicy"], r.METRICS_PORT) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in ("monitoring", "observability")
    ]


def test_defaults_pass_no_monitoring_labels_and_admit_any_metrics_namespace() -> None:
    config = operator_config(render())
    assert config.render.podmonitor_labels == {}
    assert config.render.metrics_namespaces == ()
    assert peers(model_objects(config)["NetworkPolicy"], r.METRICS_PORT) == [{"namespaceSelector": {}}]


def test_another_releases_gateway_is_admitted_by_name_and_component_only() -> None:
    values = {
        "gateway.enabled": False,
        "operator.endpoint": "http://llm.example.com/v1",
        "operator.externalGateway": {"namespace": "edge", "routesConfigMap": "edge-gateway-routes"},
    }
    config = operator_config(render(values))
    assert config.render.gateway_pod_labels == {
        "app.kubernetes.io/name": "rayleigh",
        "app.kubernetes.io/component": "gateway",
    }
    assert config.render.operator_pod_labels["app.kubernetes.io/instance"] == "rayleigh"
    (gateway_peer,) = peers(model_objects(config)["NetworkPolicy"], r.SERVE_PORT)
    assert gateway_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "edge"}


def test_the_gateway_wakes_models_through_the_operators_wake_port_and_only_it_may() -> None:
    """Scale to zero: the gateway's --wake-url is the operator Service's wake port, the operator
    listens there, and its NetworkPolicy admits only this release's gateway pods to it."""
    docs = render()
    assert operator_config(docs).wake_port == 8082
    gateway = find(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "--wake-url=http://rayleigh-operator.rayleigh-system.svc:8082/wake" in gateway["args"]
    service = find(docs, "Service", "-operator")
    assert {"name": "wake", "port": 8082, "targetPort": "wake", "protocol": "TCP"} in service["spec"]["ports"]
    policy = find(docs, "NetworkPolicy", "-operator")
    (peer,) = peers(policy, 8082)
    selector = peer["podSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == "gateway"
    assert selector.items() <= pod_labels(docs, "-gateway").items()
    off = render({"operator": {"wakePort": 0}})
    gateway = find(off, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert not [a for a in gateway["args"] if a.startswith("--wake-url")]
    assert operator_config(off).wake_port == 0

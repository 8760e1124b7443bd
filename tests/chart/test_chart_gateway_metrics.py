"""The gateway's /metrics in the chart: its own port on its own headless Service (never the
client-facing one), scraped by the ServiceMonitor, reachable only from the monitoring namespaces,
and the gateway's own config (jwksAllowedHosts, websocketAllowedOrigins) rendered into gateway.yaml."""

from __future__ import annotations

import pytest
import yaml

from rayleigh_gateway.routes import parse_config
from tests.chart.helpers import find, helm, render, template_args

MONITORING = ("--api-versions", "monitoring.coreos.com/v1")


def test_metrics_port_is_on_its_own_service_and_scraped_there() -> None:
    docs = render({"gateway.service.type": "LoadBalancer"}, *MONITORING)
    container = find(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9090" in container["args"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    public = find(docs, "Service", "-gateway")
    assert [p["name"] for p in public["spec"]["ports"]] == ["http"]  # the LoadBalancer has no metrics port
    metrics = find(docs, "Service", "-gateway-metrics")
    assert metrics["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"]) for p in metrics["spec"]["ports"]] == [("metrics", 9090)]
    monitor = find(docs, "ServiceMonitor", "-gateway")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    assert not selector.items() <= public["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_metrics_port_admits_only_the_monitoring_namespaces() -> None:
    docs = render({"networkPolicy.metricsNamespaces": ["monitoring"]})
    rules = find(docs, "NetworkPolicy", "-gateway")["spec"]["ingress"]
    (metrics_rule,) = [r for r in rules if {"protocol": "TCP", "port": 9090} in r["ports"]]
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": 9090}]
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    for rule in rules:  # the API port's rules never open the metrics port
        if rule is not metrics_rule:
            assert {"protocol": "TCP", "port": 9090} not in rule["ports"]


def test_metrics_port_equal_to_the_api_port_is_refused() -> None:
    result = helm(*template_args({"gateway.metricsPort": 8080}), check=False)
    assert result.returncode != 0
    assert "gateway.metricsPort=8080 must differ from gateway.port" in result.stderr


@pytest.mark.parametrize("empty", [True, False])
def test_gateway_settings_render_into_a_config_the_gateway_loads(empty: bool) -> None:
    values = (
        {}
        if empty
        else {
            "gateway.config.jwksAllowedHosts": ["login.example.com", "*.idp.example"],
            "gateway.config.websocketAllowedOrigins": ["https://chat.example.com"],
        }
    )
    docs = render(values)
    text = find(docs, "ConfigMap", "-gateway")["data"]["gateway.yaml"]
    config = parse_config(yaml.safe_load(text))
    assert config.jwks_allowed_hosts == ([] if empty else ["login.example.com", "*.idp.example"])
    assert config.websocket_allowed_origins == ([] if empty else ["https://chat.example.com"])
    assert config.limits.body_timeout_seconds == 30
    assert config.limits.max_concurrent_streams == 64

"""Monitoring and gateway wiring flags (`rayleigh render` and `rayleigh operator` share them), and
what the operator does without a gateway (no `--endpoint`, no `--routes-configmap`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayleigh_operator import render as r
from rayleigh_operator.render_cli import render as render_cmd
from rayleigh_operator.run import config_from_params
from rayleigh_operator.run import operator as operator_cmd
from rayleigh_operator.state import parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "tiny.yaml"


def rendered(*args: str) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(render_cmd, ["-f", str(EXAMPLE), "--monitoring", *args])
    assert result.exit_code == 0, result.output
    return {d["kind"]: d for d in yaml.safe_load_all(result.output) if d}


def ingress_from(policy: dict[str, Any], port: int) -> list[dict[str, Any]]:
    (rule,) = [i for i in policy["spec"]["ingress"] if {"protocol": "TCP", "port": port} in i.get("ports", [])]
    found: list[dict[str, Any]] = rule["from"]
    return found


def test_flags_put_labels_on_the_podmonitor_and_namespaces_and_selectors_in_the_network_policy() -> None:
    objs = rendered(
        "--podmonitor-label",
        "release=kube-prometheus-stack",
        "--podmonitor-label",
        "team=ml",
        "--metrics-namespace",
        "monitoring",
        "--metrics-namespace",
        "observability",
        "--gateway-pod-label",
        "app.kubernetes.io/name=foo",
        "--gateway-pod-label",
        "app.kubernetes.io/component=gateway",
        "--operator-pod-label",
        "app.kubernetes.io/name=foo",
        "--operator-pod-label",
        "app.kubernetes.io/instance=prod",
        "--gateway-namespace",
        "edge",
    )
    labels = objs["PodMonitor"]["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack" and labels["team"] == "ml"
    assert labels["app.kubernetes.io/managed-by"] == r.FIELD_MANAGER
    policy = objs["NetworkPolicy"]
    assert ingress_from(policy, r.METRICS_PORT) == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}},
    ]
    assert ingress_from(policy, r.SERVE_PORT) == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "foo", "app.kubernetes.io/component": "gateway"}},
        }
    ]
    (operator_peer,) = ingress_from(policy, r.DASHBOARD_PORT)
    assert operator_peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "foo",
        "app.kubernetes.io/instance": "prod",
    }
    # Only the PodMonitor gets the extra labels.
    assert "release" not in objs["Deployment"]["metadata"]["labels"]


def test_without_the_flags_nothing_changes() -> None:
    objs = rendered()
    defaults = r.RenderOptions()
    assert objs["PodMonitor"]["metadata"]["labels"] == r.labels(
        parse_spec(yaml.safe_load(EXAMPLE.read_text())), "monitoring"
    )
    policy = objs["NetworkPolicy"]
    assert ingress_from(policy, r.METRICS_PORT) == [{"namespaceSelector": {}}]
    (gateway_peer,) = ingress_from(policy, r.SERVE_PORT)
    assert gateway_peer["podSelector"]["matchLabels"] == defaults.gateway_pod_labels
    (operator_peer,) = ingress_from(policy, r.DASHBOARD_PORT)
    assert operator_peer["podSelector"]["matchLabels"] == defaults.operator_pod_labels


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--podmonitor-label", "release"], "expected KEY=VALUE"),
        (["--podmonitor-label", "bad key=x"], "expected KEY=VALUE"),
        (["--podmonitor-label", "app.kubernetes.io/managed-by=me"], "labels the operator sets itself"),
        (["--gateway-pod-label", "a=" + "v" * 64], "expected KEY=VALUE"),
        (["--metrics-namespace", "Not_A_Namespace"], "is not a namespace name"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(args: list[str], message: str) -> None:
    result = CliRunner().invoke(render_cmd, ["-f", str(EXAMPLE), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert args[0] in result.output


def test_without_endpoint_and_routes_flags_the_operator_writes_no_routes_and_reports_the_serve_url() -> None:
    config = config_from_params(operator_cmd.make_context("operator", []).params)
    assert config.routes_configmap is None and config.endpoint is None
    md = parse_spec(yaml.safe_load(EXAMPLE.read_text()))
    assert config.endpoint_for(md) == f"http://{md.name}-serve.{md.namespace}.svc:8000/v1"
    prefixed = config_from_params(operator_cmd.make_context("operator", ["--route-prefix", "/{name}"]).params)
    assert prefixed.endpoint_for(md) == f"http://{md.name}-serve.{md.namespace}.svc:8000/{md.name}/v1"
    # The route's backend and the endpoint agree: the same Serve HTTP proxies.
    options = prefixed.render_options_for(md, monitoring=False, metric_available=None)
    assert prefixed.endpoint_for(md) == r.serve_backend_url(md, options) + "/v1"
    gateway = config_from_params(
        operator_cmd.make_context(
            "operator", ["--endpoint", "http://gw.example/v1", "--routes-configmap", "rel-gateway-routes"]
        ).params
    )
    assert gateway.endpoint_for(md) == "http://gw.example/v1"
    assert gateway.routes_configmap == "rel-gateway-routes"

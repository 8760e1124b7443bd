"""One set of render flags: `rayleigh render` and `rayleigh operator` build RenderOptions the same way.

The same example is rendered both ways with every render flag set: by `rayleigh render` through
click's CliRunner, and by the operator's own path (its command's flags -> `config_from_params`
-> the per-object options the operator's apply uses -> `render`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from click.testing import CliRunner

from rayleigh_operator import flags
from rayleigh_operator import render as r
from rayleigh_operator.preflight import Preflight
from rayleigh_operator.render_cli import dump
from rayleigh_operator.render_cli import render as render_cmd
from rayleigh_operator.run import config_from_params
from rayleigh_operator.run import operator as operator_cmd
from rayleigh_operator.state import parse_spec

REPO = Path(__file__).resolve().parents[2]
# Autoscaling and GPUs: the HPA, GPU requests and every pod setting are in the comparison.
EXAMPLE = REPO / "manifests" / "examples" / "qwen7b-tp2-autoscale.yaml"

# Every flag `render_flags` adds, with a value other than its default (a list: a repeatable flag,
# given once per item).
RENDER_FLAGS: dict[str, str | list[str]] = {
    "--image": "registry.example.com/rayleigh/replica:test",
    "--gpu-image": "registry.example.com/rayleigh/replica-cuda:test",
    "--gateway-namespace": "gateway-ns",
    "--operator-namespace": "operator-ns",
    "--gcs-redis-address": "redis.ray-state.svc:6379",
    "--gcs-redis-password-secret": "ray-gcs-redis",
    "--podmonitor-label": ["release=kube-prometheus-stack", "team=ml"],
    "--metrics-namespace": ["monitoring", "observability"],
    "--gateway-pod-label": ["app.kubernetes.io/name=edge", "app.kubernetes.io/component=gateway"],
    "--operator-pod-label": ["app.kubernetes.io/instance=ops"],
    "--serve-ingress": "proxy",
}
FLAG_ARGS = [
    arg
    for flag, value in RENDER_FLAGS.items()
    for item in ([value] if isinstance(value, str) else value)
    for arg in (flag, item)
]
# What RenderOptions holds for the repeatable flags above.
REPEATED = {
    "--podmonitor-label": {"release": "kube-prometheus-stack", "team": "ml"},
    "--metrics-namespace": ("monitoring", "observability"),
    "--gateway-pod-label": {"app.kubernetes.io/name": "edge", "app.kubernetes.io/component": "gateway"},
    "--operator-pod-label": {"app.kubernetes.io/instance": "ops"},
}
OPTION_FIELDS = {
    "--podmonitor-label": "podmonitor_labels",
    "--metrics-namespace": "metrics_namespaces",
    "--gateway-pod-label": "gateway_pod_labels",
    "--operator-pod-label": "operator_pod_labels",
}


def probe_command() -> click.Command:
    @click.command()
    @flags.render_flags
    def probe(**_: Any) -> None:
        return None

    return probe


def test_the_test_sets_every_render_flag() -> None:
    """A new render flag must join RENDER_FLAGS (and options_from_flags)."""
    params = probe_command().params
    assert {opt for p in params for opt in p.opts} == set(RENDER_FLAGS)
    assert [p.name for p in params] == list(flags.FLAG_NAMES)
    for command in (render_cmd, operator_cmd):
        assert set(flags.FLAG_NAMES) <= {p.name for p in command.params}, command.name


async def test_render_and_operator_give_the_same_objects_for_the_same_flags() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    name = doc["metadata"]["name"]
    # The per-object flags differ in meaning: a template for the operator, a value for render.
    operator_args = [*FLAG_ARGS, "--route-prefix", "/{namespace}/{name}", "--monitoring", "on", "--no-metric-check"]
    render_args = [*FLAG_ARGS, "--route-prefix", f"/{doc['metadata']['namespace']}/{name}", "--monitoring"]

    result = CliRunner().invoke(render_cmd, ["-f", str(EXAMPLE), *render_args])
    assert result.exit_code == 0, result.output

    config = config_from_params(operator_cmd.make_context("operator", operator_args).params)
    for flag, value in RENDER_FLAGS.items():
        field = OPTION_FIELDS.get(flag, flag.removeprefix("--").replace("-", "_"))
        assert getattr(config.render, field) == REPEATED.get(flag, value), flag
    md = parse_spec(doc)
    preflight = Preflight(kube=None, config=config)  # type: ignore[arg-type]  # these flags ask no cluster
    options = config.render_options_for(
        md,
        monitoring=await preflight.monitoring_enabled(),
        metric_available=await preflight.metric_problem(md) is None,
    )
    objs = r.render(md, options=options)

    assert {o["kind"] for o in objs} >= {"HorizontalPodAutoscaler", "PodMonitor"}
    assert result.output == dump(objs)

"""The Serve ingress variants in the rendered Ray pods (`--serve-ingress`): what `rayleigh up` and the
benchmark run (rayleigh_serving.ingress.ray_env) goes into every Ray pod, head and workers alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayleigh_operator.render_cli import render as render_cmd
from rayleigh_serving.ingress import DEFAULT_INGRESS, INGRESS_VARIANTS, ray_env

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "manifests" / "examples" / "tiny.yaml"


def ray_pod_envs(args: list[str]) -> dict[str, dict[str, Any]]:
    """{deployment name: its container's env as a dict} from `rayleigh render`."""
    result = CliRunner().invoke(render_cmd, ["-f", str(TINY), *args])
    assert result.exit_code == 0, result.output
    out = {}
    for obj in yaml.safe_load_all(result.output):
        if obj and obj["kind"] == "Deployment":
            container = obj["spec"]["template"]["spec"]["containers"][0]
            out[obj["metadata"]["name"]] = {e["name"]: e.get("value") for e in container["env"]}
    assert len(out) == 2, out.keys()  # head and workers
    return out


@pytest.mark.parametrize("ingress", INGRESS_VARIANTS)
def test_every_ray_pod_gets_the_ingress_environment_local_mode_runs(ingress: str) -> None:
    for name, env in ray_pod_envs(["--serve-ingress", ingress]).items():
        assert {k: env.get(k) for k in ray_env(ingress)} == ray_env(ingress), name
        assert ("RAY_SERVE_ENABLE_HA_PROXY" in env) == (ingress == "haproxy"), name


def test_the_default_ingress_is_rendered_without_the_flag() -> None:
    assert ray_pod_envs([]) == ray_pod_envs(["--serve-ingress", DEFAULT_INGRESS])


def test_an_unknown_ingress_is_refused_with_the_choices() -> None:
    result = CliRunner().invoke(render_cmd, ["-f", str(TINY), "--serve-ingress", "nginx"])
    assert result.exit_code == 2
    assert "--serve-ingress" in result.output and "haproxy" in result.output

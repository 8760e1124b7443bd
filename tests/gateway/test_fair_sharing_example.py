"""manifests/examples/tiny-fair-sharing.yaml runs as its comments say: the `rayleigh keys create`
lines it gives make keys of the classes and weights it describes, and its route carries the
fairness the gateway enforces (the queue discipline itself: test_gateway_fairness.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

from click.testing import CliRunner

from rayleigh_api.cli import main
from rayleigh_api.loading import load_model_deployment
from rayleigh_gateway.fairness import share_of
from rayleigh_gateway.keys import load_keys
from rayleigh_gateway.routes import GatewayConfig, route_for
from tests.plugins.common import EXAMPLES_DIR

EXAMPLE = EXAMPLES_DIR / "tiny-fair-sharing.yaml"


def test_the_fair_sharing_example_s_key_commands_give_the_classes_and_weights_it_describes(tmp_path: Path) -> None:
    commands = [
        shlex.split(line.lstrip("# ").strip())
        for line in EXAMPLE.read_text().splitlines()
        if line.lstrip("# ").startswith("rayleigh keys create")
    ]
    assert len(commands) == 3
    keys_file = tmp_path / "keys.json"
    for argv in commands:
        argv = [str(keys_file) if a == "keys.json" else a for a in argv[1:]]
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, result.output
    shares = {r.owner: share_of(r, None) for r in load_keys(keys_file).records.values()}
    assert shares == {"chat-app": ("high", 1), "analytics": ("normal", 3), "batch": ("low", 1)}
    models = {tuple(r.models) for r in load_keys(keys_file).records.values()}
    assert models == {(load_model_deployment(EXAMPLE).served_model_name(),)}


def test_the_fair_sharing_example_s_route_carries_its_fairness_to_the_gateway() -> None:
    route = route_for(load_model_deployment(EXAMPLE), "http://tiny-fair-sharing-serve.default.svc:8000")
    config = GatewayConfig.model_validate({"routes": [route.model_dump(by_alias=True, exclude_none=True)]})
    fairness = config.routes[0].fairness
    assert fairness is not None
    assert (fairness.max_in_flight, fairness.max_queue, fairness.max_wait_seconds) == (8, 200, 30)
    assert config.routes[0].public is False  # callers need a key: that key carries the class and weight

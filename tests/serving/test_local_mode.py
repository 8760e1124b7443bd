"""Local mode pieces that need no engine: the gateway route `rayleigh up` writes."""

from __future__ import annotations

import pytest

from rayleigh_operator.api import load_model_deployment
from rayleigh_serving.gateway_local import route_for
from tests.plugins.common import EXAMPLES_DIR


def test_gateway_route_for_tiny_example_is_a_valid_gateway_route() -> None:
    routes = pytest.importorskip("rayleigh_gateway.routes")
    md = load_model_deployment(EXAMPLES_DIR / "tiny.yaml")
    config = routes.parse_config({"routes": [route_for(md, "http://127.0.0.1:9")]})
    route = config.routes[0]
    assert (route.backend, route.models, route.public) == ("http://127.0.0.1:9", ["tiny-qwen"], False)


def test_gateway_route_lists_adapters_as_models() -> None:
    md = load_model_deployment(EXAMPLES_DIR / "qwen-lora.yaml")
    assert route_for(md, "http://x:1")["models"] == ["qwen-1.8b", "sql-assistant", "support-tone"]

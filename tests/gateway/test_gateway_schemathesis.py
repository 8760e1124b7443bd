"""schemathesis against the gateway's own OpenAPI document: no 5xx, no schema violations.

Runs every built-in check (server errors, status codes, content types, response schemas and
headers, negative data rejection, ignored auth) on generated requests, with a valid API key and
with the generated `model` mapped half of the time onto models the gateway really serves.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.gateway.conftest import GW

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODELS = ["priv-model", "pub-model", "lim-model", "tok-model"]


@pytest.fixture(scope="session")
def gateway_schema(gw: GW) -> Any:
    # Loaded directly: schemathesis.pytest.from_fixture does not work with pytest 9 (no _nodeid).
    return schemathesis.openapi.from_url(gw.url + "/openapi.json")


@pytest.fixture(scope="session")
def schema_key(gw: GW) -> str:
    return gw.key()


OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/healthz"),
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_gateway_conforms_to_its_openapi_document(
    gateway_schema: Any, gw: GW, schema_key: str, method: str, path: str
) -> None:
    operation = gateway_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case: Any) -> None:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("model"), str) and len(body["model"]) % 2 == 0:
            body["model"] = MODELS[len(body["model"]) % len(MODELS)]
        headers = dict(case.headers or {})
        if not {h.lower() for h in headers} & {"authorization", "x-api-key"}:
            headers["Authorization"] = f"Bearer {schema_key}"
        case.call_and_validate(base_url=gw.url, headers=headers)

    run()

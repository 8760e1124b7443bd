"""The pure pieces split out of the gateway app: credentials -> caller (auth.py), what a request
is charged (limits.py), the SSE usage scan (proxy.py), and the dispatch table (app.py). No servers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rayleigh_gateway.app import Gateway, Settings
from rayleigh_gateway.auth import authenticate
from rayleigh_gateway.compiled import compile_config
from rayleigh_gateway.errors import GatewayError
from rayleigh_gateway.keys import KeyStore
from rayleigh_gateway.limits import limit_hit, rejection, request_estimate, route_buckets
from rayleigh_gateway.proxy import scan_usage
from rayleigh_gateway.ratelimit import Decision
from rayleigh_gateway.routes import parse_config

ROUTES = parse_config(
    {
        "routes": [
            {"name": "priv", "backend": "http://a:1", "models": ["p"], "rateLimits": {"requestsPerMinute": 5}},
            {"name": "pub", "backend": "http://a:1", "models": ["o"], "public": True},
            {
                "name": "jwt",
                "backend": "http://a:1",
                "models": ["j"],
                "auth": {
                    "apiKeys": False,
                    "jwt": {"issuer": "i", "audience": "a", "hmacSecret": "x" * 32, "algorithms": ["HS256"]},
                },
            },
        ]
    }
)


async def _no_fetch(url: str) -> Any:
    raise AssertionError(url)


def _error_code(fn: Any) -> str:
    with pytest.raises(GatewayError) as err:
        fn()
    return err.value.code


def test_authenticate_decides_everything_but_the_jwt_signature() -> None:
    compiled = compile_config(ROUTES, _no_fetch)
    priv, pub, jwt = (compiled.by_model[m] for m in ("p", "o", "j"))
    keys = KeyStore.new()
    key, record = keys.create("t", models=["p"])
    now = time.time()
    caller = authenticate(priv, keys, key, "1.2.3.4", "p", now)
    assert caller is not None and (caller.ident, caller.kind) == (record.id, "api_key")
    anon = authenticate(pub, keys, None, "1.2.3.4", "o", now)
    assert anon is not None and (anon.ident, anon.kind) == ("ip:1.2.3.4", "anonymous")
    assert authenticate(jwt, keys, "eyJ.a.b", "1.2.3.4", "j", now) is None  # verify_jwt's turn
    assert _error_code(lambda: authenticate(priv, keys, None, "", "p", now)) == "missing_api_key"
    assert _error_code(lambda: authenticate(priv, keys, "", "", "p", now)) == "invalid_authorization"
    assert authenticate(priv, keys, "eyJ.a.b", "", "p", now) is None  # verify_any_jwt's turn (no JWT here)
    assert _error_code(lambda: authenticate(jwt, keys, key, "", "j", now)) == "api_keys_disabled"
    keys.revoke(record.id)
    assert _error_code(lambda: authenticate(priv, keys, key, "", "p", now)) == "revoked_api_key"


def test_request_charge_and_rejection() -> None:
    payload: dict[str, Any] = {"model": "p", "max_completion_tokens": 10}
    assert request_estimate(payload, 40, 512, embeddings=False) == 40 // 4 + 1 + 10
    assert request_estimate({"model": "p"}, 40, 512, embeddings=False) == 11 + 512
    assert request_estimate(payload, 40, 512, embeddings=True) == 11
    rl = ROUTES.routes[0].rate_limits
    buckets = route_buckets("default/priv", rl, "k1", None)
    assert [(b.key, b.per_minute, b.tokens) for b in buckets] == [("rayleigh:rl:kr:default/priv:k1:r", 5, False)]
    decision = Decision(False, 2500, buckets, [0], "local")
    err = rejection(limit_hit(buckets, decision, [1]), decision, 11)
    assert (err.status, err.code) == (429, "rate_limit_exceeded")
    assert (b"retry-after", b"3") in err.headers
    never = rejection(buckets[0], Decision(False, -1, buckets, [5], "local"), 11)
    assert (b"retry-after", b"60") in never.headers and "lower max_tokens" in never.message


def test_scan_usage_strips_only_the_usage_event_the_gateway_asked_for() -> None:
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    events = b'data: {"choices":[{"delta":{}}]}\n\n' + usage
    assert scan_usage(events, strip=False) == (events, (3, 4))
    assert scan_usage(events, strip=True) == (b'data: {"choices":[{"delta":{}}]}\n\n', (3, 4))


def _call(gw: Gateway, method: str, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    coro = gw({"type": "http", "method": method, "path": path, "headers": [], "client": None}, receive, send)
    with pytest.raises(StopIteration):
        coro.send(None)
    return sent


def test_dispatch_table_answers_404_and_405_with_allow(tmp_path: Path) -> None:
    (tmp_path / "gw.json").write_text(json.dumps({"routes": []}))
    gw = Gateway(Settings(config_path=str(tmp_path / "gw.json"), audit=False))
    assert _call(gw, "GET", "/nope")[0]["status"] == 404
    start = _call(gw, "GET", "/v1/chat/completions")[0]
    assert start["status"] == 405 and (b"allow", b"POST") in start["headers"]
    start = _call(gw, "POST", "/healthz")[0]
    assert start["status"] == 405 and (b"allow", b"GET") in start["headers"]
    assert _call(gw, "GET", "/readyz")[1]["body"] == b'{"status":"ok"}'

"""The gateway's HTTP behaviour against a real Redis and a test upstream: routing, 401/403/404/
413/429/502 paths, allow-lists, headers, usage, metrics, audit, reload."""

from __future__ import annotations

import json
import time

import httpx
import orjson
import pytest
import redis
from click.testing import CliRunner

from rayleigh_gateway.cli import keys as keys_cli
from tests.gateway.conftest import GW
from tests.gateway.harness import write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HTTP = httpx.Client(timeout=10)  # one pooled client: creating a client per call costs ~100 ms
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def chat(
    gw: GW, model: str, key: str | None = None, client: httpx.Client | None = None, **extra: object
) -> httpx.Response:
    headers = gw.auth(key) if key else {}
    headers.update({k: str(v) for k, v in extra.pop("headers", {}).items()})  # type: ignore[attr-defined]
    body = {"model": model, **CHAT, **extra}
    return (client or HTTP).post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def from_address(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def err(resp: httpx.Response) -> dict[str, str]:
    body = resp.json()
    assert set(body["error"]) >= {"message", "type", "code"}
    return body["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- routing and 404


def test_valid_key_reaches_backend_of_its_model(gw: GW) -> None:
    key = gw.key()
    resp = chat(gw, "priv-model", key)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "priv-model"


def test_lora_adapter_name_routes_to_same_backend(gw: GW) -> None:
    resp = chat(gw, "priv-lora", gw.key())
    assert resp.status_code == 200
    assert gw.upstream.stats()["last_body"]["model"] == "priv-lora"


def test_unknown_model_is_openai_404(gw: GW) -> None:
    resp = chat(gw, "no-such-model", gw.key())
    assert resp.status_code == 404
    assert err(resp)["code"] == "model_not_found"


def test_unknown_path_is_404(gw: GW) -> None:
    resp = HTTP.get(gw.url + "/v2/nothing")
    assert resp.status_code == 404
    assert err(resp)["code"] == "not_found"


def test_completions_and_embeddings_are_proxied(gw: GW) -> None:
    key = gw.key()
    c = HTTP.post(gw.url + "/v1/completions", json={"model": "priv-model", "prompt": "a"}, headers=gw.auth(key))
    e = HTTP.post(gw.url + "/v1/embeddings", json={"model": "priv-model", "input": "a"}, headers=gw.auth(key))
    assert c.status_code == 200 and c.json()["object"] == "text_completion"
    assert e.status_code == 200 and e.json()["data"][0]["object"] == "embedding"


# ---------------------------------------------------------------- bad requests


def test_invalid_json_is_400(gw: GW) -> None:
    resp = HTTP.post(gw.url + "/v1/chat/completions", content=b"{nope", headers=gw.auth(gw.key()))
    assert resp.status_code == 400
    assert err(resp)["code"] == "invalid_json"


def test_missing_model_is_400(gw: GW) -> None:
    resp = HTTP.post(gw.url + "/v1/chat/completions", json={"messages": []}, headers=gw.auth(gw.key()))
    assert resp.status_code == 400
    assert err(resp)["code"] == "missing_model"


def test_oversized_body_is_413(gw: GW) -> None:
    body = {"model": "priv-model", "messages": [{"role": "user", "content": "x" * 70000}]}
    resp = HTTP.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth(gw.key()))
    assert resp.status_code == 413
    assert err(resp)["code"] == "request_too_large"


def test_get_on_completion_path_is_405(gw: GW) -> None:
    resp = HTTP.get(gw.url + "/v1/chat/completions")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "POST"


# ---------------------------------------------------------------- authentication (401/403)


def test_missing_key_is_401(gw: GW) -> None:
    resp = chat(gw, "priv-model")
    assert resp.status_code == 401
    assert err(resp)["code"] == "missing_api_key"


def test_wrong_key_is_401(gw: GW) -> None:
    key = gw.key()
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    resp = chat(gw, "priv-model", forged)
    assert resp.status_code == 401
    assert err(resp)["code"] == "invalid_api_key"


def test_non_bearer_authorization_is_401(gw: GW) -> None:
    resp = chat(gw, "priv-model", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status_code == 401
    assert err(resp)["code"] == "invalid_authorization"


def test_x_api_key_header_is_accepted(gw: GW) -> None:
    resp = chat(gw, "priv-model", headers={"x-api-key": gw.key()})
    assert resp.status_code == 200


def test_revoked_key_is_401(gw: GW) -> None:
    key = gw.key()
    assert chat(gw, "priv-model", key).status_code == 200
    gw.keys.revoke(key)
    gw.reload()
    resp = chat(gw, "priv-model", key)
    assert resp.status_code == 401
    assert err(resp)["code"] == "revoked_api_key"


def test_expired_key_is_401(gw: GW) -> None:
    key = gw.key(expires_at=time.time() - 1)
    resp = chat(gw, "priv-model", key)
    assert resp.status_code == 401
    assert err(resp)["code"] == "expired_api_key"


def test_key_limited_to_other_models_gets_404_as_for_an_unknown_model(gw: GW) -> None:
    key = gw.key(models=["other-model"])
    resp = chat(gw, "priv-model", key)
    assert resp.status_code == 404  # OpenAI: "does not exist or you do not have access to it"
    assert err(resp)["code"] == "model_not_found"
    assert chat(gw, "other-model", key).status_code == 200


def test_public_route_needs_no_key(gw: GW) -> None:
    assert chat(gw, "pub-model").status_code == 200


def test_bad_key_on_public_route_is_still_401(gw: GW) -> None:
    resp = chat(gw, "pub-model", "rk_nope_nope")
    assert resp.status_code == 401


def test_client_authorization_is_not_forwarded_upstream(gw: GW) -> None:
    key = gw.key()
    assert chat(gw, "priv-model", key).status_code == 200
    seen = {k.lower(): v for k, v in gw.upstream.stats()["last_headers"].items()}
    assert "authorization" not in seen
    assert key not in json.dumps(seen)


# ---------------------------------------------------------------- IP allow-lists


def test_address_outside_allow_list_is_403(gw: GW) -> None:
    with from_address("127.0.0.3") as client:
        resp = chat(gw, "cidr-model", gw.key(), client=client)
    assert resp.status_code == 403
    assert err(resp)["code"] == "ip_not_allowed"
    assert "127.0.0.3" in err(resp)["message"]


def test_address_inside_allow_list_is_allowed(gw: GW) -> None:
    with from_address("127.0.0.2") as client:
        assert chat(gw, "cidr-model", gw.key(), client=client).status_code == 200


def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(gw: GW) -> None:
    with from_address("127.0.0.3") as client:
        resp = chat(gw, "cidr-model", gw.key(), client=client, headers={"X-Forwarded-For": "10.1.2.3"})
    assert resp.status_code == 403
    assert "127.0.0.3" in err(resp)["message"]


def test_forwarded_for_from_trusted_proxy_is_used(gw: GW) -> None:
    with from_address("127.0.0.1") as client:
        ok = chat(gw, "cidr-model", gw.key(), client=client, headers={"X-Forwarded-For": "10.1.2.3"})
        bad = chat(gw, "cidr-model", gw.key(), client=client, headers={"X-Forwarded-For": "192.168.7.7"})
    assert ok.status_code == 200
    assert bad.status_code == 403


def test_ipv6_client_address_matches_ipv6_cidr(gw: GW) -> None:
    with from_address("127.0.0.1") as client:
        ok = chat(gw, "cidr-model", gw.key(), client=client, headers={"X-Forwarded-For": "2001:db8::5"})
        bad = chat(gw, "cidr-model", gw.key(), client=client, headers={"X-Forwarded-For": "2001:db9::5"})
    assert ok.status_code == 200
    assert bad.status_code == 403


# ---------------------------------------------------------------- rate limits (429)


def test_requests_per_minute_per_key_gives_429_with_headers(gw: GW) -> None:
    key = gw.key()
    codes = [chat(gw, "lim-model", key).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    resp = chat(gw, "lim-model", key)
    assert resp.status_code == 429
    assert err(resp)["code"] == "rate_limit_exceeded"
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.headers["x-ratelimit-limit-requests"] == "3"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"
    assert resp.headers["x-ratelimit-reset-requests"].endswith("s")


def test_rate_limit_is_per_key(gw: GW) -> None:
    first, second = gw.key(), gw.key()
    for _ in range(3):
        chat(gw, "lim-model", first)
    assert chat(gw, "lim-model", first).status_code == 429
    assert chat(gw, "lim-model", second).status_code == 200


def test_successful_response_carries_ratelimit_headers(gw: GW) -> None:
    resp = chat(gw, "lim-model", gw.key())
    assert resp.headers["x-ratelimit-limit-requests"] == "3"
    assert resp.headers["x-ratelimit-remaining-requests"] == "2"


def test_key_own_limit_applies_across_models(gw: GW) -> None:
    key = gw.key(requests_per_minute=2)
    assert chat(gw, "priv-model", key).status_code == 200
    assert chat(gw, "other-model", key).status_code == 200
    assert chat(gw, "priv-model", key).status_code == 429


def test_global_model_cap_counts_all_keys(gw: GW) -> None:
    codes = [chat(gw, "cap-model", gw.key()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_tokens_per_minute_charges_max_tokens_up_front(gw: GW) -> None:
    key = gw.key()
    first = chat(gw, "tok-model", key, max_tokens=200)
    assert first.status_code == 200
    # The estimate (prompt + 200) left less than 200 tokens until the correction lands.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100


def test_tokens_are_corrected_with_real_usage(gw: GW, redis_server: object) -> None:
    key = gw.key()
    key_id = key.split("_")[1]
    assert chat(gw, "tok-model", key, max_tokens=250).status_code == 200
    client = redis.Redis.from_url(redis_server.url)  # type: ignore[attr-defined]
    bucket = f"rayleigh:rl:kr:test/tokens:{key_id}:t"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and float(client.hget(bucket, "l") or 0) < 250:
        time.sleep(0.02)
    # Real usage was 7 + 5 = 12 tokens: the bucket got the rest of the estimate back.
    assert float(client.hget(bucket, "l") or 0) >= 280
    assert chat(gw, "tok-model", key, max_tokens=250).status_code == 200


def test_request_larger_than_token_budget_is_429_with_reason(gw: GW) -> None:
    resp = chat(gw, "tok-model", gw.key(), max_tokens=5000)
    assert resp.status_code == 429
    assert "lower max_tokens" in err(resp)["message"]


# ---------------------------------------------------------------- upstream failures


def test_unreachable_backend_is_502(gw: GW) -> None:
    resp = chat(gw, "dead-model", gw.key())
    assert resp.status_code == 502
    assert err(resp)["code"] == "upstream_unavailable"


def test_backend_4xx_is_passed_through(gw: GW) -> None:
    resp = chat(gw, "priv-model", gw.key(), rayleigh_test={"status": 422})
    assert resp.status_code == 422


# ---------------------------------------------------------------- headers, usage, metrics, audit


def test_every_response_carries_overhead_header(gw: GW) -> None:
    ok = chat(gw, "priv-model", gw.key())
    denied = chat(gw, "priv-model")
    for resp in (ok, denied):
        assert float(resp.headers["x-rayleigh-overhead-ms"]) >= 0
        assert resp.headers["x-request-id"]


def test_usage_is_counted_in_redis_and_shown_by_keys_usage(gw: GW, redis_server: object) -> None:
    key = gw.key()
    key_id = key.split("_")[1]
    for _ in range(2):
        assert chat(gw, "priv-model", key).status_code == 200
    runner = CliRunner()
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        result = runner.invoke(
            keys_cli,
            ["usage", "--redis-url", redis_server.url, "--key-id", key_id, "--json"],  # type: ignore[attr-defined]
        )
        assert result.exit_code == 0, result.output
        rows = json.loads(result.output)
        if rows and rows[0].get("requests") == 2:
            break
        time.sleep(0.05)
    assert rows == [
        {"key_id": key_id, "model": "priv-model", "requests": 2, "prompt_tokens": 14, "completion_tokens": 10}
    ]


def test_metrics_count_requests_and_auth_failures(gw: GW) -> None:
    chat(gw, "priv-model")
    chat(gw, "priv-model", gw.key())
    text = HTTP.get(gw.metrics_url).text
    assert 'rayleigh_gateway_requests_total{code="200",model="priv-model",route="test/private"}' in text
    assert 'rayleigh_gateway_auth_failures_total{reason="missing_api_key",route="test/private"}' in text
    assert "rayleigh_gateway_overhead_seconds_bucket" in text
    assert 'rayleigh_gateway_tokens_total{kind="prompt",model="priv-model",route="test/private"}' in text
    # Exported; its value is process-wide and other gateways of this test process set it too, so
    # test_gateway_redis_failure.py checks it with a gateway of its own.
    assert "\nrayleigh_gateway_redis_up " in text


def test_audit_line_has_key_id_but_not_key_or_prompt(gw: GW) -> None:
    key = gw.key()
    body = {"model": "priv-model", "messages": [{"role": "user", "content": "secret prompt text"}]}
    assert HTTP.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth(key)).status_code == 200
    deadline = time.monotonic() + 3
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        time.sleep(0.05)
        text = gw.audit_path.read_text() if gw.audit_path.exists() else ""
        lines = [orjson.loads(x) for x in text.splitlines() if key.split("_")[1] in x]
    assert lines, "no audit line"
    line = lines[0]
    assert line["model"] == "priv-model" and line["status"] == 200 and line["auth"] == "api_key"
    assert line["prompt_tokens"] == 7 and line["completion_tokens"] == 5
    assert isinstance(line["latency_ms"], float) and isinstance(line["overhead_ms"], float)
    text = json.dumps(line)
    assert key not in text and "secret prompt text" not in text


def test_audit_line_records_rejections_with_reason(gw: GW) -> None:
    resp = chat(gw, "priv-model", "rk_nope_nope")
    rid = resp.headers["x-request-id"]
    deadline = time.monotonic() + 3
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline and not lines:
        time.sleep(0.05)
        lines = [orjson.loads(x) for x in gw.audit_path.read_text().splitlines() if rid in x]
    assert lines and lines[0]["status"] == 401 and lines[0]["error"] == "invalid_api_key"


# ---------------------------------------------------------------- /v1/models


def test_models_lists_only_what_the_key_may_use(gw: GW) -> None:
    key = gw.key(models=["priv-model"])
    ids = {m["id"] for m in HTTP.get(gw.url + "/v1/models", headers=gw.auth(key)).json()["data"]}
    assert "priv-model" in ids and "pub-model" in ids
    assert "priv-lora" not in ids and "other-model" not in ids
    assert "jwt-hs-model" not in ids  # that route takes no API keys
    assert "cidr-model" not in ids  # 127.0.0.1 is not in its allow-list


def test_models_without_key_lists_public_only(gw: GW) -> None:
    ids = {m["id"] for m in HTTP.get(gw.url + "/v1/models").json()["data"]}
    assert ids == {"pub-model"}


def test_models_with_invalid_key_is_401(gw: GW) -> None:
    assert HTTP.get(gw.url + "/v1/models", headers=gw.auth("rk_bad_bad")).status_code == 401


# ---------------------------------------------------------------- reload


def test_config_reload_adds_a_model_and_keeps_old_config_when_invalid(gw: GW) -> None:
    key = gw.key()
    assert chat(gw, "new-model", key).status_code == 404
    config = json.loads(json.dumps(gw.config))
    config["routes"].append({"name": "new", "namespace": "test", "backend": gw.upstream.url, "models": ["new-model"]})
    write_yaml(gw.config_path, config)
    deadline = time.monotonic() + 5  # the gateway's own poll (0.5 s here) picks it up
    while time.monotonic() < deadline and chat(gw, "new-model", key).status_code != 200:
        time.sleep(0.1)
    assert chat(gw, "new-model", key).status_code == 200
    gw.config_path.write_text("routes: [{name: broken}]\n")
    time.sleep(1.2)
    assert chat(gw, "new-model", key).status_code == 200  # the invalid file was not applied
    write_yaml(gw.config_path, gw.config)
    gw.reload()
    assert chat(gw, "new-model", key).status_code == 404

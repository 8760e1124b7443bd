"""Redis killed mid-test: each route follows its failMode, the gateway says so, and recovers."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import GW

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HTTP = httpx.Client(timeout=10)


def chat(gw: GW, model: str, key: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return HTTP.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth(key))


def metric(gw: GW, line_prefix: str) -> float:
    """Sum of the samples whose line starts with the prefix."""
    lines = HTTP.get(gw.metrics_url).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(line_prefix))


def test_redis_outage_follows_fail_mode_and_recovers(
    gw: GW, redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """failMode closed keeps limiting in memory (per replica); failMode open admits unlimited."""
    key = gw.key(requests_per_minute=2)
    other = gw.key(requests_per_minute=2)
    errors_before = metric(gw, "rayleigh_gateway_redis_errors_total{")

    redis_server.stop()
    try:
        closed = [chat(gw, "failclosed-model", key).status_code for _ in range(3)]
        opened = [chat(gw, "failopen-model", other).status_code for _ in range(3)]
        assert closed == [200, 200, 429]  # the in-memory limiter enforces the key's 2/min
        assert opened == [200, 200, 200]  # no limit while Redis is away
        assert metric(gw, "rayleigh_gateway_redis_up") == 0.0
        assert metric(gw, "rayleigh_gateway_redis_errors_total{") > errors_before
        assert metric(gw, 'rayleigh_gateway_ratelimit_fallback_total{mode="closed",route="test/fail-closed"}') >= 3
        assert metric(gw, 'rayleigh_gateway_ratelimit_fallback_total{mode="open",route="test/fail-open"}') >= 3
        assert any("redis unreachable" in r.getMessage() for r in caplog.records)
    finally:
        redis_server.start()

    # Back on Redis (retried one second after the last failure): the shared bucket is fresh.
    fresh = gw.key(requests_per_minute=2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and metric(gw, "rayleigh_gateway_redis_up") != 1.0:
        chat(gw, "priv-model", fresh)
        time.sleep(0.2)
    assert metric(gw, "rayleigh_gateway_redis_up") == 1.0
    assert any("redis reachable again" in r.getMessage() for r in caplog.records)
    after = gw.key(requests_per_minute=2)
    codes = [chat(gw, "failclosed-model", after).status_code for _ in range(3)]
    assert codes == [200, 200, 429]

"""Usage is metered per hour/day/month and every key the gateway writes to Redis has a TTL, so
usage cannot fill a `volatile-lru` Redis and push the rate-limit buckets out; `rayleigh keys
usage --period hour|day|month [--since]` reads the period keys back. A Redis of its own (so
every key in it is the gateway's), the real gateway process, the real CLI."""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner

from rayleigh_gateway.cli import keys as keys_cli
from rayleigh_gateway.usage import PERIODS, label, parse_key, stamp, usage_keys
from tests.gateway.harness import KeyFile, Upstream, write_yaml
from tests.gateway.redis_servers import GatewayCLI, RedisProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_usage_keys_per_period_with_ttls() -> None:
    now = calendar.timegm((2026, 11, 1, 13, 5, 0))  # 2026-11-01T13:05Z
    keys = dict(usage_keys("k1", now))
    assert keys == {
        "rayleigh:usage:hour:2026110113:k1": 48 * 3600,
        "rayleigh:usage:day:20261101:k1": 40 * 86400,
        "rayleigh:usage:month:202611:k1": 400 * 86400,
    }
    assert all(ttl > {"hour": 3600, "day": 86400, "month": 31 * 86400}[p] for p, (_, ttl) in PERIODS.items())
    assert parse_key("rayleigh:usage:hour:2026110113:2001:db8::1", "hour") == ("2026110113", "2001:db8::1")
    assert parse_key("rayleigh:usage:k1", "hour") is None
    assert [label(p, stamp(p, now)) for p in PERIODS] == ["2026-11-01T13", "2026-11-01", "2026-11"]


@pytest.fixture(scope="module")
def lru_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    server = RedisProc(
        tmp_path_factory.mktemp("redis-lru"), "lru", ["maxmemory 64mb", "maxmemory-policy volatile-lru"]
    ).start()
    yield server
    server.stop()


def chat(url: str, model: str, key: str | None, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)


def usage(redis_url: str, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(keys_cli, ["usage", "--redis-url", redis_url, "--json", *args])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


def test_every_key_the_gateway_writes_has_a_ttl_and_usage_is_per_period(
    lru_redis: RedisProc, gw_upstream: Upstream, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{lru_redis.port}/0"
    limits = {"requestsPerMinute": 6000, "tokensPerMinute": 600000, "modelRequestsPerMinute": 100000}
    config = write_yaml(
        tmp_path / "routes.yaml",
        {
            "routes": [
                {"name": "metered", "backend": gw_upstream.url, "models": ["meter-model"], "rateLimits": limits},
                {
                    "name": "open",
                    "backend": gw_upstream.url,
                    "models": ["open-model"],
                    "public": True,
                    "rateLimits": {"requestsPerMinute": 100},
                },
            ]
        },
    )
    keyfile = KeyFile(tmp_path / "keys.yaml")
    big = keyfile.create(owner="big")  # only the route's (leased) limits
    small = keyfile.create(owner="small", requests_per_minute=5, tokens_per_minute=2000)  # its own, not leased
    gateway = GatewayCLI(config, keyfile.path, tmp_path / "gw.log", ["--redis-url", url]).wait_ready()
    client = redis.Redis.from_url(url)
    try:
        codes = [chat(gateway.url, "meter-model", big).status_code for _ in range(20)]
        codes += [chat(gateway.url, "meter-model", small).status_code for _ in range(7)]
        stream = chat(gateway.url, "meter-model", big, stream=True)
        anonymous = [chat(gateway.url, "open-model", None).status_code for _ in range(3)]
        assert codes == [200] * 25 + [429] * 2 and stream.status_code == 200 and anonymous == [200] * 3

        big_id, small_id = big.split("_")[1], small.split("_")[1]

        def counted() -> bool:
            rows = {(r["key_id"], r["model"]): r for r in usage(url, "--period", "hour")}
            return (
                rows.get((big_id, "meter-model"), {}).get("requests") == 21
                and rows.get((small_id, "meter-model"), {}).get("requests") == 5
                and sum(r["requests"] for (_, model), r in rows.items() if model == "open-model") == 3
            )

        wait_until(counted, 10, "usage in the hour keys")
        assert_all_keys_expire(client)
    finally:
        gateway.stop()  # gives the leased shares back and writes what is pending
    assert_all_keys_expire(client)

    hour = usage(url, "--period", "hour", "--key-id", big_id)
    assert len(hour) == 1 and hour[0]["period"] == label("hour", stamp("hour", time.time()))
    assert hour[0]["requests"] == 21 and hour[0]["prompt_tokens"] == 21 * 7
    assert hour[0]["completion_tokens"] >= 20 * 5
    day = usage(url, "--period", "day", "--since", time.strftime("%Y-%m-%d", time.gmtime()))
    anonymous_id = next(r["key_id"] for r in day if r["model"] == "open-model")  # the client address
    assert "127.0.0.1" in anonymous_id
    assert {(r["key_id"], r["requests"]) for r in day} == {(big_id, 21), (small_id, 5), (anonymous_id, 3)}
    assert usage(url, "--period", "month", "--since", "2026-11-01", "--key-id", small_id)[0]["requests"] == 5
    totals = usage(url, "--key-id", small_id)
    assert totals == [
        {"key_id": small_id, "model": "meter-model", "requests": 5, "prompt_tokens": 35, "completion_tokens": 25}
    ]
    table = CliRunner().invoke(keys_cli, ["usage", "--redis-url", url, "--period", "hour"])
    assert table.exit_code == 0 and "PERIOD" in table.output and big_id in table.output
    future = usage(url, "--period", "hour", "--since", "2999-01-01")
    assert future == []


def assert_all_keys_expire(client: redis.Redis) -> None:
    names = [n.decode() for n in client.scan_iter(count=1000)]
    assert any(n.startswith("rayleigh:usage:hour:") for n in names)
    assert any(n.startswith("rayleigh:rl:") for n in names)
    # PTTL: -1 is "no expiry", -2 "gone meanwhile" (a full bucket may expire right now).
    without = {n: pttl for n in names if (pttl := client.pttl(n)) == -1 or pttl == 0}
    assert without == {}, f"keys without a TTL: {without}"
    for name in names:
        ttl = client.ttl(name)
        if name.startswith("rayleigh:usage:hour:"):
            assert 47 * 3600 < ttl <= 48 * 3600
        elif name.startswith("rayleigh:usage:day:"):
            assert 39 * 86400 < ttl <= 40 * 86400
        elif name.startswith("rayleigh:usage:month:"):
            assert 399 * 86400 < ttl <= 400 * 86400
        elif name.startswith("rayleigh:rl:"):
            assert ttl <= 62  # a bucket lives until it would be full again (at most a minute + 1 s)

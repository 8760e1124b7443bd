"""Two gateway processes sharing one Redis never admit more than burst + rate under 100
concurrent clients (property test over limits and how clients spread over the replicas)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway.harness import GatewayProcess, KeyFile, Upstream, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

LIMITS = (5, 17, 40)
CLIENTS = 100


@dataclass
class Pair:
    gateways: list[GatewayProcess]
    keys: dict[int, str]  # requests per minute -> API key with that own limit


@pytest.fixture(scope="module")
def two_gateways(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream, redis_server: Any) -> Iterator[Pair]:
    d: Path = tmp_path_factory.mktemp("shared")
    config = write_yaml(
        d / "routes.yaml",
        {"routes": [{"name": "shared", "backend": gw_upstream.url, "models": ["shared-model"]}]},
    )
    keyfile = KeyFile(d / "keys.yaml")
    keys = {rpm: keyfile.create(owner=f"rpm{rpm}", requests_per_minute=rpm) for rpm in LIMITS}
    gateways = [GatewayProcess(config, keyfile.path, redis_server.url, d / f"gw{i}.log") for i in range(2)]
    try:
        for g in gateways:
            g.wait_ready()
        yield Pair(gateways, keys)
    finally:
        for g in gateways:
            g.stop()


async def hammer(urls: list[str], key: str, per_client: int) -> tuple[list[int], float]:
    body = {"model": "shared-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    headers = {"Authorization": f"Bearer {key}"}
    codes: list[int] = []
    connector = aiohttp.TCPConnector(limit=0)

    async def client(url: str) -> None:
        for _ in range(per_client):
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                codes.append(resp.status)

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.wait_for(asyncio.gather(*(client(u) for u in urls)), timeout=60)
    return codes, time.monotonic() - started


@given(
    rpm=st.sampled_from(LIMITS),
    on_first=st.integers(min_value=0, max_value=CLIENTS),
    per_client=st.integers(min_value=1, max_value=3),
)
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_two_replicas_never_admit_more_than_burst_plus_rate(
    two_gateways: Pair, redis_server: Any, rpm: int, on_first: int, per_client: int
) -> None:
    key = two_gateways.keys[rpm]
    key_id = key.split("_")[1]
    redis.Redis.from_url(redis_server.url).delete(f"rayleigh:rl:k:{key_id}:r")  # a full bucket
    first, second = (g.url for g in two_gateways.gateways)
    urls = [first] * on_first + [second] * (CLIENTS - on_first)
    codes, elapsed = asyncio.run(hammer(urls, key, per_client))
    admitted = codes.count(200)
    assert set(codes) <= {200, 429}, codes
    assert admitted <= rpm + rpm * elapsed / 60.0  # burst + refill during the run
    assert admitted >= min(len(codes), rpm)  # and the budget was really usable

"""Local shares leased from the Redis buckets: no Redis round trip on the request path, and still
never more than the limit.

- The bookkeeping (leases.LeaseBook), pure.
- RateLimiters against a real Redis: a cold bucket costs one Redis call, then requests are
  admitted locally; shares are refilled before they run out, given back when idle and at
  shutdown; several limiters sharing one bucket (as processes do) never admit more than
  burst + rate x elapsed (property test); Redis gone: shares still admit, then failMode.
- Two gateway PROCESSES with leased shares, 200 concurrent clients, request and token limits:
  admitted <= burst + rate x elapsed (property test, counted by 200 vs 429), and the budget was
  usable up to the documented under-admission bound.
"""

from __future__ import annotations

import asyncio
import random
import secrets
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

from rayleigh_gateway.leases import LeaseBook, LeaseConfig
from rayleigh_gateway.ratelimit import Bucket, RateLimiter, Settler
from tests.gateway.harness import GatewayProcess, KeyFile, Upstream, write_yaml
from tests.gateway.redis_servers import RedisProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# ---------------------------------------------------------------- the bookkeeping, pure


def test_small_buckets_are_not_leased() -> None:
    book = LeaseBook(LeaseConfig(fraction=1 / 32))
    small = Bucket("small", 40, False)  # L = 1 < 2 x cost: every request goes to Redis
    res = book.reserve([small], [1], 0.0)
    assert res.shares == [None] and res.needs == [1] and res.wants == [0]
    assert "small" not in book.shares


def test_reserve_covers_from_the_share_and_asks_for_the_rest() -> None:
    book = LeaseBook(LeaseConfig(fraction=1 / 4))
    b = Bucket("b", 400, True)  # L = 100
    first = book.reserve([b], [30], 0.0)
    assert first.needs == [30] and 0 < first.wants[0] <= 100
    book.finish(first, True, [400 - 30 - first.wants[0]], [first.wants[0]])
    share = book.shares["b"]
    held = share.level
    assert held == first.wants[0] and share.pending == 0
    assert book.take([b], [held], 0.1) is not None  # admitted locally, all of the share
    assert book.take([b], [1], 0.1) is None  # empty: back to Redis
    again = book.reserve([b], [10], 0.2)
    assert again.covers == [0] and again.needs == [10]
    book.finish(again, False, [0], [0])  # refused: nothing leased, nothing taken
    assert share.level == 0 and share.pending == 0


def test_refused_request_gives_the_cover_back() -> None:
    book = LeaseBook(LeaseConfig(fraction=1 / 4))
    b = Bucket("b", 400, True)
    res = book.reserve([b], [10], 0.0)
    book.finish(res, True, [300], [40])
    res = book.reserve([b], [60], 0.1)  # the share (40) covers part, 20 from Redis
    assert res.covers == [40] and res.needs == [20]
    book.finish(res, False, [5], [0])
    assert book.shares["b"].level == 40


def test_refill_follows_demand_and_stays_under_the_lease_cap() -> None:
    book = LeaseBook(LeaseConfig(fraction=1 / 10, horizon=0.25))
    b = Bucket("b", 100_000, False)  # L = 10_000
    res = book.reserve([b], [1], 0.0)
    book.finish(res, True, [99_000], [res.wants[0]])
    now = 0.0
    for _ in range(200):  # 1000 requests per second
        now += 0.001
        if book.take([b], [1], now) is None:
            res = book.reserve([b], [1], now)
            book.finish(res, True, [90_000], [res.wants[0]])
        plan = book.refill_plan(now)
        if plan.keys:
            book.refill_done(plan, [90_000], plan.wants)
    share = book.shares["b"]
    assert 200 <= share.target <= 10_000  # about 0.25 s of 1000/s
    assert share.level + share.pending <= share.max_lease
    assert book.remote_takes <= 3


def test_idle_shares_are_returned() -> None:
    book = LeaseBook(LeaseConfig(fraction=1 / 4, idle_seconds=2.0))
    b = Bucket("b", 400, False)
    res = book.reserve([b], [1], 0.0)
    book.finish(res, True, [300], [res.wants[0]])
    assert book.idle(1.0) == []
    returned = book.idle(3.0)
    assert [k for k, _ in returned] == ["b"] and returned[0][1].level == res.wants[0]
    assert "b" not in book.shares


# ---------------------------------------------------------------- limiters against a real Redis


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def fresh(prefix: str) -> str:
    return f"rayleigh:rl:test:{prefix}:{secrets.token_hex(6)}"


def test_cold_bucket_costs_one_redis_call_then_requests_are_local(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    bucket = Bucket(fresh("cold"), 60_000, False)  # L = 1875

    async def go() -> tuple[int, int]:
        limiter = RateLimiter(redis_server.url)
        try:
            first = await limiter.take([bucket], [1])
            assert first is not None and first.admitted and first.backend == "redis"
            backends = []
            for _ in range(300):
                d = await limiter.take([bucket], [1])
                assert d is not None and d.admitted
                backends.append(d.backend)
                await asyncio.sleep(0)  # let the background refill run
            return backends.count("lease"), limiter.book.remote_takes
        finally:
            await limiter.aclose()

    before = evalsha_calls(client)
    local, remote = asyncio.run(go())
    calls = evalsha_calls(client) - before
    assert remote <= 2 and local >= 298  # the request path went to Redis once (or twice)
    assert calls < 30  # refills and the return: a few script calls for 301 requests
    # Given back at shutdown: the bucket holds all but what was admitted.
    assert float(client.hget(bucket.key, "l") or 0) >= 60_000 - 301 - 5


def test_idle_share_goes_back_to_redis(redis_server: Any) -> None:
    client = redis.Redis.from_url(redis_server.url)
    bucket = Bucket(fresh("idle"), 6000, False)  # L = 187

    async def go() -> None:
        limiter = RateLimiter(redis_server.url, leases=LeaseConfig(idle_seconds=0.2))
        settler = Settler(limiter)
        try:
            for _ in range(5):
                d = await limiter.take([bucket], [1])
                assert d is not None and d.admitted
                await asyncio.sleep(0.01)  # the background refill runs
            assert limiter.book.held() > 0
            assert float(client.hget(bucket.key, "l")) < 6000 - 5  # the share is out of Redis
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (limiter.book.shares or limiter.corrections):
                await settler.flush()
                await asyncio.sleep(0.05)
            assert not limiter.book.shares
        finally:
            limiter.close()

    asyncio.run(go())
    assert float(client.hget(bucket.key, "l")) >= 6000 - 5 - 1  # all but the 5 admitted (+ refill)


@given(
    per_minute=st.sampled_from([64, 200, 1000]),
    fraction=st.sampled_from([1 / 32, 1 / 8, 1 / 3]),
    limiters=st.integers(2, 3),
    costs=st.lists(st.integers(1, 20), min_size=20, max_size=300),
    seed=st.integers(0, 2**32 - 1),
    tokens=st.booleans(),
)
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_limiters_sharing_a_bucket_never_admit_more_than_the_limit(
    redis_server: Any, per_minute: int, fraction: float, limiters: int, costs: list[int], seed: int, tokens: bool
) -> None:
    """Several limiters (as gateway processes) with leased shares, requests interleaved at random
    and concurrently: what they admit together stays within burst + rate x elapsed."""
    bucket = Bucket(fresh("prop"), per_minute, tokens)
    if not tokens:
        costs = [1] * len(costs)
    rng = random.Random(seed)

    async def go() -> tuple[int, int, float]:
        lims = [
            RateLimiter(redis_server.url, timeout=5, leases=LeaseConfig(fraction=fraction)) for _ in range(limiters)
        ]
        admitted = 0
        held = 0

        async def one(cost: int) -> None:
            nonlocal admitted
            if rng.random() < 0.5:
                await asyncio.sleep(0)  # interleave with the others (and the background refills)
            d = await rng.choice(lims).take([bucket], [cost])
            assert d is not None
            if d.admitted:
                admitted += cost

        started = time.monotonic()
        try:
            for start in range(0, len(costs), 25):  # bursts of concurrent requests
                await asyncio.gather(*(one(c) for c in costs[start : start + 25]))
            elapsed = time.monotonic() - started
            held = sum(lim.book.held() for lim in lims)
        finally:
            for lim in lims:
                lim.close()
        return admitted, held, elapsed

    admitted, held, elapsed = asyncio.run(go())
    assert admitted <= per_minute + per_minute * elapsed / 60.0 + 1e-6
    # Under-admission: at most what the shares hold (each share <= L) stays unused.
    lease_max = LeaseConfig(fraction=fraction).max_lease(per_minute)
    assert held <= limiters * max(lease_max, 0)
    if sum(costs) >= per_minute + 40:  # demand above the burst: the budget was (nearly) all used
        assert admitted + held >= per_minute - 20 - limiters * lease_max


def test_shares_still_admit_while_redis_is_away_then_fail_mode(tmp_path: Path) -> None:
    server = RedisProc(tmp_path, "away", []).start()
    url = f"redis://127.0.0.1:{server.port}/0"
    bucket = Bucket(fresh("away"), 6000, False)

    async def go() -> None:
        limiter = RateLimiter(url)
        try:
            d = await limiter.take([bucket], [1])
            assert d is not None and d.admitted
            held = limiter.book.held()
            assert held > 0
            server.stop()
            for _ in range(held):  # tokens taken from Redis before it went away
                d = await limiter.take([bucket], [1])
                assert d is not None and d.admitted and d.backend == "lease"
            assert await limiter.take([bucket], [1]) is None  # the caller applies failMode
        finally:
            limiter.close()

    try:
        asyncio.run(go())
    finally:
        server.stop()


# ---------------------------------------------------------------- two gateway processes

REQUEST_LIMITS = (256, 384, 512)
TOKEN_LIMITS = (3200, 6400)
CLIENTS = 200
EXAMPLES = 3


@dataclass
class Pair:
    gateways: list[GatewayProcess]
    keys: dict[tuple[str, int], list[str]]  # (kind, limit) -> unused keys with that own limit
    redis: redis.Redis


@pytest.fixture(scope="module")
def leased_pair(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream, redis_server: Any) -> Iterator[Pair]:
    d: Path = tmp_path_factory.mktemp("leases")
    config = write_yaml(
        d / "routes.yaml", {"routes": [{"name": "leases", "backend": gw_upstream.url, "models": ["lease-model"]}]}
    )
    keyfile = KeyFile(d / "keys.yaml")
    keys: dict[tuple[str, int], list[str]] = {}
    for rpm in REQUEST_LIMITS:  # a fresh key (fresh buckets, no shares anywhere) per example
        keys[("requests", rpm)] = [keyfile.create(owner="r", requests_per_minute=rpm) for _ in range(EXAMPLES)]
    for tpm in TOKEN_LIMITS:
        keys[("tokens", tpm)] = [keyfile.create(owner="t", tokens_per_minute=tpm) for _ in range(EXAMPLES)]
    gateways = [GatewayProcess(config, keyfile.path, redis_server.url, d / f"gw{i}.log") for i in range(2)]
    try:
        for g in gateways:
            g.wait_ready()
        yield Pair(gateways, keys, redis.Redis.from_url(redis_server.url))
    finally:
        for g in gateways:
            g.stop()


async def hammer(urls: list[str], key: str, per_client: int, max_tokens: int) -> tuple[list[tuple[int, int]], float]:
    """Each client sends `per_client` requests one after the other; (status, tokens used) each."""
    body = {"model": "lease-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    headers = {"Authorization": f"Bearer {key}"}
    results: list[tuple[int, int]] = []
    connector = aiohttp.TCPConnector(limit=0)

    async def client(session: aiohttp.ClientSession, url: str) -> None:
        for _ in range(per_client):
            async with session.post(url + "/v1/chat/completions", json=body, headers=headers) as resp:
                data = await resp.json(content_type=None)
                usage = data.get("usage") or {} if resp.status == 200 else {}
                results.append((resp.status, int(usage.get("total_tokens", 0))))

    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(client(session, u) for u in urls)), timeout=90)
        elapsed = time.monotonic() - started
    return results, elapsed


def spread(pair: Pair, on_first: int) -> list[str]:
    first, second = (g.url for g in pair.gateways)
    return [first] * on_first + [second] * (CLIENTS - on_first)


@given(
    rpm=st.sampled_from(REQUEST_LIMITS),
    on_first=st.integers(min_value=0, max_value=CLIENTS),
    per_client=st.integers(min_value=2, max_value=4),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_two_processes_with_shares_never_admit_more_requests_than_the_limit(
    leased_pair: Pair, rpm: int, on_first: int, per_client: int
) -> None:
    pool = leased_pair.keys[("requests", rpm)]
    if not pool:
        return  # the same limit drawn more often than keys were made: nothing new to learn
    key = pool.pop()
    calls_before = evalsha_calls(leased_pair.redis)
    results, elapsed = asyncio.run(hammer(spread(leased_pair, on_first), key, per_client, 1))
    codes = [status for status, _ in results]
    assert set(codes) <= {200, 429}, codes
    admitted = codes.count(200)
    assert admitted <= rpm + rpm * elapsed / 60.0  # burst + refill during the run, both processes together
    lease_max = LeaseConfig().max_lease(rpm)
    assert admitted >= min(len(codes), rpm - 1 - 2 * lease_max)  # at most 2 x L parked in shares
    if admitted > 4 * lease_max:  # the shares did their job: most admissions needed no Redis call
        assert evalsha_calls(leased_pair.redis) - calls_before < len(codes)


@given(
    tpm=st.sampled_from(TOKEN_LIMITS),
    on_first=st.integers(min_value=0, max_value=CLIENTS),
    per_client=st.integers(min_value=2, max_value=3),
    max_tokens=st.integers(min_value=8, max_value=40),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_two_processes_with_shares_never_admit_more_tokens_than_the_limit(
    leased_pair: Pair, tpm: int, on_first: int, per_client: int, max_tokens: int
) -> None:
    """Tokens are charged up front (estimate) and corrected with the real usage after the
    response: the real usage of what was admitted stays within burst + rate x elapsed."""
    pool = leased_pair.keys[("tokens", tpm)]
    if not pool:
        return
    key = pool.pop()
    results, elapsed = asyncio.run(hammer(spread(leased_pair, on_first), key, per_client, max_tokens))
    codes = [status for status, _ in results]
    assert set(codes) <= {200, 429}, codes
    used = sum(tokens for status, tokens in results if status == 200)
    assert 0 < used <= tpm + tpm * elapsed / 60.0
    assert 429 in codes  # the bound bit: demand was above the budget

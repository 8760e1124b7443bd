"""Fair sharing at saturation, end to end: the real gateway in front of one saturated replica (the
dev upstream answering one completion at a time, 40 ms each).

A heavy key bursts 20 requests, then a light key sends one. First come first served (a route
without `fairness`), the light request waits behind the whole burst; with `fairness` it waits
behind about one of them. Asserted on completion order, not wall-clock (a busy CI box); the
latency comparison is `bench/fairness.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rayleigh_gateway.app import Settings
from tests.gateway.harness import GatewayThread, KeyFile, Upstream, write_yaml

SERVICE = 0.04  # seconds per completion at the replica
BURST = 20


@dataclass
class Setup:
    url: str
    upstream: Upstream
    thread: GatewayThread
    keys: dict[str, str]


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    d: Path = tmp_path_factory.mktemp("fair")
    upstream = Upstream(latency=SERVICE, concurrency=1)
    upstream.start()

    def route(name: str, **extra: object) -> dict[str, object]:
        return {"name": name, "namespace": "t", "backend": upstream.url, "models": [f"{name}-model"], **extra}

    config = {
        "routes": [
            route("fifo"),
            route("fair", fairness={"maxInFlight": 1, "maxQueue": 100, "maxWaitSeconds": 30, "enginePriority": True}),
            route("tiny", fairness={"maxInFlight": 1, "maxQueue": 1, "maxWaitSeconds": 5}),
        ]
    }
    keyfile = KeyFile(d / "keys.yaml")
    keys = {
        "heavy": keyfile.create("heavy"),
        "light": keyfile.create("light"),
        "vip": keyfile.create("vip", priority="high"),
        "w3": keyfile.create("w3", weight=3),
    }
    thread = GatewayThread(
        Settings(config_path=str(write_yaml(d / "routes.yaml", config)), keys_path=str(keyfile.path), audit=False)
    )
    thread.start()
    yield Setup(thread.url, upstream, thread, keys)
    thread.stop()
    upstream.stop()


def body(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def burst_then_light(s: Setup, model: str, light: str = "light") -> tuple[int, float, float]:
    """(heavy requests finished before the light one, light latency, light unloaded latency)."""
    done: list[str] = []
    async with httpx.AsyncClient(base_url=s.url, timeout=60) as client:

        async def call(key: str) -> float:
            t0 = time.perf_counter()
            r = await client.post(
                "/v1/chat/completions", json=body(model), headers={"Authorization": f"Bearer {s.keys[key]}"}
            )
            assert r.status_code == 200, r.text
            done.append(key)
            return time.perf_counter() - t0

        unloaded = await call(light)
        done.clear()
        heavy = [asyncio.create_task(call("heavy")) for _ in range(BURST)]
        await asyncio.sleep(3 * SERVICE)  # the burst is in: queued (fair) or at the replica (fifo)
        latency = await call(light)
        await asyncio.gather(*heavy)
    return done.index(light), latency, unloaded


def test_light_key_is_not_starved_with_fairness_and_is_without(fair: Setup) -> None:
    before_fifo, lat_fifo, unloaded_fifo = asyncio.run(burst_then_light(fair, "fifo-model"))
    before_fair, lat_fair, unloaded_fair = asyncio.run(burst_then_light(fair, "fair-model"))
    print(
        f"\nlight key: fifo {before_fifo} heavy first, {lat_fifo * 1000:.0f} ms (unloaded {unloaded_fifo * 1000:.0f});"
        f" fair {before_fair} heavy first, {lat_fair * 1000:.0f} ms (unloaded {unloaded_fair * 1000:.0f})"
    )
    assert before_fifo >= BURST - 5  # behind (nearly) the whole burst
    assert before_fair <= 6  # behind about one request per other backlogged caller, plus the in-flight ones


def test_priority_class_goes_first_and_reaches_the_engine(fair: Setup) -> None:
    before, _, _ = asyncio.run(burst_then_light(fair, "fair-model", light="vip"))
    assert before <= 5
    last = fair.upstream.stats()["last_body"]
    assert last["priority"] in (0, 1)  # enginePriority: high 0, normal 1
    r = httpx.post(  # a client's own priority is replaced by its class's
        fair.url + "/v1/chat/completions",
        json={**body("fair-model"), "priority": -100},
        headers={"Authorization": f"Bearer {fair.keys['heavy']}"},
    )
    assert r.status_code == 200 and fair.upstream.stats()["last_body"]["priority"] == 1
    r = httpx.post(
        fair.url + "/v1/chat/completions",
        json=body("fifo-model"),
        headers={"Authorization": f"Bearer {fair.keys['vip']}"},
    )
    assert r.status_code == 200 and "priority" not in fair.upstream.stats()["last_body"]


def test_full_queue_answers_429_with_retry_after(fair: Setup) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=fair.url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {fair.keys['heavy']}"}
            tasks = []
            for _ in range(4):
                tasks.append(
                    asyncio.create_task(client.post("/v1/chat/completions", json=body("tiny-model"), headers=headers))
                )
                await asyncio.sleep(0.005)
            return list(await asyncio.gather(*tasks))

    responses = asyncio.run(run())
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and 429 in codes, codes
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "5"
    assert rejected.json()["error"]["code"] == "queue_full"
    metrics = httpx.get(fair.thread.metrics_url).text
    assert (
        'rayleigh_gateway_fair_queue_rejections_total{priority="normal",reason="queue_full",route="t/tiny"}' in metrics
    )
    assert 'rayleigh_gateway_fair_queue_wait_seconds_count{priority="high",route="t/fair"}' in metrics


def test_a_client_that_leaves_the_queue_frees_its_place(fair: Setup) -> None:
    gate = fair.thread.gateway.gates.gates["t/fair"]
    slow = {**body("fair-model"), "rayleigh_test": {"sleep": 1.5}}
    auth = {"Authorization": f"Bearer {fair.keys['heavy']}"}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=fair.url, timeout=30) as client:
            busy = asyncio.create_task(client.post("/v1/chat/completions", json=slow, headers=auth))
            await asyncio.sleep(0.2)
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=body("fair-model"), headers=auth, timeout=0.3)
            deadline = time.monotonic() + 1.0
            while len(gate.queue) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert len(gate.queue) == 0 and gate.in_flight == 1  # gone before the slow one ended
            assert (await busy).status_code == 200

    asyncio.run(run())
    assert gate.in_flight == 0
    metrics = httpx.get(fair.thread.metrics_url).text
    assert 'reason="client_gone",route="t/fair"' in metrics


def test_backlogged_keys_are_admitted_by_weight(fair: Setup) -> None:
    async def run() -> list[str]:
        done: list[str] = []
        async with httpx.AsyncClient(base_url=fair.url, timeout=60) as client:

            async def call(key: str) -> None:
                r = await client.post(
                    "/v1/chat/completions",
                    json=body("fair-model"),
                    headers={"Authorization": f"Bearer {fair.keys[key]}"},
                )
                assert r.status_code == 200, r.text
                done.append(key)

            first = asyncio.create_task(call("light"))  # holds the one slot while both backlogs queue
            await asyncio.sleep(0.01)
            tasks = [asyncio.create_task(call(k)) for _ in range(16) for k in ("w3", "heavy")]
            await asyncio.gather(first, *tasks)
        return done[1:]

    order = asyncio.run(run())
    w3 = order[:16].count("w3")
    assert 10 <= w3 <= 14, order  # 3:1 of the first 16 admitted: 12

"""Scale to zero, the gateway's part (issue 17): requests held while a model starts from zero.

The pure part drives `Hold` with a scripted probe and wake (bounds, wait, order); the end-to-end part
runs the real gateway in front of a dev upstream (`bench.devupstream`) that is down at first and is
started by the wake signal after a delay, as the operator would scale the workers up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from rayleigh_gateway.app import Settings
from rayleigh_gateway.errors import GatewayError
from rayleigh_gateway.hold import Hold
from tests.gateway.harness import AiohttpThread, GatewayThread, Upstream, write_yaml

# ---------------------------------------------------------------- Hold (pure asyncio)


class Backend:
    """A scripted backend: ready once `up` is set; counts probes and wakes."""

    def __init__(self) -> None:
        self.up = False
        self.probes = 0
        self.wakes: list[str] = []

    async def probe(self, base: str) -> bool:
        self.probes += 1
        return self.up

    async def wake(self, key: str) -> None:
        self.wakes.append(key)


def _hold(b: Backend, **kw: Any) -> Hold:
    return Hold(b.probe, b.wake, backoff=(0.01, 0.05), **kw)


async def test_held_requests_are_released_in_arrival_order_once_the_backend_is_up() -> None:
    b = Backend()
    hold = _hold(b, max_queue=10, max_wait=5)
    order: list[int] = []

    async def one(i: int) -> None:
        await hold.wait("ns/m", "http://m")
        order.append(i)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.1)
    assert order == [] and hold.held("ns/m") == 5
    b.up = True
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert b.wakes == ["ns/m"], "one wake per cold start, not one per request"
    assert hold.held("ns/m") == 0 and "ns/m" not in hold.queues
    # Up lately: later requests go straight on (the route's coldStart flag lags), no probe, no wake.
    probes = b.probes
    await asyncio.wait_for(hold.wait("ns/m", "http://m"), 0.05)
    assert (b.probes, b.wakes) == (probes, ["ns/m"])
    hold.forget_ready("ns/m")  # refused again: held again
    b.up = False
    held = asyncio.create_task(hold.wait("ns/m", "http://m"))
    await asyncio.sleep(0.05)
    assert hold.held("ns/m") == 1
    b.up = True
    await held


async def test_a_full_queue_answers_503_model_cold_starting_with_retry_after() -> None:
    b = Backend()
    hold = _hold(b, max_queue=2, max_wait=5)
    waiting = [asyncio.create_task(hold.wait("ns/m", "http://m")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(GatewayError) as err:
        await hold.wait("ns/m", "http://m")
    assert err.value.status == 503 and err.value.code == "model_cold_starting"
    assert dict(err.value.headers)[b"retry-after"].isdigit()
    # Another model has its own queue.
    other = asyncio.create_task(hold.wait("ns/other", "http://o"))
    await asyncio.sleep(0.01)
    assert hold.held("ns/other") == 1
    b.up = True
    await asyncio.gather(*waiting, other)


async def test_a_wait_past_the_bound_answers_503_and_leaves_the_queue() -> None:
    b = Backend()
    hold = _hold(b, max_queue=4, max_wait=0.2)
    t = time.monotonic()
    with pytest.raises(GatewayError) as err:
        await hold.wait("ns/m", "http://m")
    assert time.monotonic() - t >= 0.2  # not before the bound (the upper side is the test's timeout)
    assert err.value.code == "model_cold_starting" and b"retry-after" in dict(err.value.headers)
    assert hold.held("ns/m") == 0
    await asyncio.sleep(0.1)
    assert "ns/m" not in hold.queues, "the poller stops when nobody waits"


async def test_activity_is_signalled_at_most_once_per_wake_interval() -> None:
    b = Backend()
    hold = _hold(b, wake_every=0.2)
    for _ in range(50):
        hold.touch("ns/m")
    hold.touch("ns/other")
    await asyncio.sleep(0.01)
    assert sorted(b.wakes) == ["ns/m", "ns/other"]
    await asyncio.sleep(0.25)
    hold.touch("ns/m")
    await asyncio.sleep(0.01)
    assert b.wakes.count("ns/m") == 2


async def test_probes_back_off_and_a_failing_wake_does_not_stop_the_probe() -> None:
    probes = 0

    async def probe(base: str) -> bool:
        nonlocal probes
        probes += 1
        return probes >= 6

    async def wake(key: str) -> None:
        raise RuntimeError("operator unreachable")

    delays: list[float] = []

    async def recorded_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    hold = Hold(probe, wake, max_wait=5, backoff=(0.02, 0.1))
    hold.sleep = recorded_sleep
    await hold.wait("ns/m", "http://m")
    assert probes == 6  # the failing wake did not stop the probe
    assert delays == [0.02, 0.04, 0.08, 0.1, 0.1]  # doubles, then capped


# ---------------------------------------------------------------- end to end


class WakeEndpoint(AiohttpThread):
    """Stands in for the operator's wake endpoint: records the signal and brings the upstream up
    `delay` seconds after the first one (as the operator scales 0 -> 1)."""

    def __init__(self, upstream: Upstream, delay: float) -> None:
        self.calls: list[dict[str, Any]] = []
        self.upstream = upstream
        self.delay = delay
        self.timer: threading.Timer | None = None
        app = web.Application()
        app.router.add_post("/wake", self.wake)
        super().__init__(app)

    async def wake(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        if len(self.calls) == 1:
            self.timer = threading.Timer(self.delay, self.upstream.start)
            self.timer.start()
        return web.json_response({"ok": True}, status=202)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        super().stop()


@pytest.fixture
def cold(tmp_path: Path) -> Iterator[tuple[Upstream, WakeEndpoint, Path]]:
    upstream = Upstream()  # its port is chosen, nothing listens yet
    wake = WakeEndpoint(upstream, delay=1.5)
    wake.start()
    try:
        yield upstream, wake, tmp_path
    finally:
        wake.stop()
        if upstream.thread.is_alive():
            upstream.stop()


def _gateway(config: Path, wake_url: str) -> GatewayThread:
    thread = GatewayThread(Settings(config_path=str(config), audit=False, reload_interval=0.1, wake_url=wake_url))
    thread.start()
    return thread


def _config(d: Path, upstream: Upstream, queue: int, wait: float, cold_flag: bool) -> Path:
    route = {
        "name": "m",
        "namespace": "ns",
        "backend": upstream.url,
        "models": ["chat"],
        "public": True,
        "coldStart": cold_flag,
        "scaleToZero": True,
    }
    limits = {"coldStartQueue": queue, "coldStartWaitSeconds": wait}
    return write_yaml(d / "routes.yaml", {"routes": [route], "limits": limits})


def _ask(url: str) -> httpx.Response:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30)


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cold_flag", [True, False], ids=["route-flag", "connection-refused"])
def test_held_requests_are_answered_once_the_upstream_is_up_and_overflow_gets_503(
    cold: tuple[Upstream, WakeEndpoint, Path], cold_flag: bool
) -> None:
    upstream, wake, d = cold
    gw = _gateway(_config(d, upstream, queue=4, wait=20, cold_flag=cold_flag), wake.url + "/wake")
    try:
        t = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(_ask, gw.url) for _ in range(6)]
            answers = [f.result() for f in futures]
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 200, 200, 200, 503, 503], codes
        for r in answers:
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "model_cold_starting"
                assert int(r.headers["retry-after"]) >= 1
            else:
                assert r.json()["choices"][0]["message"]["content"] == "hello from the dev upstream"
        assert time.monotonic() - t >= 1.5, "answered before the upstream came up"
        assert wake.calls[0] == {"namespace": "ns", "name": "m"}
        assert upstream.stats()["requests"] == 4, "each held request went upstream once"
    finally:
        gw.stop()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_request_held_past_the_wait_gets_503_with_retry_after(cold: tuple[Upstream, WakeEndpoint, Path]) -> None:
    upstream, wake, d = cold
    wake.delay = 30  # comes up too late
    gw = _gateway(_config(d, upstream, queue=4, wait=0.5, cold_flag=True), wake.url + "/wake")
    try:
        t = time.monotonic()
        r = _ask(gw.url)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "model_cold_starting"
        assert "retry-after" in r.headers
        assert time.monotonic() - t >= 0.5  # not before the bound
    finally:
        gw.stop()


class ServeProxyAtZero(AiohttpThread):
    """Stands in for Ray Serve's proxy while the model's replica starts: it accepts connections,
    answers /v1/models 503 until `ready`, and counts completions that reach it before then (Serve
    would queue those without the gateway's bounds)."""

    def __init__(self) -> None:
        self.ready = False
        self.early: list[str] = []
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        super().__init__(app)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": []}, status=200 if self.ready else 503)

    async def chat(self, request: web.Request) -> web.Response:
        if not self.ready:
            self.early.append(request.path)
            return web.json_response({"error": {"message": "no replica yet"}}, status=503)
        return web.json_response({"object": "chat.completion", "choices": [{"message": {"content": "up"}}]})


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_cold_start_in_progress_holds_requests_after_the_route_s_cold_start_flag_clears(tmp_path: Path) -> None:
    """The operator clears coldStart at the wake, long before the model serves: a request that comes
    then still waits in the gateway's bounded queue, not at a backend that accepts it unbounded."""
    backend = ServeProxyAtZero()
    backend.start()
    route = {"name": "m", "namespace": "ns", "backend": backend.url, "models": ["chat"], "public": True}
    config = tmp_path / "routes.yaml"
    limits = {"coldStartQueue": 4, "coldStartWaitSeconds": 20}
    write_yaml(config, {"routes": [{**route, "coldStart": True, "scaleToZero": True}], "limits": limits})
    gw = GatewayThread(Settings(config_path=str(config), audit=False, reload_interval=3600))
    gw.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_ask, gw.url)
            wait_held = time.monotonic() + 10
            while gw.gateway.upstream.hold is None or gw.gateway.upstream.hold.held("ns/m") < 1:
                assert time.monotonic() < wait_held, "the first request was not held"
                time.sleep(0.02)
            # The wake: the operator rewrites the route without coldStart; the model is not up yet.
            write_yaml(config, {"routes": [{**route, "scaleToZero": True}], "limits": limits})
            assert gw.gateway.check_reload()
            second = pool.submit(_ask, gw.url)
            while gw.gateway.upstream.hold.held("ns/m") < 2:
                assert time.monotonic() < wait_held, "the second request was not held"
                time.sleep(0.02)
            backend.ready = True
            answers = [first.result(), second.result()]
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert backend.early == [], "a request reached the backend before it could serve"
    finally:
        gw.stop()
        backend.stop()

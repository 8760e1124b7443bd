"""Streaming pass-through: SSE events as they come, usage injection, disconnects, failures, WebSocket."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import orjson
import pytest

from tests.gateway.conftest import GW

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HTTP = httpx.Client(timeout=10)


def stream_events(gw: GW, key: str, **extra: object) -> tuple[httpx.Response, list[bytes]]:
    body = {"model": "priv-model", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}
    with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=gw.auth(key)) as resp:
        raw = b"".join(resp.iter_bytes())
    return resp, [e for e in raw.split(b"\n\n") if e]


def test_stream_passes_events_and_done(gw: GW) -> None:
    resp, events = stream_events(gw, gw.key(), rayleigh_test={"chunks": 4})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == b"data: [DONE]"
    contents = [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert float(resp.headers["x-rayleigh-overhead-ms"]) >= 0


def test_stream_usage_is_requested_upstream_and_hidden_from_client_that_did_not_ask(gw: GW) -> None:
    _, events = stream_events(gw, gw.key())
    assert gw.upstream.stats()["last_body"]["stream_options"] == {"include_usage": True}
    assert not any(b'"usage"' in e for e in events)


def test_stream_usage_is_kept_for_client_that_asked(gw: GW) -> None:
    _, events = stream_events(gw, gw.key(), stream_options={"include_usage": True})
    usage = [orjson.loads(e[6:])["usage"] for e in events if b'"usage"' in e]
    assert usage == [{"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}]


def test_stream_first_event_arrives_before_the_stream_ends(gw: GW) -> None:
    """No buffering: the first event is readable while the upstream is still sleeping."""
    body = {
        "model": "priv-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "rayleigh_test": {"chunks": 3, "delay": 1.0},
    }
    with HTTP.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=gw.auth(gw.key())) as resp:
        it = resp.iter_raw()
        first = next(it)
        first_at = time.monotonic()
        rest = b"".join(it)
        end_at = time.monotonic()
    assert b"t0" in first and b"t1" not in first
    assert b"[DONE]" in rest
    assert end_at - first_at > 1.5  # the rest came later, so the first was not held back


async def test_client_disconnect_cancels_upstream_stream(gw: GW) -> None:
    before = gw.upstream.stats()["streams_cancelled"]
    body = {
        "model": "priv-model",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "rayleigh_test": {"chunks": 100, "delay": 0.1},
    }
    async with aiohttp.ClientSession() as session:
        resp = await session.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth(gw.key()))
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        resp.close()  # the client goes away mid-stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and gw.upstream.stats()["streams_cancelled"] == before:
        await asyncio.sleep(0.05)
    assert gw.upstream.stats()["streams_cancelled"] == before + 1
    metrics = HTTP.get(gw.metrics_url).text
    assert 'rayleigh_gateway_client_disconnects_total{route="test/private"}' in metrics


def test_upstream_failure_mid_stream_ends_with_error_event(gw: GW) -> None:
    resp, events = stream_events(gw, gw.key(), rayleigh_test={"chunks": 5, "fail_after": 2})
    assert resp.status_code == 200
    assert len(events) == 3
    error = orjson.loads(events[-1][6:])["error"]
    assert error["code"] == "upstream_stream_broken"


def test_stream_rejected_by_auth_is_plain_json_401(gw: GW) -> None:
    resp, _ = stream_events(gw, "rk_bad_bad")
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/json"


async def test_websocket_chat_streams_the_same_tokens(gw: GW) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(gw.url.replace("http", "ws") + "/v1/ws/chat") as ws,
    ):
        await ws.send_str(
            orjson.dumps(
                {"api_key": gw.key(), "model": "priv-model", "messages": [{"role": "user", "content": "hi"}]}
            ).decode()
        )
        messages = []
        while True:
            msg = await asyncio.wait_for(ws.receive_json(), 10)
            messages.append(msg)
            if msg["type"] in ("done", "error"):
                break
    assert messages[-1] == {"type": "done"}
    tokens = [m["data"]["choices"][0]["delta"]["content"] for m in messages[:-1]]
    assert tokens == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 "]


async def test_websocket_without_key_gets_401_message(gw: GW) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(gw.url.replace("http", "ws") + "/v1/ws/chat") as ws,
    ):
        await ws.send_str('{"model": "priv-model", "messages": [{"role": "user", "content": "hi"}]}')
        msg = await asyncio.wait_for(ws.receive_json(), 10)
    assert msg["type"] == "error" and msg["status"] == 401
    assert msg["error"]["code"] == "missing_api_key"

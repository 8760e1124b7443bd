"""End to end: the gateway in front of the real serving stack (Ray Serve + vLLM on CPU, tiny
random Qwen2 model and a LoRA adapter), through the openai SDK and raw HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from rayleigh_gateway.app import Settings
from tests.gateway.harness import GatewayThread, KeyFile, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@dataclass
class E2E:
    url: str
    key: str
    model: str
    adapter: str
    redis_url: str


@pytest.fixture(scope="module")
def e2e(serving_stack: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    d: Path = tmp_path_factory.mktemp("e2e")
    models = [serving_stack.model, *serving_stack.adapters]
    config = write_yaml(
        d / "routes.yaml",
        {
            "routes": [
                {
                    "name": "tiny",
                    "namespace": "default",
                    "backend": serving_stack.base_url,
                    "models": models,
                    "rateLimits": {"requestsPerMinute": 600, "tokensPerMinute": 100000},
                }
            ]
        },
    )
    keys = KeyFile(d / "keys.yaml")
    key = keys.create(owner="e2e")
    thread = GatewayThread(Settings(config_path=str(config), keys_path=str(keys.path), redis_url=redis_server.url))
    thread.start()
    try:
        yield E2E(thread.url, key, serving_stack.model, serving_stack.adapters[0], redis_server.url)
    finally:
        thread.stop()


def client(e2e: E2E) -> openai.OpenAI:
    return openai.OpenAI(base_url=e2e.url + "/v1", api_key=e2e.key, timeout=120, max_retries=0)


def test_openai_sdk_chat_through_gateway(e2e: E2E) -> None:
    raw = client(e2e).chat.completions.with_raw_response.create(
        model=e2e.model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    completion = raw.parse()
    assert completion.choices[0].message.content is not None
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert float(raw.headers["x-rayleigh-overhead-ms"]) >= 0
    assert raw.headers["x-ratelimit-limit-requests"] == "600"


def test_openai_sdk_streams_through_gateway_with_usage(e2e: E2E) -> None:
    stream = client(e2e).chat.completions.create(
        model=e2e.model,
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text
    assert len(usage) == 1 and usage[0].completion_tokens == 8


def test_stream_without_include_usage_hides_usage_but_counts_it(e2e: E2E) -> None:
    key_id = e2e.key.split("_")[1]
    r = redis.Redis.from_url(e2e.redis_url)

    def completion_tokens() -> int:
        # Usage is metered per period (rayleigh_gateway.usage): the month keys hold the totals.
        keys = r.scan_iter(match=f"rayleigh:usage:month:*:{key_id}")
        return sum(int(r.hget(k, f"{e2e.model}|completion_tokens") or 0) for k in keys)

    # Usage is written in batches after each response (every 100 ms): let earlier tests' land first.
    before, settle_deadline = -1, time.monotonic() + 5
    while time.monotonic() < settle_deadline and before != completion_tokens():
        before = completion_tokens()
        time.sleep(0.5)
    body = {
        "model": e2e.model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 6,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", e2e.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {e2e.key}"}, timeout=120
    ) as resp:
        raw = b"".join(resp.iter_bytes())
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert not any(b'"usage":{' in e for e in events)
    deadline = time.monotonic() + 5
    after = before
    while time.monotonic() < deadline and after == before:
        after = completion_tokens()
        time.sleep(0.05)
    assert after - before == 6


def test_lora_adapter_is_routed_by_name(e2e: E2E) -> None:
    completion = client(e2e).completions.create(model=e2e.adapter, prompt="Hello", max_tokens=4, temperature=0)
    assert completion.model == e2e.adapter
    assert completion.choices[0].text is not None


def test_models_lists_base_and_adapter(e2e: E2E) -> None:
    ids = {m.id for m in client(e2e).models.list()}
    assert ids == {e2e.model, e2e.adapter}


def test_backend_validation_error_passes_through(e2e: E2E) -> None:
    body = {"model": e2e.model, "messages": "not-a-list"}
    resp = httpx.post(
        e2e.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {e2e.key}"}, timeout=60
    )
    assert 400 <= resp.status_code < 500
    assert "error" in orjson.loads(resp.content) or "detail" in orjson.loads(resp.content)


def test_sdk_without_key_gets_authentication_error(e2e: E2E) -> None:
    anonymous = openai.OpenAI(base_url=e2e.url + "/v1", api_key="rk_wrong_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.chat.completions.create(model=e2e.model, messages=[{"role": "user", "content": "x"}], max_tokens=2)

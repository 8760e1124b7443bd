"""Limits nobody can slip past, against the real gateway (real Redis, the dev upstream).

- Request data never becomes a metric label, a log field or cached state before it is checked:
  1000 requests with unique 100 KB model names leave a gateway process's RSS and /metrics flat;
  unknown model names are counted under one label, also over the WebSocket.
- A request is charged what the engine may generate: the gateway writes the token budget it
  charged into the forwarded body (what the dev upstream received, /stats last_body), multiplies
  it by n / best_of / prompts, and refuses values the backend would coerce ("100000", 1.0, true,
  "true" for stream). A debt from an under-estimate is carried past one minute's budget.
- Two routes claiming one model name: the oldest keeps it, the other is dropped and counted, the
  rest of the config is served, at start (thread and process) and on reload.
- Unauthenticated callers get the same 401 for known and unknown models.

Every load loop is bounded in count and time; only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
import redis

from rayleigh_gateway.app import Settings
from rayleigh_gateway.routes import parse_config, route_for, served_routes
from tests.gateway.conftest import GW
from tests.gateway.harness import GatewayProcess, GatewayThread, KeyFile, Upstream, write_yaml
from tests.plugins.common import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

HTTP = httpx.Client(timeout=30)
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()["error"]
    assert set(body) >= {"message", "type", "code", "param"}
    return body


# ---------------------------------------------------------------- a gateway with its own routes


@dataclass
class Gw:
    url: str
    thread: GatewayThread
    keys: KeyFile
    upstream: Upstream
    redis_url: str

    def key(self, **kwargs: Any) -> str:
        key = self.keys.create(**kwargs)
        self.thread.gateway.check_reload()
        return key

    def post(self, body: dict[str, Any], key: str | None = None, path: str = CHAT) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return HTTP.post(self.url + path, json=body, headers=headers)

    def last_body(self) -> dict[str, Any]:
        body: dict[str, Any] = self.upstream.stats()["last_body"]
        return body

    def requests_seen(self) -> int:
        return int(self.upstream.stats()["requests"])


def _route(name: str, models: list[str], backend: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "h", "backend": backend, "models": models, **extra}


@pytest.fixture(scope="module")
def hg(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream, redis_server: Any) -> Iterator[Gw]:
    d = tmp_path_factory.mktemp("hardening")
    url = gw_upstream.url
    config = {
        "limits": {"defaultMaxTokens": 100},
        "routes": [
            _route("tok", ["tok-1k"], url, rateLimits={"tokensPerMinute": 1000}),
            _route("big", ["big-budget"], url, rateLimits={"tokensPerMinute": 100000}),
            _route("capped", ["capped-model"], url, maxTokens=50, rateLimits={"tokensPerMinute": 100000}),
            _route("ctx", ["ctx-model"], url, maxModelLen=64),
            _route("debt", ["debt-model"], url, rateLimits={"tokensPerMinute": 1000}),
        ],
    }
    keys = KeyFile(d / "keys.yaml")
    thread = GatewayThread(
        Settings(
            config_path=str(write_yaml(d / "routes.yaml", config)),
            keys_path=str(keys.path),
            redis_url=redis_server.url,
            reload_interval=60,
            audit=False,
        )
    )
    thread.start()
    yield Gw(thread.url, thread, keys, gw_upstream, redis_server.url)
    thread.stop()


def remaining_tokens(resp: httpx.Response) -> int:
    return int(resp.headers["x-ratelimit-remaining-tokens"])


# ---------------------------------------------------------------- H1: nothing unchecked is kept


def _group_rss_kib(pgid: int) -> int:
    """Resident memory of every process in the gateway's process group (uvicorn and workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid:  # field 5 of stat: the process group
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def test_unique_huge_model_names_leave_memory_and_metrics_flat(tmp_path: Path, gw_upstream: Upstream) -> None:
    config = write_yaml(tmp_path / "routes.yaml", {"routes": [_route("p", ["p-model"], gw_upstream.url)]})
    keys = KeyFile(tmp_path / "keys.yaml")
    key = keys.create(owner="h1")
    gateway = GatewayProcess(config, keys.path, None, tmp_path / "gw.log")
    seq = 0

    def send(client: httpx.Client, kind: str) -> int:
        nonlocal seq
        seq += 1
        if kind == "huge":  # 100 KB, never a valid name: refused before it is looked up
            model, headers = f"{seq:08d}" + "m" * 100_000, {}
        elif kind == "unknown-anon":  # a valid name no route serves, no credential: 401
            model, headers = f"no-such-{seq}", {}
        else:  # the same with a valid key: 404
            model, headers = f"no-such-{seq}", {"Authorization": f"Bearer {key}"}
        body = {"model": model, "messages": MESSAGES}
        return client.post(gateway.url + CHAT, json=body, headers=headers).status_code

    kinds = ["huge", "huge", "huge", "unknown-anon", "unknown-key"]
    expected = {"huge": 400, "unknown-anon": 401, "unknown-key": 404}
    answers: dict[str, set[int]] = {kind: set() for kind in expected}
    try:
        gateway.wait_ready()
        with httpx.Client(timeout=30) as client:
            for i in range(100):  # warm-up: every answer and its label set exist, allocator settled
                kind = kinds[i % len(kinds)]
                answers[kind].add(send(client, kind))
            rss_before = _group_rss_kib(gateway.proc.pid)
            metrics_before = len(client.get(gateway.metrics_url).content)
            deadline = time.monotonic() + 150
            counts = dict.fromkeys(expected, 0)
            i = 0
            while counts["huge"] < 1000 and time.monotonic() < deadline:
                kind = kinds[i % len(kinds)]
                i += 1
                answers[kind].add(send(client, kind))
                counts[kind] += 1
            assert counts["huge"] == 1000, f"only {counts} requests within the time bound"
            rss_after = _group_rss_kib(gateway.proc.pid)
            metrics = client.get(gateway.metrics_url).text
    finally:
        gateway.stop()
    # 1000 x 100 KB kept anywhere would be 100 MB; allow allocator noise.
    assert rss_after - rss_before < 24 * 1024, f"RSS grew by {(rss_after - rss_before) // 1024} MiB"
    assert len(metrics) - metrics_before < 1024, f"/metrics grew from {metrics_before} to {len(metrics)} bytes"
    assert 'model="unknown"' in metrics and "no-such-" not in metrics and "mmmm" not in metrics
    assert "key_id" not in metrics
    assert answers == {kind: {status} for kind, status in expected.items()}


def test_model_names_are_checked_and_unknown_ones_counted_under_one_label(gw: GW) -> None:
    key = gw.key()
    bad = HTTP.post(gw.url + CHAT, json={"model": "x" * 200, "messages": MESSAGES}, headers=gw.auth(key))
    assert bad.status_code == 400
    assert (error(bad)["code"], error(bad)["param"]) == ("invalid_model", "model")
    assert "xxxx" not in bad.text
    newline = HTTP.post(gw.url + CHAT, json={"model": "priv-model\n", "messages": MESSAGES}, headers=gw.auth(key))
    assert newline.status_code == 400
    rid = "h1-unknown-audit"
    body = {"model": "h1-typo-model", "messages": MESSAGES}
    unknown = HTTP.post(gw.url + CHAT, json=body, headers={**gw.auth(key), "x-request-id": rid})
    assert unknown.status_code == 404 and error(unknown)["code"] == "model_not_found"
    text = HTTP.get(gw.metrics_url).text
    assert 'rayleigh_gateway_requests_total{code="404",model="unknown",route=""}' in text
    assert "h1-typo-model" not in text and "xxxx" not in text

    def audited() -> list[dict[str, Any]]:
        lines = gw.audit_path.read_text().splitlines() if gw.audit_path.exists() else []
        return [orjson.loads(line) for line in lines if rid in line]

    wait_for(lambda: bool(audited()), "the audit line")
    (line,) = audited()
    assert line["model"] == "unknown" and line["status"] == 404 and line["key_id"] == key.split("_")[1]


def test_websocket_model_names_are_checked_the_same_way(gw: GW) -> None:
    async def ask(model: str) -> dict[str, Any]:
        url = gw.url.replace("http", "ws") + "/v1/ws/chat"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str(orjson.dumps({"model": model, "messages": MESSAGES}).decode())
            reply: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 20)
            return reply

    huge = "w" * 50_000  # under this gateway's maxBodyBytes (64 KiB)
    assert asyncio.run(ask(huge))["status"] == 400
    assert asyncio.run(ask("ws-no-such-model"))["status"] == 401
    text = HTTP.get(gw.metrics_url).text
    assert "wwww" not in text and "ws-no-such-model" not in text


# ---------------------------------------------------------------- Low: no model enumeration


def test_unauthenticated_callers_get_the_same_401_for_known_and_unknown_models(gw: GW) -> None:
    def ask(model: str, headers: dict[str, str]) -> tuple[int, Any]:
        resp = HTTP.post(gw.url + CHAT, json={"model": model, "messages": MESSAGES}, headers=headers)
        body = resp.json()["error"]
        return resp.status_code, {k: str(v).replace(model, "M") for k, v in body.items()}

    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer rk_nope_nope"},
        {"Authorization": "Bearer not-a-token"},
    ):
        known = ask("priv-model", headers)
        assert known[0] == 401, (headers, known)
        assert ask("h-not-served", headers) == known, headers
    # A caller with a valid key learns no more about models it may not use than about unknown ones.
    key = gw.key(models=["other-model"])
    restricted = ask("priv-model", gw.auth(key))
    assert restricted[0] == 404 and ask("h-not-served", gw.auth(key)) == restricted


# ---------------------------------------------------------------- H2: charged what may be generated


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("max_tokens", "100000", "invalid_type"),
        ("max_tokens", 100.0, "invalid_type"),
        ("max_tokens", True, "invalid_type"),
        ("max_tokens", 0, "integer_below_min_value"),
        ("max_tokens", -5, "integer_below_min_value"),
        ("max_completion_tokens", "900", "invalid_type"),
        ("n", "16", "invalid_type"),
        ("n", 2.0, "invalid_type"),
        ("n", 0, "integer_below_min_value"),
        ("stream", "true", "invalid_type"),
        ("stream", 1, "invalid_type"),
        ("stream", "yes", "invalid_type"),
    ],
)
def test_values_the_backend_would_coerce_are_refused(hg: Gw, field: str, value: object, code: str) -> None:
    seen = hg.requests_seen()
    resp = hg.post({"model": "tok-1k", "messages": MESSAGES, field: value}, hg.key())
    assert resp.status_code == 400, resp.text
    assert (error(resp)["param"], error(resp)["code"]) == (field, code)
    assert hg.requests_seen() == seen  # nothing reached the backend


def test_best_of_is_checked_on_completions(hg: Gw) -> None:
    resp = hg.post({"model": "tok-1k", "prompt": "a", "best_of": "3"}, hg.key(), "/v1/completions")
    assert resp.status_code == 400 and error(resp)["param"] == "best_of"


def test_n_multiplies_the_charge(hg: Gw) -> None:
    key = hg.key()
    never = hg.post({"model": "tok-1k", "messages": MESSAGES, "max_tokens": 100, "n": 16}, key)
    assert never.status_code == 429 and "lower max_tokens" in error(never)["message"]
    resp = hg.post({"model": "tok-1k", "messages": MESSAGES, "max_tokens": 100, "n": 4}, key)
    assert resp.status_code == 200, resp.text
    assert remaining_tokens(resp) <= 1000 - 400


def test_missing_max_tokens_is_charged_and_written_into_the_forwarded_body(hg: Gw) -> None:
    resp = hg.post({"model": "tok-1k", "messages": MESSAGES}, hg.key())
    assert resp.status_code == 200, resp.text
    assert hg.last_body()["max_tokens"] == 100  # defaultMaxTokens, now also what the engine may generate
    assert remaining_tokens(resp) <= 1000 - 100
    completions = hg.post({"model": "big-budget", "prompt": "a"}, hg.key(), "/v1/completions")
    assert completions.status_code == 200 and hg.last_body()["max_tokens"] == 16  # OpenAI's default
    null = hg.post({"model": "big-budget", "messages": MESSAGES, "max_tokens": None}, hg.key())
    assert null.status_code == 200 and hg.last_body()["max_tokens"] == 100


def test_the_larger_of_max_tokens_and_max_completion_tokens_is_charged(hg: Gw) -> None:
    body = {"model": "tok-1k", "messages": MESSAGES, "max_tokens": 10, "max_completion_tokens": 900}
    resp = hg.post(body, hg.key())
    assert resp.status_code == 200, resp.text
    assert remaining_tokens(resp) <= 1000 - 900
    assert hg.last_body()["max_completion_tokens"] == 900


def test_budgets_above_the_route_cap_are_lowered_in_the_forwarded_body(hg: Gw) -> None:
    key = hg.key()
    resp = hg.post({"model": "capped-model", "messages": MESSAGES, "max_tokens": 5000, "n": 2}, key)
    assert resp.status_code == 200, resp.text
    assert hg.last_body()["max_tokens"] == 50 and hg.last_body()["n"] == 2
    assert remaining_tokens(resp) >= 100000 - 100 - 200  # charged 2 x 50 plus the prompt, not 2 x 5000
    resp = hg.post({"model": "capped-model", "messages": MESSAGES, "max_completion_tokens": 5000}, key)
    assert resp.status_code == 200 and hg.last_body()["max_completion_tokens"] == 50
    resp = hg.post({"model": "ctx-model", "messages": MESSAGES}, key)  # maxModelLen 64 < defaultMaxTokens
    assert resp.status_code == 200 and hg.last_body()["max_tokens"] == 64


def test_completions_charge_best_of_and_every_prompt_of_a_batch(hg: Gw) -> None:
    body = {"model": "big-budget", "prompt": ["a", "b"], "max_tokens": 1000, "n": 2, "best_of": 3}
    resp = hg.post(body, hg.key(), "/v1/completions")
    assert resp.status_code == 200, resp.text
    assert remaining_tokens(resp) <= 100000 - 3 * 2 * 1000


def test_stream_false_and_true_are_the_only_stream_values(hg: Gw) -> None:
    key = hg.key()
    assert hg.post({"model": "big-budget", "messages": MESSAGES, "stream": False}, key).status_code == 200
    with HTTP.stream(
        "POST",
        hg.url + CHAT,
        json={"model": "big-budget", "messages": MESSAGES, "stream": True, "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        data = b"".join(resp.iter_raw())
    assert resp.status_code == 200 and data.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in data  # the usage event the gateway asked for was removed again
    assert hg.last_body()["stream_options"] == {"include_usage": True}


def test_a_debt_beyond_one_minute_is_carried(hg: Gw) -> None:
    """The dev upstream reports more usage than the estimate (as a prompt the bytes/4 estimate
    under-counts would): the bucket goes below -capacity and the next request waits for all of it."""
    key = hg.key()
    body = {
        "model": "debt-model",
        "messages": MESSAGES,
        "max_tokens": 10,
        "stream": True,
        "rayleigh_test": {"chunks": 3000},  # usage: 3000 completion tokens on a 1000/min bucket
    }
    with HTTP.stream("POST", hg.url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        b"".join(resp.iter_raw())
    assert resp.status_code == 200
    client = redis.Redis.from_url(hg.redis_url)
    bucket = f"rayleigh:rl:kr:h/debt:{key.split('_')[1]}:t"
    wait_for(lambda: float(client.hget(bucket, "l") or 0) < -1000, "the debt to be written to Redis")
    assert client.pttl(bucket) > 120_000  # the bucket (and its debt) lives until it is refilled
    again = hg.post({"model": "debt-model", "messages": MESSAGES, "max_tokens": 10}, key)
    assert again.status_code == 429
    assert int(again.headers["retry-after"]) > 120  # ~2000 tokens of debt at 1000/min


# ---------------------------------------------------------------- H3: one name cannot take routing down


def _conflicting(url: str) -> list[dict[str, Any]]:
    return [
        _route("b-newer", ["shared-name", "b-only"], url, createdAt="2025-02-01T00:00:00Z"),
        _route("a-older", ["shared-name", "a-only"], url, createdAt="2025-01-01T00:00:00Z"),
        _route("other", ["other-served"], url),
    ]


def _served_by(metrics_url: str, model: str) -> set[str]:
    routes = set()
    for line in HTTP.get(metrics_url).text.splitlines():
        if line.startswith("rayleigh_gateway_requests_total{") and f'model="{model}"' in line:
            routes.add(line.split('route="')[1].split('"')[0])
    return routes


def test_conflicting_routes_at_start_leave_the_others_served(
    tmp_path: Path, gw_upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "routes").mkdir()
    for route in _conflicting(gw_upstream.url):  # the operator's layout: one file per route
        (tmp_path / "routes" / f"h_{route['name']}.json").write_text(json.dumps(route))
    keys = KeyFile(tmp_path / "keys.yaml")
    key = keys.create(owner="h3")
    with caplog.at_level(logging.ERROR, logger="rayleigh.gateway"):
        thread = GatewayThread(
            Settings(config_path=str(tmp_path / "routes"), keys_path=str(keys.path), reload_interval=60, audit=False)
        )
    assert "route h/b-newer (2025-02-01T00:00:00+00:00) is not served: model 'shared-name'" in caplog.text
    thread.start()
    try:
        auth = {"Authorization": f"Bearer {key}"}

        def code(model: str) -> int:
            body = {"model": model, "messages": MESSAGES}
            return HTTP.post(thread.url + CHAT, json=body, headers=auth).status_code

        assert [code(m) for m in ("shared-name", "a-only", "other-served", "b-only")] == [200, 200, 200, 404]
        assert _served_by(thread.metrics_url, "shared-name") == {"h/a-older"}
        text = HTTP.get(thread.metrics_url).text
        assert "rayleigh_gateway_route_conflicts 1.0" in text and "rayleigh_gateway_routes 2.0" in text
    finally:
        thread.stop()


def test_conflicting_routes_do_not_stop_a_gateway_process(tmp_path: Path, gw_upstream: Upstream) -> None:
    config = write_yaml(tmp_path / "routes.yaml", {"routes": _conflicting(gw_upstream.url)})
    keys = KeyFile(tmp_path / "keys.yaml")
    key = keys.create(owner="h3")
    gateway = GatewayProcess(config, keys.path, None, tmp_path / "gw.log")
    try:
        gateway.wait_ready()
        body = {"model": "other-served", "messages": MESSAGES}
        resp = HTTP.post(gateway.url + CHAT, json=body, headers={"Authorization": f"Bearer {key}"})
        assert resp.status_code == 200
    finally:
        gateway.stop()


def test_reload_with_a_conflict_still_applies_the_other_changes(tmp_path: Path, gw_upstream: Upstream) -> None:
    url = gw_upstream.url
    routes = [r for r in _conflicting(url) if r["name"] != "b-newer"]
    config = write_yaml(tmp_path / "routes.yaml", {"routes": routes})
    keys = KeyFile(tmp_path / "keys.yaml")
    key = keys.create(owner="h3")
    thread = GatewayThread(Settings(config_path=str(config), keys_path=str(keys.path), reload_interval=60, audit=False))
    thread.start()
    try:
        auth = {"Authorization": f"Bearer {key}"}

        def ask(model: str) -> httpx.Response:
            return HTTP.post(thread.url + CHAT, json={"model": model, "messages": MESSAGES}, headers=auth)

        assert ask("other-served").status_code == 200
        # A newer ModelDeployment claims shared-name, and the other route's CIDRs are tightened.
        changed = [{**r, "allowedCIDRs": ["10.0.0.0/8"]} if r["name"] == "other" else r for r in _conflicting(url)]
        write_yaml(config, {"routes": changed})
        assert thread.gateway.check_reload()
        resp = ask("other-served")
        assert resp.status_code == 403 and error(resp)["code"] == "ip_not_allowed"  # the change applied
        assert ask("shared-name").status_code == 200 and ask("b-only").status_code == 404
        text = HTTP.get(thread.metrics_url).text
        assert 'rayleigh_gateway_config_reloads_total{file="config",result="ok"}' in text
        assert "rayleigh_gateway_route_conflicts 1.0" in text
    finally:
        thread.stop()


def test_oldest_route_wins_ties_by_namespace_and_name() -> None:
    def route(ns: str, name: str, created: str | None = None) -> dict[str, Any]:
        extra = {"createdAt": created} if created else {}
        return {"name": name, "namespace": ns, "backend": "http://b:1", "models": ["m", f"{name}-own"], **extra}

    config = parse_config(
        {
            "routes": [
                route("z", "undated"),
                route("b", "late", "2025-03-01T00:00:00Z"),
                route("b", "early", "2025-03-01T01:00:00+02:00"),  # 23:00 UTC the day before: oldest
                route("a", "late", "2025-03-01T00:00:00Z"),
            ]
        }
    )
    served, dropped = served_routes(config.routes)
    assert [(r.namespace, r.name) for r in served] == [("b", "early")]
    assert {(c.route.namespace, c.route.name, c.winner.name) for c in dropped} == {
        ("z", "undated", "early"),
        ("b", "late", "early"),
        ("a", "late", "early"),
    }
    same_time = parse_config(
        {"routes": [route("b", "x", "2025-01-01T00:00:00Z"), route("a", "y", "2025-01-01T00:00:00Z")]}
    )
    assert [r.namespace for r in served_routes(same_time.routes)[0]] == ["a"]
    undated = parse_config({"routes": [route("b", "x"), route("a", "y")]})
    assert [r.namespace for r in served_routes(undated.routes)[0]] == ["a"]


def test_route_for_carries_the_creation_timestamp() -> None:
    import yaml

    from rayleigh_api import ModelDeployment

    doc = yaml.safe_load((REPO_ROOT / "manifests" / "examples" / "tiny.yaml").read_text())
    md = ModelDeployment.model_validate(doc)
    assert "createdAt" not in route_for(md, "http://b:1").model_dump(mode="json", by_alias=True)
    doc["metadata"]["creationTimestamp"] = "2025-01-02T03:04:05Z"
    route = route_for(ModelDeployment.model_validate(doc), "http://b:1")
    assert route.model_dump(mode="json", by_alias=True)["createdAt"] == "2025-01-02T03:04:05Z"

"""Traffic splits: one model name, several weighted backends (issue 17).

The pure part checks the picker (weighted draws, sticky callers by weighted rendezvous hashing)
and the route model; the end-to-end part runs the real gateway in front of two dev upstreams
(`bench.devupstream`, each tagging its answers with its own name) and counts where answers came from.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from rayleigh_gateway.app import Settings
from rayleigh_gateway.compiled import compile_config
from rayleigh_gateway.routes import ConfigError, GatewayConfig, Route, parse_config, split_route
from rayleigh_gateway.split import Picker
from tests.gateway.harness import GatewayThread, KeyFile, Upstream, write_yaml

# ---------------------------------------------------------------- the picker (pure)


def test_ten_thousand_picks_over_a_90_10_split_land_within_one_point() -> None:
    for seed in range(5):
        picker = Picker(["a", "b"], [90, 10], _rng=random.Random(seed))
        counts = Counter(picker.pick() for _ in range(10_000))
        assert abs(counts[0] / 10_000 - 0.90) <= 0.01, (seed, counts)
        assert abs(counts[1] / 10_000 - 0.10) <= 0.01, (seed, counts)


def test_weights_need_not_sum_to_100_and_zero_gets_nothing() -> None:
    picker = Picker(["a", "b", "c"], [3, 1, 0], _rng=random.Random(1))
    counts = Counter(picker.pick() for _ in range(10_000))
    assert counts[2] == 0
    assert abs(counts[0] / 10_000 - 0.75) <= 0.015
    assert picker.shares() == [0.75, 0.25, 0.0]
    assert Picker(["a", "b"], [0, 0]).pick() == -1
    assert Picker(["a", "b"], [0, 0], sticky=True).pick("key-1") == -1


def test_sticky_callers_stay_on_one_backend_in_the_weights_ratio() -> None:
    picker = Picker(["ns/v1", "ns/v2"], [90, 10], sticky=True)
    callers = [f"key-{i}" for i in range(5000)]
    first = {c: picker.pick(c) for c in callers}
    for c in callers[:500]:
        assert all(picker.pick(c) == first[c] for _ in range(5))
    share_v2 = sum(1 for i in first.values() if i == 1) / len(callers)
    assert abs(share_v2 - 0.10) <= 0.02, share_v2
    # The same in another process: the hash is not Python's per-process hash().
    assert Picker(["ns/v1", "ns/v2"], [90, 10], sticky=True).pick("key-7") == first["key-7"]


def test_a_weight_change_moves_few_sticky_callers_and_only_towards_the_raised_backend() -> None:
    callers = [f"jwt:user-{i}" for i in range(5000)]
    before = Picker(["ns/v1", "ns/v2"], [90, 10], sticky=True)
    after = Picker(["ns/v1", "ns/v2"], [80, 20], sticky=True)
    moved = [(before.pick(c), after.pick(c)) for c in callers if before.pick(c) != after.pick(c)]
    # 10 points of traffic change hands: about 10% of callers move, all from v1 to v2.
    assert len(moved) / len(callers) <= 0.13, len(moved)
    assert all(move == (0, 1) for move in moved)
    # Three backends: raising c's weight takes callers to c only, never between a and b.
    three = Picker(["a", "b", "c"], [50, 40, 10], sticky=True)
    raised = Picker(["a", "b", "c"], [50, 40, 30], sticky=True)
    for c in callers:
        if three.pick(c) != raised.pick(c):
            assert raised.pick(c) == 2
    # Setting a weight to 0 moves only that backend's callers.
    drained = Picker(["a", "b", "c"], [50, 40, 0], sticky=True)
    for c in callers:
        if three.pick(c) != 2:
            assert drained.pick(c) == three.pick(c)


def test_non_sticky_routes_ignore_the_caller() -> None:
    picker = Picker(["a", "b"], [50, 50], _rng=random.Random(3))
    assert len({picker.pick("same-caller") for _ in range(200)}) == 2


# ---------------------------------------------------------------- the route model (pure)


def _route(name: str, backend: str, **extra: Any) -> Route:
    return Route.model_validate({"name": name, "namespace": "ml", "backend": backend, "models": ["qwen"], **extra})


def test_a_single_backend_route_reads_and_renders_as_before() -> None:
    route = _route("v1", "http://v1-head:8000/")
    dumped = route.model_dump(by_alias=True, mode="json")
    assert dumped["backend"] == "http://v1-head:8000"
    assert "backends" not in dumped and "sticky" not in dumped
    assert [(t.name, t.url, t.weight) for t in route.targets()] == [("ml/v1", "http://v1-head:8000", 100)]


def test_split_route_merges_members_into_weighted_backends() -> None:
    v1 = _route("v1", "http://v1-head:8000", public=True)
    v2 = _route("v2", "http://v2-head:8000")
    merged = split_route([(v1, 90), (v2, 10)], sticky=True)
    assert (merged.name, merged.namespace, merged.backend, merged.sticky, merged.public) == (
        "v1",
        "ml",
        None,
        True,
        True,
    )
    assert [(b.name, b.url, b.weight) for b in merged.backends] == [
        ("ml/v1", "http://v1-head:8000", 90),
        ("ml/v2", "http://v2-head:8000", 10),
    ]
    # What the operator writes reads back the same.
    assert Route.model_validate(merged.model_dump(by_alias=True, mode="json")) == merged


@pytest.mark.parametrize(
    ("route", "fragment"),
    [
        ({"backends": [{"name": "ml/v1", "url": "http://a", "weight": 101}]}, "routes.0.backends.0.weight"),
        ({"backends": [{"name": "ml/v1", "url": "http://a", "weight": -1}]}, "routes.0.backends.0.weight"),
        ({"backends": [{"name": "ml/v1", "url": "ftp://a", "weight": 1}]}, "routes.0.backends.0.url"),
        ({"backend": "http://a", "backends": [{"name": "ml/v1", "url": "http://a", "weight": 1}]}, "exactly one"),
        ({}, "exactly one of backend"),
        (
            {
                "backends": [
                    {"name": "ml/v1", "url": "http://a", "weight": 1},
                    {"name": "ml/v1", "url": "http://b", "weight": 1},
                ]
            },
            "duplicate names",
        ),
    ],
)
def test_bad_split_routes_are_refused_with_the_field(route: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        parse_config({"routes": [{"name": "s", "models": ["qwen"], **route}]})


def test_compiled_split_route_picks_by_weight() -> None:
    split = split_route([(_route("v1", "http://v1:8000"), 90), (_route("v2", "http://v2:8000"), 10)])
    compiled = compile_config(GatewayConfig(routes=[split]), fetch=_no_fetch)
    cr = compiled.by_model["qwen"]
    assert [t.name for t in cr.targets] == ["ml/v1", "ml/v2"]
    assert cr.targets[1].urls["/v1/chat/completions"] == "http://v2:8000/v1/chat/completions"
    picked = Counter(t.name for _ in range(2000) if (t := cr.pick("")) is not None)
    assert 0.85 <= picked["ml/v1"] / 2000 <= 0.95


async def _no_fetch(url: str) -> Any:  # pragma: no cover - no route here verifies JWTs
    raise AssertionError(url)


# ---------------------------------------------------------------- end to end: gateway + two upstreams

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tagged(tag: str) -> Upstream:
    """A dev upstream that names itself in an `x-upstream` response header."""

    def add(app: web.Application) -> None:
        @web.middleware
        async def tag_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
            resp = await handler(request)
            resp.headers["x-upstream"] = tag
            return resp

        app.middlewares.append(tag_answers)

    up = Upstream(add)
    up.start()
    return up


def _split(a: Upstream, b: Upstream, wa: int, wb: int, sticky: bool = False) -> dict[str, Any]:
    return {
        "name": "chat-v1",
        "namespace": "ml",
        "models": ["chat"],
        "backends": [
            {"name": "ml/chat-v1", "url": a.url, "weight": wa},
            {"name": "ml/chat-v2", "url": b.url, "weight": wb},
        ],
        "sticky": sticky,
    }


@pytest.fixture(scope="module")
def two_upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Upstream, Path]]:
    a, b = _tagged("v1"), _tagged("v2")
    try:
        yield a, b, tmp_path_factory.mktemp("split")
    finally:
        a.stop()
        b.stop()


def _gateway(config: Path, keys: KeyFile | None = None, audit: Path | None = None) -> GatewayThread:
    thread = GatewayThread(
        Settings(
            config_path=str(config),
            keys_path=str(keys.path) if keys else None,
            audit=audit is not None,
            audit_path=str(audit),
            reload_interval=0.1,
        )
    )
    thread.start()
    return thread


def _ask(client: httpx.Client, url: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return client.post(url + "/v1/chat/completions", json=body, headers=headers)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_gateway_splits_requests_between_two_upstreams_by_weight(
    two_upstreams: tuple[Upstream, Upstream, Path],
) -> None:
    a, b, d = two_upstreams
    config = write_yaml(d / "weights.yaml", {"routes": [dict(_split(a, b, 75, 25), public=True)]})
    audit = d / "audit.jsonl"
    gw = _gateway(config, audit=audit)
    try:
        with httpx.Client(timeout=10) as client:
            origins = Counter()
            for _ in range(400):
                resp = _ask(client, gw.url)
                assert resp.status_code == 200, resp.text
                assert resp.json()["model"] == "chat"
                origins[resp.headers["x-upstream"]] += 1
            # 400 draws at 25%: the standard deviation is 2.2 points; allow 4 of them.
            assert abs(origins["v2"] / 400 - 0.25) <= 0.09, origins
            assert origins["v1"] + origins["v2"] == 400
            metrics = client.get(gw.metrics_url).text
            counted = {
                backend: float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("rayleigh_gateway_backend_requests_total{")
                for backend in ("ml/chat-v1", "ml/chat-v2")
                if f'backend="{backend}"' in line and 'route="ml/chat-v1"' in line
            }
            assert counted == {"ml/chat-v1": origins["v1"], "ml/chat-v2": origins["v2"]}, counted
            # The audit line names the backend each request went to.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(audit.read_text().splitlines()) < 400:
                time.sleep(0.05)
            audited = Counter(json.loads(line)["backend"] for line in audit.read_text().splitlines())
            assert audited == {"ml/chat-v1": origins["v1"], "ml/chat-v2": origins["v2"]}, audited
            # Weight 0 on both: no backend takes traffic, a clear 503.
            write_yaml(config, {"routes": [dict(_split(a, b, 0, 0), public=True)]})
            gw.gateway.check_reload()
            resp = _ask(client, gw.url)
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "no_traffic_weight"
            # 100/0: a warm version with no traffic gets none.
            write_yaml(config, {"routes": [dict(_split(a, b, 0, 100), public=True)]})
            gw.gateway.check_reload()
            assert {_ask(client, gw.url).headers["x-upstream"] for _ in range(30)} == {"v2"}
    finally:
        gw.stop()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_sticky_split_keeps_each_api_key_on_one_upstream(two_upstreams: tuple[Upstream, Upstream, Path]) -> None:
    a, b, d = two_upstreams
    keys = KeyFile(d / "keys.yaml")
    callers = [keys.create(owner=f"caller-{i}") for i in range(40)]
    config = write_yaml(d / "sticky.yaml", {"routes": [_split(a, b, 50, 50, sticky=True)]})
    gw = _gateway(config, keys)
    try:
        with httpx.Client(timeout=10) as client:
            seen: dict[str, set[str]] = {}
            for _ in range(3):
                for key in callers:
                    resp = _ask(client, gw.url, key)
                    assert resp.status_code == 200, resp.text
                    seen.setdefault(key, set()).add(resp.headers["x-upstream"])
            assert all(len(origins) == 1 for origins in seen.values()), seen
            first = {key: next(iter(origins)) for key, origins in seen.items()}
            assert set(first.values()) == {"v1", "v2"}  # 40 callers at 50/50 land on both
            # Shift to 70/30: callers of v1 stay put; only some of v2's move, and only to v1.
            write_yaml(config, {"routes": [_split(a, b, 70, 30, sticky=True)]})
            gw.gateway.check_reload()
            after = {key: _ask(client, gw.url, key).headers["x-upstream"] for key in callers}
            for key in callers:
                if first[key] == "v1":
                    assert after[key] == "v1"
            assert sum(1 for k in callers if after[k] != first[k]) <= len(callers) // 2
    finally:
        gw.stop()

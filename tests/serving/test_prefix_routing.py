"""Prefix-aware routing end to end: two replicas of the tiny model on the shared Ray head (an extra
Serve application next to `serving_stack`'s), the real gateway in front. A conversation that keeps
its long system prompt and grows its history must land on one replica every turn (the gateway's
affinity key, which the shared stack's HAProxy ingress hashes: spec.routing's default), and the
per-replica prefix-cache metrics must show it. How HAProxy is told is checked without engines in
tests/serving/test_haproxy_routing.py."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rayleigh_gateway.app import Settings
from tests.gateway.harness import GatewayThread, KeyFile, write_yaml
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.serving_stack import ServingStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

APP = "prefix-routing"
PREFIX = "/prefix-routing"
SYSTEM = "You are the assistant of a small bakery. Answer questions about bread, opening hours and orders. " * 3
SERIES = re.compile(r"^(ray_vllm_prefix_cache_(?:hits|queries)_total|ray_vllm_request_success_total)\{([^}]*)\} (\S+)$")


def _put(stack: ServingStack, apps: list[dict[str, Any]]) -> None:
    port = int(stack.base_url.rsplit(":", 1)[1])
    body = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": apps}
    req = urllib.request.Request(
        f"{stack.dashboard_url}/api/serve/applications/",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=60).close()


def _app(stack: ServingStack) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.dashboard_url}/api/serve/applications/", timeout=10) as r:
        apps = json.loads(r.read()).get("applications") or {}
    return dict(apps.get(APP) or {})


def _app_status(stack: ServingStack) -> str:
    return str(_app(stack).get("status", "ABSENT"))


def replica_ids(stack: ServingStack) -> set[str]:
    """The unique ids of this app's running replicas (vLLM's `ReplicaId` metric label)."""
    deployments = _app(stack).get("deployments") or {}
    return {
        str(r["replica_id"]).rsplit("#", 1)[-1]
        for d in deployments.values()
        for r in d.get("replicas", [])
        if r.get("state") == "RUNNING"
    }


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def per_replica(stack: ServingStack, ids: set[str]) -> dict[str, dict[str, float]]:
    """{metric: {ReplicaId: value}} of the engine counters of the replicas `ids`."""
    with urllib.request.urlopen(stack.metrics_url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        rid = re.search(r'ReplicaId="([^"]*)"', m.group(2)) if m else None
        if m and rid and rid.group(1) in ids:
            out.setdefault(m.group(1), {})[rid.group(1)] = out.get(m.group(1), {}).get(rid.group(1), 0.0) + float(
                m.group(3)
            )
    return out


@pytest.fixture(scope="module")
def two_replicas(
    serving_stack: ServingStack, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway's URL and an API key, in front of two replicas with prefix-aware routing."""
    from rayleigh_api import ModelDeployment
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_serving.config import build_serve_config

    doc = load_model_deployment(EXAMPLES_DIR / "tiny.yaml").model_dump(by_alias=True, exclude_none=True)
    doc["metadata"]["name"] = APP
    doc["spec"]["replicas"] = 2
    md = ModelDeployment.model_validate(doc)
    assert md.spec.routing.strategy == "prefix-aware"  # the default
    app = build_serve_config(md, local_base=REPO_ROOT, app_name=APP, route_prefix=PREFIX, hf_hub_offline=True)
    base_apps = serving_stack.serve_config["applications"]
    d: Path = tmp_path_factory.mktemp("prefix")
    routes = write_yaml(
        d / "routes.yaml",
        {
            "routes": [
                {
                    "name": APP,
                    "namespace": "default",
                    "backend": serving_stack.base_url + PREFIX,
                    "models": [serving_stack.model],
                    "rateLimits": {"requestsPerMinute": 6000, "tokensPerMinute": 10_000_000},
                }
            ]
        },
    )
    keys = KeyFile(d / "keys.yaml")
    key = keys.create(owner="prefix")
    gateway = GatewayThread(Settings(config_path=str(routes), keys_path=str(keys.path), redis_url=redis_server.url))
    _put(serving_stack, [*base_apps, *app["applications"]])
    try:
        wait_for(f"{APP} RUNNING", lambda: _app_status(serving_stack) == "RUNNING", 900)
        gateway.start()
        try:
            yield f"{gateway.url}|{key}"
        finally:
            gateway.stop()
    finally:
        _put(serving_stack, base_apps)
        wait_for(f"{APP} removed", lambda: _app_status(serving_stack) == "ABSENT", 120)


def test_long_prefix_conversation_stays_on_one_replica_and_hits_its_cache(
    two_replicas: str, serving_stack: ServingStack
) -> None:
    url, key = two_replicas.split("|")
    ids = replica_ids(serving_stack)
    assert len(ids) == 2, ids
    before = per_replica(serving_stack, ids)
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    turns = 4
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as client:
        for turn in range(turns):
            messages.append({"role": "user", "content": f"Question {turn}: do you bake rye on day {turn}?"})
            r = client.post(
                "/v1/chat/completions",
                json={"model": serving_stack.model, "messages": messages, "max_tokens": 4, "temperature": 0},
            )
            assert r.status_code == 200, r.text
            messages.append({"role": "assistant", "content": r.json()["choices"][0]["message"]["content"] or "ok"})

    def served() -> dict[str, float]:
        now = per_replica(serving_stack, ids).get("ray_vllm_request_success_total", {})
        old = before.get("ray_vllm_request_success_total", {})
        return {rid: v - old.get(rid, 0.0) for rid, v in now.items() if v - old.get(rid, 0.0) > 0}

    wait_for("the engines' request counters", lambda: sum(served().values()) >= turns, 60)
    assert len(served()) == 1, f"turns spread over replicas: {served()}"
    (replica,) = served()

    def hits() -> float:
        now = per_replica(serving_stack, ids).get("ray_vllm_prefix_cache_hits_total", {})
        return now.get(replica, 0.0) - before.get("ray_vllm_prefix_cache_hits_total", {}).get(replica, 0.0)

    wait_for("prefix-cache hits on the conversation's replica", lambda: hits() > 0, 60)

"""Sentinel: the gateway asks a sentinel for the master, and keeps limiting, with the same
shared buckets, after a failover (SENTINEL FAILOVER promotes the replica; the old master is
turned into a replica). Real redis-server and redis-sentinel on loopback ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rayleigh_gateway.redis_conn import RedisOptions, RespClient
from tests.gateway.harness import KeyFile, Upstream, write_yaml
from tests.gateway.redis_servers import GatewayCLI, RedisProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

MASTER = "rayleigh-master"


def cmd(port: int, *args: str | int) -> Any:
    async def go() -> Any:
        client = RespClient(RedisOptions.parse(f"redis://127.0.0.1:{port}/0"), connect_timeout=2, timeout=5)
        try:
            return await client.execute(*args)
        finally:
            client.close()

    return asyncio.run(go())


def role(port: int) -> str:
    return bytes(cmd(port, "ROLE")[0]).decode()


@dataclass
class HA:
    a: RedisProc  # the first master
    b: RedisProc  # its replica
    sentinel: RedisProc

    def master_port(self) -> int:
        return int(cmd(self.sentinel.port, "SENTINEL", "get-master-addr-by-name", MASTER)[1])


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HA]:
    d = tmp_path_factory.mktemp("sentinel")
    a = RedisProc(d, "a", []).start()
    b = RedisProc(d, "b", [])
    b.conf.write_text(b.conf.read_text() + f"replicaof 127.0.0.1 {a.port}\n")
    b.start()
    procs = [a, b]
    try:
        wait_until(lambda: b"master_link_status:up" in cmd(b.port, "INFO", "replication"), 20, "replica in sync")
        sentinel = RedisProc(
            d,
            "sentinel",
            [
                f"sentinel monitor {MASTER} 127.0.0.1 {a.port} 1",
                f"sentinel down-after-milliseconds {MASTER} 1000",
                f"sentinel failover-timeout {MASTER} 10000",
            ],
            sentinel=True,
        ).start()
        procs.append(sentinel)

        def replica_known() -> bool:
            replicas = cmd(sentinel.port, "SENTINEL", "replicas", MASTER)
            return any(
                b"slave" in r[r.index(b"flags") + 1] and b"_down" not in r[r.index(b"flags") + 1] for r in replicas
            )

        wait_until(replica_known, 30, "sentinel knows the replica")
        yield HA(a, b, sentinel)
    finally:
        for p in reversed(procs):
            p.stop()


def chat(url: str, key: str) -> int:
    body = {"model": "ha-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code


def test_gateway_follows_a_sentinel_failover_and_keeps_limiting(ha: HA, gw_upstream: Upstream, tmp_path: Path) -> None:
    # The route's own limit is large (its bucket is leased into local shares); the key's 6 per
    # minute is the one that binds (too small to lease: taken from Redis per request).
    config = write_yaml(
        tmp_path / "routes.yaml",
        {
            "routes": [
                {
                    "name": "ha",
                    "backend": gw_upstream.url,
                    "models": ["ha-model"],
                    "rateLimits": {"requestsPerMinute": 6400},
                }
            ]
        },
    )
    keyfile = KeyFile(tmp_path / "keys.yaml")
    key = keyfile.create(owner="ha", requests_per_minute=6)
    bucket = f"rayleigh:rl:k:{key.split('_')[1]}:r"
    sentinels = f"127.0.0.1:{ha.sentinel.port}"
    flags = ["--redis-sentinel", sentinels, "--redis-sentinel-master", MASTER]
    gateway = GatewayCLI(config, keyfile.path, tmp_path / "gw.log", flags).wait_ready()
    try:
        started = time.monotonic()
        before = [chat(gateway.url, key) for _ in range(3)]
        assert before == [200, 200, 200]
        first, second = (ha.a, ha.b) if ha.master_port() == ha.a.port else (ha.b, ha.a)
        # The bucket reached the replica (replication is asynchronous).
        wait_until(lambda: float(cmd(second.port, "HGET", bucket, "l")) < 4, 10, "bucket replicated")

        def failover() -> bool:
            return cmd(ha.sentinel.port, "SENTINEL", "FAILOVER", MASTER) == "OK"

        wait_until(failover, 30, "SENTINEL FAILOVER accepted", every=0.5)
        wait_until(lambda: ha.master_port() == second.port and role(second.port) == "master", 30, "promotion")
        wait_until(lambda: role(first.port) == "slave", 30, "old master turned into a replica")

        after: list[int] = []
        for _ in range(8):
            after.append(chat(gateway.url, key))
            if after[-1] == 429:
                break
        elapsed = time.monotonic() - started
        admitted = before.count(200) + after.count(200)
        assert after[-1] == 429, after  # still limited after the failover ...
        assert admitted <= 6 + 6 * elapsed / 60.0  # ... by the same bucket, now on the new master
        assert float(cmd(second.port, "HGET", bucket, "l")) < 1
        assert "falling back" not in gateway.output()
        assert "redis unreachable" not in gateway.output(), gateway.output()[-2000:]
    finally:
        gateway.stop()

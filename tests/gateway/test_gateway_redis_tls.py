"""Real-world Redis: TLS with a CA bundle, mutual TLS, a wrong CA refused, an ACL user with a
password from a file (never logged), and a Redis Cluster refused at start. Real redis-server
processes on loopback ports; certificates made by the test."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from rayleigh_gateway.cli import keys as keys_cli
from rayleigh_gateway.redis_conn import RedisConfigError, RedisOptions, RespClient
from rayleigh_gateway.resp import RedisClusterError, RedisConnectionError, RedisError, parse_reply
from tests.gateway.harness import KeyFile, Upstream, write_yaml
from tests.gateway.redis_servers import (
    GATEWAY_ACL,
    GatewayCLI,
    RedisProc,
    TLSFiles,
    make_tls_files,
    tls_lines,
    wait_until,
)
from tests.plugins.common import REPO_ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORD = "pw-6f1c2e0b9a7d4e3f"  # a test password that must never appear in logs


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def ping(options: RedisOptions) -> Any:
    client = RespClient(options, connect_timeout=3, timeout=3)
    try:
        return await client.execute("PING")
    finally:
        client.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[RedisProc]:
    server = RedisProc(tmp_path_factory.mktemp("redis-tls"), "tls", tls_lines(free_port(), tls, "no")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory, tls: TLSFiles) -> Iterator[RedisProc]:
    server = RedisProc(tmp_path_factory.mktemp("redis-mtls"), "mtls", tls_lines(free_port(), tls, "yes")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProc]:
    lines = ["user default off", f"user rayleigh on >{PASSWORD} {GATEWAY_ACL}"]
    server = RedisProc(tmp_path_factory.mktemp("redis-acl"), "acl", lines).start()
    yield server
    server.stop()


# ---------------------------------------------------------------- TLS


def test_tls_with_the_ca_bundle_connects(tls_redis: RedisProc, tls: TLSFiles) -> None:
    options = RedisOptions.parse(f"rediss://127.0.0.1:{tls_redis.port}/0", ca_file=str(tls.ca))
    assert run(ping(options)) == "PONG"


def test_tls_with_a_wrong_ca_is_refused(tls_redis: RedisProc, tls: TLSFiles) -> None:
    options = RedisOptions.parse(f"rediss://127.0.0.1:{tls_redis.port}/0", ca_file=str(tls.other_ca))
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        run(ping(options))


def test_plain_redis_url_to_a_tls_port_fails_and_ca_without_tls_is_a_config_error(
    tls_redis: RedisProc, tls: TLSFiles
) -> None:
    with pytest.raises((RedisError, TimeoutError)):
        run(ping(RedisOptions.parse(f"redis://127.0.0.1:{tls_redis.port}/0")))
    with pytest.raises(RedisConfigError, match="rediss://"):
        RedisOptions.parse(f"redis://127.0.0.1:{tls_redis.port}/0", ca_file=str(tls.ca))


def test_mutual_tls_needs_the_client_certificate(mtls_redis: RedisProc, tls: TLSFiles) -> None:
    url = f"rediss://127.0.0.1:{mtls_redis.port}/0"
    without = RedisOptions.parse(url, ca_file=str(tls.ca))
    with pytest.raises((RedisError, TimeoutError)):
        run(ping(without))
    mutual = RedisOptions.parse(url, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key))
    assert run(ping(mutual)) == "PONG"
    # redis-py's query parameters work as well.
    query = f"{url}?ssl_ca_certs={tls.ca}&ssl_certfile={tls.client_cert}&ssl_keyfile={tls.client_key}"
    assert run(ping(RedisOptions.parse(query))) == "PONG"


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream) -> tuple[Path, KeyFile]:
    d = tmp_path_factory.mktemp("redis-real-routes")
    config = write_yaml(
        d / "routes.yaml",
        {"routes": [{"name": "tls", "backend": gw_upstream.url, "models": ["tls-model"]}]},
    )
    return config, KeyFile(d / "keys.yaml")


def chat(url: str, key: str) -> int:
    body = {"model": "tls-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}).status_code


def bucket_level(options: RedisOptions, key: str) -> Any:
    async def read() -> Any:
        client = RespClient(options, connect_timeout=3, timeout=3)
        try:
            return await client.execute("HGET", key, "l")
        finally:
            client.close()

    return run(read())


def test_gateway_limits_through_mutual_tls(
    mtls_redis: RedisProc, tls: TLSFiles, routes: tuple[Path, KeyFile], tmp_path: Path
) -> None:
    config, keyfile = routes
    key = keyfile.create(owner="tls", requests_per_minute=3)
    url = f"rediss://127.0.0.1:{mtls_redis.port}/0"
    flags = ["--redis-url", url, "--redis-ca", str(tls.ca), "--redis-cert", str(tls.client_cert)]
    flags += ["--redis-key", str(tls.client_key)]
    gateway = GatewayCLI(config, keyfile.path, tmp_path / "gw.log", flags).wait_ready()
    try:
        assert [chat(gateway.url, key) for _ in range(4)] == [200, 200, 200, 429]
        options = RedisOptions.parse(
            url, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key)
        )
        # The bucket lives in the TLS Redis (not in the in-memory fallback).
        assert float(bucket_level(options, f"rayleigh:rl:k:{key.split('_')[1]}:r")) < 1
        assert "redis unreachable" not in gateway.output()
    finally:
        gateway.stop()


# ---------------------------------------------------------------- ACL user, password from a file


def test_acl_user_with_password_file(acl_redis: RedisProc, routes: tuple[Path, KeyFile], tmp_path: Path) -> None:
    config, keyfile = routes
    key = keyfile.create(owner="acl", requests_per_minute=2)
    key_id = key.split("_")[1]
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")  # as a mounted Secret may end
    url = f"redis://127.0.0.1:{acl_redis.port}/0"
    flags = ["--redis-url", url, "--redis-username", "rayleigh", "--redis-password-file", str(secret)]
    gateway = GatewayCLI(config, keyfile.path, tmp_path / "gw.log", flags).wait_ready()
    try:
        assert [chat(gateway.url, key) for _ in range(3)] == [200, 200, 429]
        options = RedisOptions.parse(url, username="rayleigh", password_file=str(secret))
        assert float(bucket_level(options, f"rayleigh:rl:k:{key_id}:r")) < 1
        # The usage counters were written with the same user, and `keys usage` reads them with it.
        rows: list[dict[str, Any]] = []

        def counted() -> bool:
            nonlocal rows
            result = CliRunner().invoke(keys_cli, ["usage", *flags, "--key-id", key_id, "--period", "hour", "--json"])
            assert result.exit_code == 0, result.output
            rows = json.loads(result.output)
            return bool(rows) and rows[0]["requests"] == 2

        wait_until(counted, 10, "usage counted")
        assert rows[0]["model"] == "tls-model"
    finally:
        gateway.stop()
    assert "redis unreachable" not in gateway.output()
    assert PASSWORD not in gateway.output()


def test_wrong_password_is_a_clear_error_without_the_password(acl_redis: RedisProc, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("not-the-password")
    options = RedisOptions.parse(
        f"redis://127.0.0.1:{acl_redis.port}/0", username="rayleigh", password_file=str(secret)
    )
    with pytest.raises(RedisConnectionError, match="refused the credentials of user 'rayleigh'") as info:
        run(ping(options))
    assert "not-the-password" not in str(info.value)
    in_url = RedisOptions.parse(f"redis://rayleigh:{PASSWORD}@127.0.0.1:{acl_redis.port}/0")
    assert run(ping(in_url)) == "PONG"
    assert PASSWORD not in repr(in_url) and PASSWORD not in in_url.describe()
    # The CLI's error names the server and user, never the password.
    result = CliRunner().invoke(
        keys_cli,
        ["usage", "--redis-url", f"redis://rayleigh:wrong-{PASSWORD}@127.0.0.1:{acl_redis.port}/0"],
    )
    assert result.exit_code != 0
    assert "refused the credentials" in result.output and PASSWORD not in result.output


# ---------------------------------------------------------------- Redis Cluster


def test_redis_cluster_is_refused_at_start(tmp_path: Path, routes: tuple[Path, KeyFile]) -> None:
    port = next(p for p in (free_port() for _ in range(1000)) if p < 55000 and _free(p + 10000))  # + its bus port
    lines = [f"port {port}", "cluster-enabled yes", f"cluster-config-file {tmp_path / 'nodes.conf'}"]
    node = RedisProc(tmp_path, "cluster", lines).start()
    try:
        with pytest.raises(RedisClusterError, match="Redis Cluster is not supported"):
            run(ping(RedisOptions.parse(f"redis://127.0.0.1:{node.port}/0")))
        config = routes[0]
        cmd = [sys.executable, "-m", "rayleigh_gateway", "gateway", "--config", str(config), "--port", str(free_port())]
        cmd += ["--host", "127.0.0.1", "--redis-url", f"redis://127.0.0.1:{node.port}/0"]
        env = {"PYTHONPATH": ":".join(str(REPO_ROOT / d) for d in (".", "api", "gateway", "serving", "operator"))}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        assert done.returncode != 0
        assert "Redis Cluster is not supported" in done.stderr
    finally:
        node.stop()


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_moved_reply_is_a_cluster_error() -> None:
    value, _ = parse_reply(b"-MOVED 3999 127.0.0.1:6381\r\n", 0)
    assert isinstance(value, RedisClusterError)
    assert "Redis Cluster is not supported" in str(value)


def test_gateway_refuses_incomplete_redis_flags(routes: tuple[Path, KeyFile]) -> None:
    env = {**os.environ, "PYTHONPATH": ":".join(str(REPO_ROOT / d) for d in (".", "api", "gateway"))}
    base = [sys.executable, "-m", "rayleigh_gateway", "gateway", "--config", str(routes[0]), "--port", "1"]
    for flags, message in (
        (["--redis-sentinel", "127.0.0.1:1"], "needs --redis-sentinel-master"),
        (["--redis-url", "redis://127.0.0.1:1/0", "--redis-ca", str(routes[0])], "use a rediss:// URL"),
        (["--redis-url", "rediss://127.0.0.1:1/0", "--redis-password-file", "/nonexistent"], "does not exist"),
    ):
        done = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode != 0 and message in done.stderr, done.stderr

"""The operator's API client follows a rotated service-account token without a restart.

Bound service-account tokens are rotated by the kubelet (the projected file is replaced about every
hour) and the old token then expires. These tests run the real KubeClient against a small aiohttp
server on loopback that accepts exactly one token at a time, as an API server does once the old token
has expired; the end-to-end check with kopf and the emulated API server is in test_rbac_enforced.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from rayleigh_operator.kube import CONFIGMAPS, DEPLOYMENTS, Credentials, KubeClient, TokenSource, load_credentials

pytestmark = pytest.mark.timeout(60)


class TokenServer:
    """Answers 401 unless the bearer token is `accepted`; records the tokens it saw."""

    def __init__(self) -> None:
        self.accepted: set[str] = set()
        self.seen: list[str] = []

    async def handle(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        if token not in self.accepted:
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "status": "Failure",
                    "reason": "Unauthorized",
                    "message": "Unauthorized",
                    "code": 401,
                },
                status=401,
            )
        if request.query.get("watch"):
            response = aiohttp.web.StreamResponse()
            await response.prepare(request)
            event = {"type": "ADDED", "object": {"metadata": {"name": "cm"}}}
            await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
            return response
        return aiohttp.web.json_response({"kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}})


async def _serve(server: TokenServer) -> AsyncIterator[str]:
    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _rotate(path: Path, token: str) -> None:
    """Replace the file atomically, as the kubelet swaps a projected volume's data."""
    tmp = path.with_suffix(".new")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


def test_token_source_rereads_a_replaced_file_and_keeps_the_last_token_when_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    source = TokenSource(path=path, check_seconds=0)
    assert source.current() == "first"
    _rotate(path, "second")
    assert source.current() == "second"
    path.unlink()
    assert source.current() == "second" and source.refresh() == "second"
    assert TokenSource("static").current() == "static"


def test_kubeconfig_token_file_is_a_live_source(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {tokenFile: token}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u, namespace: ns}}]\ncurrent-context: x\n"
    )
    credentials = load_credentials(str(kubeconfig))
    assert credentials.token == "first" and credentials.token_file == str(token)
    _rotate(token, "second")
    # What kopf's login handler (run.py) reads when it re-authenticates after a 401.
    assert credentials.token == "second"
    assert "second" not in repr(credentials)


async def _client_after_rotation(tmp_path: Path, call: Any, **source: float) -> tuple[TokenServer, Any]:
    server = TokenServer()
    server.accepted = {"old"}
    path = tmp_path / "token"
    path.write_text("old")
    async for url in _serve(server):
        client = KubeClient(Credentials(server=url, tokens=TokenSource(path=path, **source)))
        try:
            assert (await client.get(CONFIGMAPS, "default", "cm")) is not None
            _rotate(path, "new")
            server.accepted = {"new"}  # the old token has expired
            result = await call(client)
        finally:
            await client.close()
    return server, result


def test_a_401_rereads_the_token_file_and_retries_once(tmp_path: Path) -> None:
    async def get(client: KubeClient) -> Any:
        return await client.get(CONFIGMAPS, "default", "cm")

    # No periodic check can see the new file before the request: only the 401 path can recover.
    server, result = asyncio.run(_client_after_rotation(tmp_path, get, check_seconds=3600, max_age_seconds=3600))
    assert result is not None
    assert server.seen == ["old", "old", "new"]


def test_a_watch_answered_401_rereads_the_token_file(tmp_path: Path) -> None:
    async def watch(client: KubeClient) -> list[dict[str, Any]]:
        return [event async for event in client.watch(DEPLOYMENTS, "default")]

    server, events = asyncio.run(_client_after_rotation(tmp_path, watch, check_seconds=3600, max_age_seconds=3600))
    assert [e["type"] for e in events] == ["ADDED"]
    assert server.seen[-2:] == ["old", "new"]


def test_a_changed_file_is_used_without_waiting_for_a_401(tmp_path: Path) -> None:
    async def get(client: KubeClient) -> Any:
        return await client.get(CONFIGMAPS, "default", "cm")

    server, result = asyncio.run(_client_after_rotation(tmp_path, get, check_seconds=0))
    assert result is not None
    assert server.seen == ["old", "new"]


def test_a_401_with_an_unchanged_token_is_an_error_not_a_loop(tmp_path: Path) -> None:
    async def run() -> TokenServer:
        server = TokenServer()
        path = tmp_path / "token"
        path.write_text("revoked")
        async for url in _serve(server):
            client = KubeClient(Credentials(server=url, token_file=str(path)))
            try:
                with pytest.raises(Exception, match="401"):
                    await client.get(CONFIGMAPS, "default", "cm")
            finally:
                await client.close()
        return server

    assert asyncio.run(run()).seen == ["revoked"]

"""The JWKS fetch of JWT routes, fenced (a ModelDeployment's author sets the URL the shared gateway
fetches): only hosts in `jwksAllowedHosts`, no redirects followed, a bounded read, a generic error
to callers (the detail only in the gateway's log), and while the issuer hangs, callers whose key id
is cached keep being answered (one fetch in flight, backoff after failures).

A real gateway (in a thread) in front of a local JWKS server that can redirect, hang, or send 10 MB.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from rayleigh_gateway.app import Settings, admit_jwks_hosts
from rayleigh_gateway.jwt_auth import jwks_host_allowed
from rayleigh_gateway.routes import load_config, parse_config
from tests.gateway.conftest import AUDIENCE, ISSUER, make_jwt
from tests.gateway.harness import AiohttpThread, GatewayThread, Upstream, b64url, rsa_keypair, write_yaml
from tests.plugins.common import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

KID = "idp-key-1"
BIG = 10 * 1024 * 1024
GENERIC = "could not verify the token"


@dataclass
class JWKSServer:
    """The identity provider's JWKS endpoints: /jwks (ok, or hanging while `hang` is set),
    /redirect (302 to /target), /big (a valid JWKS padded to 10 MB, chunked)."""

    jwk: dict[str, Any]
    hang: threading.Event = field(default_factory=threading.Event)
    hits: dict[str, int] = field(default_factory=lambda: {"jwks": 0, "target": 0, "big": 0})
    hanging_now: int = 0
    hanging_max: int = 0
    thread: AiohttpThread | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jwks", self.jwks)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/target", self.target)
        app.router.add_get("/big", self.big)
        return app

    async def jwks(self, request: web.Request) -> web.Response:
        self.hits["jwks"] += 1
        if self.hang.is_set():
            # Hang until released or the gateway hangs up (bounded): counts fetches in flight.
            self.hanging_now += 1
            self.hanging_max = max(self.hanging_max, self.hanging_now)
            try:
                for _ in range(1200):
                    transport = request.transport
                    if not self.hang.is_set() or transport is None or transport.is_closing():
                        break
                    await asyncio.sleep(0.05)
            finally:
                self.hanging_now -= 1
        return web.json_response({"keys": [self.jwk]})

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/target")

    async def target(self, request: web.Request) -> web.Response:
        self.hits["target"] += 1
        return web.json_response({"keys": [self.jwk]})

    async def big(self, request: web.Request) -> web.StreamResponse:
        self.hits["big"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        head = b'{"keys": [' + orjson.dumps(self.jwk) + b'], "pad": "'
        await resp.write(head)
        chunk = b"x" * 65536
        try:
            for _ in range(BIG // len(chunk)):
                await resp.write(chunk)
            await resp.write(b'"}')
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the gateway hung up: what a bounded read does
        return resp

    def unhang(self) -> None:
        self.hang.clear()


@dataclass
class Env:
    gw: GatewayThread
    idp: JWKSServer
    private: Any
    closed_port: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream) -> Iterator[Env]:
    private, _ = rsa_keypair()
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "kid": KID,
        "use": "sig",
        "alg": "RS256",
        "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
    }
    idp = JWKSServer(jwk)
    idp.thread = AiohttpThread(idp.app())
    idp.thread.start()
    base = idp.thread.url
    closed_port = free_port()  # nothing listens there

    def route(name: str, url: str, **jwt_extra: Any) -> dict[str, Any]:
        jwt = {"issuer": ISSUER, "audience": AUDIENCE, "jwksUrl": url, "algorithms": ["RS256"], **jwt_extra}
        return {
            "name": name,
            "namespace": "idp",
            "backend": gw_upstream.url,
            "models": [f"{name}-model"],
            "auth": {"apiKeys": False, "jwt": jwt},
        }

    config = {
        "jwksAllowedHosts": [f"127.0.0.1:{idp.thread.port}", f"127.0.0.1:{closed_port}"],
        "routes": [
            route("ok", base + "/jwks"),
            route("hang", base + "/jwks?route=hang", jwksCacheSeconds=0.2),
            route("redirect", base + "/redirect"),
            route("big", base + "/big"),
            route("closed", f"http://127.0.0.1:{closed_port}/jwks"),
            # Same server, but by a host name that is not on the list: refused.
            route("elsewhere", f"http://localhost:{idp.thread.port}/jwks"),
        ],
    }
    d = tmp_path_factory.mktemp("jwks")
    gw = GatewayThread(Settings(config_path=str(write_yaml(d / "routes.yaml", config)), audit=False))
    gw.start()
    yield Env(gw, idp, private, closed_port)
    idp.unhang()
    gw.stop()
    idp.thread.stop()


HTTP = httpx.Client(timeout=30)


def call(env: Env, model: str, kid: str = KID) -> httpx.Response:
    token = make_jwt(env.private, "RS256", headers={"kid": kid})
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return HTTP.post(env.gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})


def assert_generic(resp: httpx.Response, *leaks: str) -> None:
    assert resp.status_code == 401, resp.text
    error = resp.json()["error"]
    assert error["code"] == "jwks_unavailable"
    assert GENERIC in error["message"]
    for leak in leaks:
        assert leak not in resp.text


def test_token_verifies_against_an_allowed_jwks(env: Env) -> None:
    assert call(env, "ok-model").status_code == 200


def test_route_whose_jwks_host_is_not_allowed_is_refused_with_a_log_line(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    resp = call(env, "elsewhere-model")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert call(env, "ok-model").status_code == 200  # the other routes are served
    # The log line names the route and the setting (the gateway logged it at start; again here).
    caplog.set_level(logging.WARNING, logger="rayleigh.gateway")
    kept = admit_jwks_hosts(load_config(env.gw.gateway.settings.config_path))
    assert "elsewhere" not in {r.name for r in kept.routes}
    assert any(
        "idp/elsewhere refused" in r.getMessage() and "jwksAllowedHosts" in r.getMessage() for r in caplog.records
    )


def test_empty_allow_list_allows_any_host_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rayleigh.gateway")
    route = {
        "name": "r",
        "backend": "http://127.0.0.1:1",
        "models": ["m"],
        "auth": {"jwt": {"issuer": "i", "audience": "a", "jwksUrl": "https://anywhere.example/jwks"}},
    }
    config = parse_config({"routes": [route]})
    assert admit_jwks_hosts(config) is config
    assert any("jwksAllowedHosts is empty" in r.getMessage() for r in caplog.records)


def test_redirect_is_not_followed_and_the_caller_sees_no_detail(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rayleigh.gateway")
    assert_generic(call(env, "redirect-model"), "302", "target", str(env.idp.thread.port if env.idp.thread else ""))
    assert env.idp.hits["target"] == 0
    assert any("redirects are not followed" in r.getMessage() for r in caplog.records)


def test_ten_megabyte_jwks_is_not_read(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rayleigh.gateway")
    assert_generic(call(env, "big-model"))
    assert env.idp.hits["big"] == 1
    assert any("above 65536 bytes" in r.getMessage() for r in caplog.records)


def test_unreachable_jwks_gives_no_port_or_status_oracle(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rayleigh.gateway")
    assert_generic(call(env, "closed-model"), str(env.closed_port), "Cannot connect", "refused")
    assert any(f"127.0.0.1:{env.closed_port}" in r.getMessage() for r in caplog.records)
    # Backing off: the next caller is answered at once, without another fetch (same generic answer).
    assert_generic(call(env, "closed-model"), str(env.closed_port))


def test_cached_keys_keep_answering_while_the_issuer_hangs(env: Env) -> None:
    idp = env.idp
    assert call(env, "hang-model").status_code == 200  # keys cached (ttl 0.2 s)
    idp.hang.set()
    try:
        # The cache goes stale; the next callers start one refresh, which hangs at the issuer.
        for _ in range(200):
            assert call(env, "hang-model").status_code == 200
            if idp.hanging_now:
                break
        assert idp.hanging_now == 1
        # While it hangs: many concurrent callers with the cached kid are all answered.
        fetches = idp.hits["jwks"]
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: call(env, "hang-model").status_code, range(40)))
        assert codes == [200] * 40
        assert idp.hits["jwks"] - fetches <= 3  # not one fetch per caller (backoff after each failure)
        assert idp.hanging_max == 1  # one fetch in flight per URL
    finally:
        idp.unhang()


def test_jwks_host_allow_list_matching() -> None:
    allowed = ["login.example.com", "*.idp.example", "auth.example.org:8443"]
    assert jwks_host_allowed("https://login.example.com/.well-known/jwks.json", allowed)
    assert jwks_host_allowed("https://LOGIN.example.com:443/jwks", allowed)
    assert jwks_host_allowed("https://tenant.idp.example/jwks", allowed)
    assert jwks_host_allowed("https://auth.example.org:8443/jwks", allowed)
    assert not jwks_host_allowed("https://auth.example.org/jwks", allowed)  # port 443, not 8443
    assert not jwks_host_allowed("https://idp.example/jwks", allowed)  # the wildcard is for subdomains
    assert not jwks_host_allowed("https://login.example.com.evil.test/jwks", allowed)
    assert not jwks_host_allowed("https://user@evil.test/jwks", allowed)
    assert not jwks_host_allowed("file:///etc/passwd", ["*"])

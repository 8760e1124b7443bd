"""Gateway test fixtures: one real gateway (in a thread) in front of a test upstream, with Redis.

`gw` is shared by the module's tests; each test uses its own keys/models so buckets in Redis
do not interfere. The route config below has one route per policy under test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from rayleigh_gateway.app import Settings
from tests.gateway.harness import (
    GatewayThread,
    KeyFile,
    Upstream,
    b64url,
    ec_keypair,
    rsa_keypair,
    write_yaml,
)
from tests.plugins.common import free_port

ISSUER = "https://issuer.test"
AUDIENCE = "rayleigh"
HMAC_SECRET = "s3cret-shared-hmac-key-for-tests-0123456789"


@dataclass
class JWTKeys:
    rsa_private: Any
    rsa_public_pem: str
    ec_private: Any
    ec_public_pem: str
    jwks_private: Any
    jwks_kid: str


@pytest.fixture(scope="session")
def jwt_keys() -> JWTKeys:
    rsa_priv, rsa_pem = rsa_keypair()
    ec_priv, ec_pem = ec_keypair()
    jwks_priv, _ = rsa_keypair()
    return JWTKeys(rsa_priv, rsa_pem, ec_priv, ec_pem, jwks_priv, "kid-1")


@pytest.fixture(scope="session")
def gw_upstream(jwt_keys: JWTKeys) -> Iterator[Upstream]:
    """The test upstream (stands in for a model server) that also serves the issuer's JWKS."""
    public_numbers = jwt_keys.jwks_private.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "kid": jwt_keys.jwks_kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64url(public_numbers.n.to_bytes((public_numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url(public_numbers.e.to_bytes(3, "big")),
    }

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    upstream = Upstream(lambda app: app.router.add_get("/.well-known/jwks.json", jwks))
    upstream.start()
    yield upstream
    upstream.stop()


def route_config(upstream_url: str, jwt_keys: JWTKeys) -> dict[str, Any]:
    dead = f"http://127.0.0.1:{free_port()}"
    jwt_common = {"issuer": ISSUER, "audience": AUDIENCE}

    def route(name: str, models: list[str], **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": "test", "backend": upstream_url, "models": models, **extra}

    return {
        "trustedProxies": ["127.0.0.1/32"],
        "limits": {"maxBodyBytes": 65536, "defaultMaxTokens": 16},
        "routes": [
            route("public", ["pub-model"], public=True),
            route("private", ["priv-model", "priv-lora"]),
            route("other", ["other-model"]),
            route("limited", ["lim-model"], rateLimits={"requestsPerMinute": 3}),
            route("tokens", ["tok-model"], rateLimits={"tokensPerMinute": 300}),
            route("modelcap", ["cap-model"], rateLimits={"modelRequestsPerMinute": 2}),
            route("cidr", ["cidr-model"], allowedCIDRs=["10.0.0.0/8", "2001:db8::/32", "127.0.0.2/32"]),
            route(
                "jwt-hs",
                ["jwt-hs-model"],
                auth={"apiKeys": False, "jwt": {**jwt_common, "hmacSecret": HMAC_SECRET, "algorithms": ["HS256"]}},
            ),
            route(
                "jwt-rs",
                ["jwt-rs-model"],
                auth={"jwt": {**jwt_common, "publicKey": jwt_keys.rsa_public_pem, "algorithms": ["RS256"]}},
            ),
            route(
                "jwt-es",
                ["jwt-es-model"],
                auth={"jwt": {**jwt_common, "publicKey": jwt_keys.ec_public_pem, "algorithms": ["ES256"]}},
            ),
            route(
                "jwt-jwks",
                ["jwks-model"],
                auth={
                    "jwt": {
                        **jwt_common,
                        "jwksUrl": upstream_url + "/.well-known/jwks.json",
                        "algorithms": ["RS256"],
                    }
                },
            ),
            route("fail-open", ["failopen-model"], rateLimits={"requestsPerMinute": 1000, "failMode": "open"}),
            route("fail-closed", ["failclosed-model"], rateLimits={"requestsPerMinute": 1000, "failMode": "closed"}),
            {"name": "dead", "namespace": "test", "backend": dead, "models": ["dead-model"]},
        ],
    }


@dataclass
class GW:
    url: str
    thread: GatewayThread
    keys: KeyFile
    config_path: Path
    config: dict[str, Any]
    upstream: Upstream

    @property
    def metrics_url(self) -> str:
        """The gateway's /metrics, on its own port (not on the API's)."""
        return self.thread.metrics_url

    @property
    def audit_path(self) -> Path:
        return Path(self.thread.gateway.settings.audit_path)

    def reload(self) -> None:
        self.thread.gateway.check_reload()

    def key(self, **kwargs: Any) -> str:
        key = self.keys.create(**kwargs)
        self.reload()
        return key

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="session")
def gw(
    tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream, redis_server: Any, jwt_keys: JWTKeys
) -> Iterator[GW]:
    d = tmp_path_factory.mktemp("gateway")
    config = route_config(gw_upstream.url, jwt_keys)
    config_path = write_yaml(d / "routes.yaml", config)
    keys = KeyFile(d / "keys.yaml")
    thread = GatewayThread(
        Settings(
            config_path=str(config_path),
            keys_path=str(keys.path),
            redis_url=redis_server.url,
            reload_interval=0.5,
            audit_path=str(d / "audit.log"),
        )
    )
    thread.start()
    yield GW(thread.url, thread, keys, config_path, config, gw_upstream)
    thread.stop()


def make_jwt(key: Any, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A signed token; a claim given as None is left out."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)

"""JWT edge cases through the real gateway: expiry, not-before, issuer, audience, `alg: none`,
HS256 signed with the RS public key, ES256, JWKS with key ids."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import pytest

from rayleigh_gateway.routes import JWTConfig
from tests.gateway.conftest import GW, HMAC_SECRET, JWTKeys, make_jwt
from tests.gateway.harness import b64url

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HTTP = httpx.Client(timeout=10)


def call(gw: GW, model: str, token: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return HTTP.post(gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})


def code(resp: httpx.Response) -> str:
    return resp.json()["error"]["code"]  # type: ignore[no-any-return]


def unsigned(header: dict[str, object], payload: dict[str, object], signature: bytes = b"") -> str:
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)])


def claims() -> dict[str, object]:
    now = int(time.time())
    return {"iss": "https://issuer.test", "aud": "rayleigh", "sub": "mallory", "iat": now, "exp": now + 300}


def test_hs256_token_is_accepted(gw: GW) -> None:
    assert call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET)).status_code == 200


def test_expired_token_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, exp=int(time.time()) - 10))
    assert resp.status_code == 401
    assert code(resp) == "jwt_expired"


def test_token_not_yet_valid_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, nbf=int(time.time()) + 120))
    assert resp.status_code == 401
    assert code(resp) == "jwt_not_yet_valid"


def test_wrong_audience_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, aud="someone-else"))
    assert resp.status_code == 401
    assert code(resp) == "jwt_audience"


def test_wrong_issuer_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, iss="https://evil.test"))
    assert resp.status_code == 401
    assert code(resp) == "jwt_issuer"


def test_token_without_expiry_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, exp=None))
    assert resp.status_code == 401
    assert code(resp) == "jwt_missing_claim"


def test_wrong_hmac_secret_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", make_jwt("another-secret-of-sufficient-length-0123456789"))
    assert resp.status_code == 401
    assert code(resp) == "jwt_signature"


def test_alg_none_is_401(gw: GW) -> None:
    for model in ("jwt-hs-model", "jwt-rs-model"):
        resp = call(gw, model, unsigned({"alg": "none", "typ": "JWT"}, claims()))
        assert resp.status_code == 401
        assert code(resp) == "jwt_algorithm"


def test_hs256_signed_with_rs_public_key_is_401(gw: GW, jwt_keys: JWTKeys) -> None:
    """The classic HS/RS confusion: an attacker signs HS256 using the (public) RSA key as secret."""
    header = {"alg": "HS256", "typ": "JWT"}
    payload = claims()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}".encode()
    signature = hmac.new(jwt_keys.rsa_public_pem.encode(), signing_input, hashlib.sha256).digest()
    token = signing_input.decode() + "." + b64url(signature)
    resp = call(gw, "jwt-rs-model", token)
    assert resp.status_code == 401
    assert code(resp) == "jwt_algorithm"


def test_rs256_token_is_accepted(gw: GW, jwt_keys: JWTKeys) -> None:
    assert call(gw, "jwt-rs-model", make_jwt(jwt_keys.rsa_private, "RS256")).status_code == 200


def test_rs256_token_from_another_key_is_401(gw: GW, jwt_keys: JWTKeys) -> None:
    resp = call(gw, "jwt-rs-model", make_jwt(jwt_keys.jwks_private, "RS256"))
    assert resp.status_code == 401
    assert code(resp) == "jwt_signature"


def test_es256_token_is_accepted(gw: GW, jwt_keys: JWTKeys) -> None:
    assert call(gw, "jwt-es-model", make_jwt(jwt_keys.ec_private, "ES256")).status_code == 200


def test_jwks_token_with_known_kid_is_accepted(gw: GW, jwt_keys: JWTKeys) -> None:
    token = make_jwt(jwt_keys.jwks_private, "RS256", headers={"kid": jwt_keys.jwks_kid})
    assert call(gw, "jwks-model", token).status_code == 200


def test_jwks_token_with_unknown_kid_is_401(gw: GW, jwt_keys: JWTKeys) -> None:
    token = make_jwt(jwt_keys.jwks_private, "RS256", headers={"kid": "rotated-away"})
    resp = call(gw, "jwks-model", token)
    assert resp.status_code == 401
    assert code(resp) == "unknown_kid"


def test_api_key_on_jwt_only_route_is_404_as_for_an_unknown_model(gw: GW) -> None:
    resp = call(gw, "jwt-hs-model", gw.key())
    assert resp.status_code == 404  # the key is valid, but may not see this model
    assert code(resp) == "model_not_found"


def test_garbage_bearer_is_401(gw: GW) -> None:
    resp = call(gw, "jwt-rs-model", "not-a-token")
    assert resp.status_code == 401
    assert code(resp) == "jwt_malformed"


def test_jwt_failures_are_counted_by_reason(gw: GW) -> None:
    call(gw, "jwt-hs-model", make_jwt(HMAC_SECRET, exp=int(time.time()) - 10))
    text = HTTP.get(gw.metrics_url).text
    assert 'rayleigh_gateway_auth_failures_total{reason="jwt_expired",route="test/jwt-hs"}' in text


def test_jwt_caller_sees_its_route_in_models(gw: GW) -> None:
    resp = HTTP.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {make_jwt(HMAC_SECRET)}"})
    ids = {m["id"] for m in resp.json()["data"]}
    assert ids == {"jwt-hs-model", "pub-model"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hmacSecret": "x", "algorithms": ["none"]}, "'none' is never accepted"),
        ({"publicKey": "PEM", "algorithms": ["HS256"]}, "HS/RS confusion"),
        ({"hmacSecret": "x", "algorithms": ["RS256"]}, r"only HS\* algorithms"),
        ({"algorithms": ["RS256"]}, "exactly one of jwksUrl, publicKey, hmacSecret"),
    ],
)
def test_unsafe_jwt_config_is_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JWTConfig.model_validate({"issuer": "i", "audience": "a", **config})

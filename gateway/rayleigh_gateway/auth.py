"""Who is calling: credentials + route + key store -> a `Caller`, or a `GatewayError`.

`authenticate` is pure (no I/O, the clock passed in) and decides everything but a JWT's
signature; for a JWT it returns None and `verify_jwt` checks the token with the route's verifier
(which may fetch the issuer's JWKS). `valid_key` is the lookup `/v1/models` uses. Metrics of
failures are counted by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .compiled import CompiledRoute
from .errors import GatewayError, missing_credentials
from .jwt_auth import JWTRejected
from .keys import KeyRecord, KeyStore

API_KEY_PREFIX = "rk_"


@dataclass(slots=True)
class Caller:
    ident: str  # key id, jwt:<sub>, or ip:<address> for anonymous callers of public routes
    kind: str  # api_key | jwt | anonymous
    record: KeyRecord | None = None


def authenticate(
    cr: CompiledRoute, keys: KeyStore, cred: str | None, client: str, model: str, now: float
) -> Caller | None:
    """The caller of `model` on route `cr`, or None when `cred` is to be verified as a JWT
    (`verify_jwt`). `cred`: None when no credential was sent, "" for a non-Bearer Authorization."""
    route = cr.route
    if not cred:
        if route.public:
            return Caller("ip:" + client, "anonymous")
        if cred == "":
            raise GatewayError(
                401, "Authorization header must be 'Bearer <key>'", "authentication_error", "invalid_authorization"
            )
        raise missing_credentials()
    if cred.startswith(API_KEY_PREFIX):
        if not route.auth.api_keys:
            raise GatewayError(
                401,
                f"API keys are not accepted for model {model!r}; use a JWT",
                "authentication_error",
                "api_keys_disabled",
            )
        record = keys.lookup(cred)
        if record is None:
            raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
        if record.revoked:
            raise GatewayError(401, "This API key has been revoked", "authentication_error", "revoked_api_key")
        if record.expired(now):
            raise GatewayError(401, "This API key has expired", "authentication_error", "expired_api_key")
        if not record.allows(model):
            raise GatewayError(
                403, f"This API key may not use model {model!r}", "permission_error", "model_not_allowed"
            )
        return Caller(record.id, "api_key", record)
    if cr.jwt is None:
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    return None


async def verify_jwt(cr: CompiledRoute, token: str) -> Caller:
    """The caller behind a JWT, verified with the route's verifier (after `authenticate` said so)."""
    assert cr.jwt is not None
    try:
        claims = await cr.jwt.verify(token)
    except JWTRejected as exc:
        raise GatewayError(401, f"Invalid token: {exc}", "authentication_error", exc.reason) from None
    return Caller("jwt:" + claims.subject, "jwt")


def valid_key(keys: KeyStore, cred: str, now: float) -> KeyRecord:
    """The record of a usable API key (not revoked, not expired), for `/v1/models`."""
    record = keys.lookup(cred)
    if record is None or record.revoked or record.expired(now):
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    return record

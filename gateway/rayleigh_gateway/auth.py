"""Who is calling: credentials + route + key store -> a `Caller`, or a `GatewayError`.

`authenticate` is pure (no I/O, the clock passed in) and decides everything but a JWT's
signature; for any other credential than an API key it returns None, and `verify_jwt` checks the
token with the route's verifier (which may fetch the issuer's JWKS), or, on a route that takes
no JWT, `verify_any_jwt` with every verifier of the config, as for a model no route serves
(`authenticate_unknown`): so an unauthenticated caller gets the same 401 whether the model
exists or not. `valid_key` is the lookup `/v1/models` uses. Metrics of failures are counted by
the callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .compiled import CompiledRoute
from .errors import GatewayError, missing_credentials
from .fairness import share_of
from .fairqueue import DEFAULT_PRIORITY
from .jwt_auth import JWTRejected, JWTVerifier
from .keys import KeyRecord, KeyStore

API_KEY_PREFIX = "rk_"

# Refusals that would tell a caller holding a valid credential that a non-public model exists
# although it may not use it; admission answers them as an unknown model (404).
HIDDEN_REASONS = frozenset({"model_not_allowed", "api_keys_disabled", "jwt_not_accepted"})


@dataclass(slots=True)
class Caller:
    ident: str  # key id, jwt:<sub>, or ip:<address> for anonymous callers of public routes
    kind: str  # api_key | jwt | anonymous
    record: KeyRecord | None = None
    priority: str = DEFAULT_PRIORITY  # fair sharing class and weight (fairness.share_of)
    weight: int = 1


def _no_credential(cred: str | None) -> GatewayError:
    if cred == "":
        return GatewayError(
            401, "Authorization header must be 'Bearer <key>'", "authentication_error", "invalid_authorization"
        )
    return missing_credentials()


def _usable_key(keys: KeyStore, cred: str, now: float) -> KeyRecord:
    record = keys.lookup(cred)
    if record is None:
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    if record.revoked:
        raise GatewayError(401, "This API key has been revoked", "authentication_error", "revoked_api_key")
    if record.expired(now):
        raise GatewayError(401, "This API key has expired", "authentication_error", "expired_api_key")
    return record


def authenticate(
    cr: CompiledRoute, keys: KeyStore, cred: str | None, client: str, model: str, now: float
) -> Caller | None:
    """The caller of `model` on route `cr`, or None when `cred` is to be verified as a JWT
    (`verify_jwt` on a route with JWT, else `verify_any_jwt`, then `jwt_not_accepted`).
    `cred`: None when no credential was sent, "" for a non-Bearer Authorization.
    An API key is checked before anything about the route is said (api_keys_disabled,
    model_not_allowed), so those answers go only to holders of a valid key."""
    route = cr.route
    if not cred:
        if route.public:
            return Caller("ip:" + client, "anonymous")
        raise _no_credential(cred)
    if cred.startswith(API_KEY_PREFIX):
        record = _usable_key(keys, cred, now)
        if not route.auth.api_keys:
            raise GatewayError(
                401,
                f"API keys are not accepted for model {model!r}; use a JWT",
                "authentication_error",
                "api_keys_disabled",
            )
        if not record.allows(model):
            raise GatewayError(
                403, f"This API key may not use model {model!r}", "permission_error", "model_not_allowed"
            )
        return Caller(record.id, "api_key", record, *share_of(record, None))
    return None


def jwt_not_accepted(model: str) -> GatewayError:
    """A JWT that another route accepts, sent for `model` whose route takes none."""
    return GatewayError(
        401, f"JWTs are not accepted for model {model!r}; use an API key", "authentication_error", "jwt_not_accepted"
    )


def authenticate_unknown(jwt_routes: bool, keys: KeyStore, cred: str | None, now: float) -> Caller | None:
    """The caller asking for a model that no route serves, with the 401s a non-public model would
    give; None when `cred` is to be verified as a JWT (`verify_any_jwt`). `jwt_routes`: whether
    any route accepts JWTs (if none does, a non-key credential is an invalid API key, as on a
    route without JWT)."""
    if not cred:
        raise _no_credential(cred)
    if cred.startswith(API_KEY_PREFIX):
        return Caller(_usable_key(keys, cred, now).id, "api_key")
    if not jwt_routes:
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    return None


async def verify_jwt(cr: CompiledRoute, token: str) -> Caller:
    """The caller behind a JWT, verified with the route's verifier (after `authenticate` said so)."""
    assert cr.jwt is not None
    return await verify_any_jwt((cr.jwt,), token)


async def verify_any_jwt(verifiers: Sequence[JWTVerifier], token: str) -> Caller:
    """The caller behind a JWT that one of `verifiers` accepts; the first one's refusal otherwise."""
    first: JWTRejected | None = None
    for verifier in verifiers:
        try:
            claims = await verifier.verify(token)
        except JWTRejected as exc:
            first = first or exc
            continue
        return Caller("jwt:" + claims.subject, "jwt", None, *share_of(None, claims.claims))
    if first is None:
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    raise GatewayError(401, f"Invalid token: {first}", "authentication_error", first.reason)


def valid_key(keys: KeyStore, cred: str, now: float) -> KeyRecord:
    """The record of a usable API key (not revoked, not expired), for `/v1/models`."""
    record = keys.lookup(cred)
    if record is None or record.revoked or record.expired(now):
        raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
    return record

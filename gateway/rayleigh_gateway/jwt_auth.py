"""JWT verification (pyjwt): pinned algorithms, issuer, audience, expiry, not-before.

Key sources: an HMAC secret (HS*), a static PEM public key (RS*/PS*/ES*/EdDSA) or a JWKS URL
fetched with aiohttp and cached. The route config already refuses mixing HMAC algorithms with
public keys; here the token's header `alg` must also be in the route's list, so `alg: none` and
HS256-signed-with-the-public-key tokens fail before any signature check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .routes import JWTConfig

FetchJSON = Callable[[str], Awaitable[Any]]


class JWTRejected(Exception):
    """A token that does not verify; `reason` is a short metric label, the message is for users."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Claims:
    subject: str
    issuer: str
    claims: dict[str, Any]


class JWKSCache:
    def __init__(self, url: str, ttl: float, fetch: FetchJSON) -> None:
        self.url = url
        self.ttl = ttl
        self.fetch = fetch
        self.keys: dict[str, Any] = {}
        self.fetched_at = 0.0
        self.lock = asyncio.Lock()

    async def _refresh(self) -> None:
        data = await self.fetch(self.url)
        jwks = jwt.PyJWKSet.from_dict(data)
        self.keys = {k.key_id or "": k for k in jwks.keys}
        self.fetched_at = time.monotonic()

    async def get(self, kid: str | None) -> Any:
        now = time.monotonic()
        stale = now - self.fetched_at > self.ttl
        # An unknown kid may mean the issuer rotated keys: refetch, at most every 10 s.
        missing = (kid or "") not in self.keys and now - self.fetched_at > 10.0
        if stale or missing:
            async with self.lock:
                if time.monotonic() - self.fetched_at > min(self.ttl, 10.0):
                    try:
                        await self._refresh()
                    except Exception as exc:
                        if not self.keys:
                            raise JWTRejected("jwks_unavailable", f"cannot fetch the issuer's JWKS: {exc}") from None
        key = self.keys.get(kid or "")
        if key is None and kid is None and len(self.keys) == 1:
            key = next(iter(self.keys.values()))
        if key is None:
            raise JWTRejected("unknown_kid", f"token key id {kid!r} is not in the issuer's JWKS")
        return key.key


class JWTVerifier:
    def __init__(self, config: JWTConfig, fetch: FetchJSON | None = None) -> None:
        self.config = config
        self.algorithms = list(config.algorithms)
        self.audience = config.audience
        self.issuer = config.issuer
        self.static_key: Any = None
        self.jwks: JWKSCache | None = None
        if config.hmac_secret:
            self.static_key = config.hmac_secret.encode()
        elif config.public_key:
            try:
                self.static_key = load_pem_public_key(config.public_key.encode())
            except ValueError as exc:
                raise ValueError(f"auth.jwt.publicKey: not a PEM public key: {exc}") from None
        elif config.jwks_url:
            if fetch is None:
                raise ValueError("a JWKS URL needs a fetcher")
            self.jwks = JWKSCache(config.jwks_url, config.jwks_cache_seconds, fetch)

    async def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise JWTRejected("jwt_malformed", "bearer token is neither an API key nor a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise JWTRejected(
                "jwt_algorithm", f"token algorithm {alg!r} is not allowed here (allowed: {self.algorithms})"
            )
        key = self.static_key
        if self.jwks is not None:
            kid = header.get("kid")
            key = await self.jwks.get(kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise JWTRejected("jwt_expired", "token has expired") from None
        except jwt.ImmatureSignatureError:
            raise JWTRejected("jwt_not_yet_valid", "token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise JWTRejected("jwt_audience", "token audience is not accepted here") from None
        except jwt.InvalidIssuerError:
            raise JWTRejected("jwt_issuer", "token issuer is not accepted here") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JWTRejected("jwt_missing_claim", f"token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidSignatureError:
            raise JWTRejected("jwt_signature", "token signature does not verify") from None
        except (jwt.InvalidKeyError, jwt.InvalidAlgorithmError):
            raise JWTRejected("jwt_algorithm", "token algorithm does not match the configured key") from None
        except jwt.InvalidTokenError as exc:
            raise JWTRejected("jwt_invalid", f"token is invalid: {exc}") from None
        return Claims(subject=str(claims["sub"]), issuer=str(claims["iss"]), claims=claims)

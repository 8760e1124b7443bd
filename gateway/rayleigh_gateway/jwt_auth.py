"""JWT verification (pyjwt): pinned algorithms, issuer, audience, expiry, not-before.

Key sources: an HMAC secret (HS*), a static PEM public key (RS*/PS*/ES*/EdDSA) or a JWKS URL
fetched with aiohttp and cached. The route config already refuses mixing HMAC algorithms with
public keys; here the token's header `alg` must also be in the route's list, so `alg: none` and
HS256-signed-with-the-public-key tokens fail before any signature check.

The JWKS URL is set by a ModelDeployment's author and fetched by the shared gateway, so the fetch
is fenced: only hosts in `jwksAllowedHosts` (app.py refuses other routes), no redirects, no
compression, at most `JWKS_MAX_BYTES`, `JWKS_TIMEOUT` seconds; its errors go to the gateway log
only (callers get "could not verify the token", never a status or an address). One `JWKSCache`
per URL, shared by routes and kept across config reloads: one fetch in flight at a time, failed
fetches retried with capped exponential backoff, cached keys served while the issuer is down
(stale-while-error), and a caller whose `kid` is cached never waits for a fetch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .routes import JWTConfig

log = logging.getLogger("rayleigh.gateway")

FetchJSON = Callable[[str], Awaitable[Any]]

JWKS_MAX_BYTES = 64 * 1024  # a JWKS with a few dozen RSA keys is well below
JWKS_TIMEOUT = 5.0  # seconds for one whole fetch
BACKOFF_FIRST = 1.0  # seconds before retrying after a failed fetch, doubled per failure ...
BACKOFF_MAX = 60.0  # ... up to this
UNKNOWN_KID_INTERVAL = 10.0  # an unknown kid refetches the JWKS at most this often
UNVERIFIABLE = "could not verify the token"


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


class JWKSFetchError(Exception):
    """Why a JWKS fetch failed: for the gateway log only, never for callers."""


def jwks_host_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Whether `url` (http/https) names a host of `allowed`: `host`, `host:port` (the port must then
    match, default ports included) or `*.domain` (any subdomain). Case-insensitive."""
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    port = port or (443 if parts.scheme == "https" else 80)
    for entry in allowed:
        try:
            want = urlsplit("//" + entry.strip())
            want_host, want_port = (want.hostname or "").lower(), want.port
        except ValueError:
            continue
        matched = host.endswith(want_host[1:]) if want_host.startswith("*.") else host == want_host
        if matched and (want_port is None or want_port == port):
            return True
    return False


class JWKSFetcher:
    """GETs JWKS documents over its own small pool (not the backends'): no redirects, no
    compression, no proxy from the environment, a size cap and a total timeout."""

    def __init__(self, max_bytes: int = JWKS_MAX_BYTES, timeout: float = JWKS_TIMEOUT) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> Any:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, limit_per_host=2, ttl_dns_cache=60),
                auto_decompress=False,
                trust_env=False,
            )
        try:
            async with self.session.get(
                url,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
            ) as resp:
                if resp.status != 200:
                    hint = " (redirects are not followed)" if 300 <= resp.status < 400 else ""
                    raise JWKSFetchError(f"HTTP {resp.status}{hint}")
                if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise JWKSFetchError(f"compressed body ({resp.headers['Content-Encoding']}) refused")
                if (resp.content_length or 0) > self.max_bytes:
                    raise JWKSFetchError(f"body of {resp.content_length} bytes, above {self.max_bytes}")
                chunks: list[bytes] = []
                size = 0
                while chunk := await resp.content.read(16384):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise JWKSFetchError(f"body above {self.max_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise JWKSFetchError(f"no complete answer within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise JWKSFetchError(f"{exc.__class__.__name__}: {exc}") from None
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise JWKSFetchError("body is not JSON") from None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class JWKSCache:
    """The keys of one JWKS URL. `get` answers from the cache whenever the token's kid is there
    (a stale cache starts a refresh in the background); only callers with an unknown kid wait, all
    on the same single fetch."""

    def __init__(self, url: str, ttl: float, fetch: FetchJSON) -> None:
        self.url = url
        self.ttl = ttl
        self.fetch = fetch
        self.keys: dict[str, Any] = {}
        self.fetched_at = -math.inf  # monotonic time of the last successful fetch
        self.failures = 0  # failed fetches in a row
        self.retry_at = 0.0  # no fetch before this monotonic time (backoff)
        self.task: asyncio.Task[None] | None = None  # the fetch in flight

    async def _refresh(self) -> None:
        try:
            data = await self.fetch(self.url)
            jwks = jwt.PyJWKSet.from_dict(data)
            keys = {k.key_id or "": k for k in jwks.keys}
        except Exception as exc:
            self.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** (self.failures - 1))
            self.retry_at = time.monotonic() + delay
            log.warning(
                "JWKS %s: fetch failed (%s); %s; next try in %g s",
                self.url,
                exc if isinstance(exc, JWKSFetchError) else f"{exc.__class__.__name__}: {exc}",
                f"serving the {len(self.keys)} cached keys" if self.keys else "no keys cached, tokens are refused",
                delay,
            )
        else:
            if self.failures:
                log.info("JWKS %s: fetched again after %d failures", self.url, self.failures)
            self.keys = keys
            self.fetched_at = time.monotonic()
            self.failures = 0
            self.retry_at = 0.0
        finally:
            self.task = None

    def _start(self) -> asyncio.Task[None]:
        task = self.task
        if task is None:
            task = self.task = asyncio.get_running_loop().create_task(self._refresh())
        return task

    def _lookup(self, kid: str | None) -> Any:
        key = self.keys.get(kid or "")
        if key is None and kid is None and len(self.keys) == 1:
            key = next(iter(self.keys.values()))
        return key

    def _missing(self, kid: str | None) -> JWTRejected:
        if not self.keys:
            return JWTRejected("jwks_unavailable", UNVERIFIABLE)
        return JWTRejected("unknown_kid", f"token key id {kid!r} is not in the issuer's JWKS")

    async def get(self, kid: str | None) -> Any:
        now = time.monotonic()
        key = self._lookup(kid)
        if key is not None:
            if now - self.fetched_at > self.ttl and self.task is None and now >= self.retry_at:
                self._start()  # refresh behind this caller's back; it does not wait
            return key.key
        # Not cached: maybe the issuer rotated its keys. Wait for the one fetch in flight, or start
        # one unless backing off, or the keys were fetched moments ago.
        task = self.task
        if task is None:
            if now < self.retry_at or now - self.fetched_at < UNKNOWN_KID_INTERVAL:
                raise self._missing(kid)
            task = self._start()
        await asyncio.shield(task)  # a caller that gives up does not cancel the others' fetch
        key = self._lookup(kid)
        if key is None:
            raise self._missing(kid)
        return key.key


class JWKSCaches:
    """One `JWKSCache` per URL for the whole gateway; callable as the fetcher it wraps."""

    def __init__(self, fetch: FetchJSON) -> None:
        self.fetch = fetch
        self.caches: dict[str, JWKSCache] = {}

    async def __call__(self, url: str) -> Any:
        return await self.fetch(url)

    def cache(self, url: str, ttl: float) -> JWKSCache:
        cache = self.caches.get(url)
        if cache is None:
            cache = self.caches[url] = JWKSCache(url, ttl, self.fetch)
        cache.ttl = ttl
        return cache

    def retain(self, urls: Iterable[str]) -> None:
        """Forget the caches of URLs no route uses any more."""
        keep = set(urls)
        for url in [u for u in self.caches if u not in keep]:
            del self.caches[url]

    def cancel(self) -> None:
        """Cancel the fetches in flight (at shutdown)."""
        for cache in self.caches.values():
            if cache.task is not None:
                cache.task.cancel()


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
            if isinstance(fetch, JWKSCaches):
                self.jwks = fetch.cache(config.jwks_url, config.jwks_cache_seconds)
            else:
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

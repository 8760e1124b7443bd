"""The route config compiled for the request path: per route its parsed allow-list, JWT
verifier, upstream URLs and the bucket lists cached per caller; the model -> route index.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import metrics as m
from .jwt_auth import FetchJSON, JWTVerifier
from .keys import KeyRecord
from .limits import route_buckets
from .policy import IPNetwork, parse_networks
from .ratelimit import Bucket
from .routes import GatewayConfig, Route

PROXIED_PATHS = {
    "/v1/chat/completions": False,
    "/v1/completions": False,
    "/v1/embeddings": True,  # value: is embeddings (no completion tokens)
}


@dataclass(slots=True)
class CompiledRoute:
    route: Route
    key: str  # namespace/name
    networks: tuple[IPNetwork, ...]
    jwt: JWTVerifier | None
    urls: dict[str, str]
    bucket_cache: dict[str, tuple[Bucket, ...]] = field(default_factory=dict)

    def buckets(self, ident: str, record: KeyRecord | None) -> tuple[Bucket, ...]:
        cached = self.bucket_cache.get(ident)
        if cached is not None:
            return cached
        result = route_buckets(self.key, self.route.rate_limits, ident, record)
        if len(self.bucket_cache) > 50_000:
            self.bucket_cache.clear()
        self.bucket_cache[ident] = result
        return result


@dataclass(slots=True)
class Compiled:
    config: GatewayConfig
    routes: list[CompiledRoute]
    by_model: dict[str, CompiledRoute]
    trusted: tuple[IPNetwork, ...]


def compile_config(config: GatewayConfig, fetch: FetchJSON) -> Compiled:
    """Compile `config`; `fetch` reads the JWKS of routes that verify JWTs against a JWKS URL."""
    routes = []
    by_model: dict[str, CompiledRoute] = {}
    for route in config.routes:
        jwt = None
        if route.auth.jwt is not None:
            jwt = JWTVerifier(route.auth.jwt, fetch=fetch)
        cr = CompiledRoute(
            route=route,
            key=f"{route.namespace}/{route.name}",
            networks=parse_networks(route.allowed_cidrs),
            jwt=jwt,
            urls={p: route.backend + p for p in PROXIED_PATHS},
        )
        routes.append(cr)
        for model in route.models:
            by_model[model] = cr
    m.ROUTES.set(len(routes))
    return Compiled(config, routes, by_model, parse_networks(config.trusted_proxies))

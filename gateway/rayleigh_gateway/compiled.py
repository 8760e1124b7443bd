"""The route config compiled for the request path: per route its parsed allow-list, JWT
verifier, upstream URLs, token cap and the bucket lists cached per caller; the model -> route
index (routes that lose a model name to an older route are left out, see `served_routes`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import metrics as m
from .jwt_auth import FetchJSON, JWTVerifier
from .keys import KeyRecord
from .limits import route_buckets
from .policy import IPNetwork, parse_networks
from .ratelimit import Bucket
from .routes import GatewayConfig, Route, RouteConflict, served_routes
from .split import Picker

log = logging.getLogger("rayleigh.gateway")

# path -> what it is: "chat" and "completions" generate tokens, "embeddings" does not.
PROXIED_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


@dataclass(slots=True, frozen=True)
class Target:
    """One backend of a route: its name (`namespace/name` of the ModelDeployment), base URL and
    the upstream URL of each proxied path."""

    name: str
    base: str
    urls: dict[str, str]


@dataclass(slots=True)
class CompiledRoute:
    route: Route
    key: str  # namespace/name
    networks: tuple[IPNetwork, ...]
    jwt: JWTVerifier | None
    targets: tuple[Target, ...]  # one, or the weighted backends of a traffic split
    picker: Picker
    cap: int | None = None  # most tokens one sequence may generate (maxTokens, maxModelLen), if known
    bucket_cache: dict[str, tuple[Bucket, ...]] = field(default_factory=dict)

    def pick(self, caller: str) -> Target | None:
        """The backend for one request (sticky routes: by `caller`); None when every weight is 0."""
        if len(self.targets) == 1 and not self.route.backends:
            return self.targets[0]
        i = self.picker.pick(caller)
        return None if i < 0 else self.targets[i]

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
    routes: list[CompiledRoute]  # the served routes, in config order
    by_model: dict[str, CompiledRoute]
    trusted: tuple[IPNetwork, ...]
    verifiers: tuple[JWTVerifier, ...] = ()  # one per distinct JWT config (for unknown models)
    conflicts: tuple[RouteConflict, ...] = ()  # routes not served (a model name taken by an older route)


def token_cap(route: Route) -> int | None:
    caps = [c for c in (route.max_tokens, route.max_model_len) if c is not None]
    return min(caps) if caps else None


def compile_config(config: GatewayConfig, fetch: FetchJSON) -> Compiled:
    """Compile `config`; `fetch` reads the JWKS of routes that verify JWTs against a JWKS URL.
    A route that claims a model name an older route serves is dropped (log line, metric)."""
    served, conflicts = served_routes(config.routes)
    for conflict in conflicts:
        log.error("%s; fix one of the two ModelDeployments", conflict.describe())
    routes = []
    by_model: dict[str, CompiledRoute] = {}
    verifiers: dict[str, JWTVerifier] = {}
    for route in served:
        jwt = None
        if route.auth.jwt is not None:
            # Routes with the same JWT settings share one verifier (and one JWKS cache).
            ident = route.auth.jwt.model_dump_json()
            jwt = verifiers.get(ident)
            if jwt is None:
                jwt = verifiers[ident] = JWTVerifier(route.auth.jwt, fetch=fetch)
        backends = route.targets()
        cr = CompiledRoute(
            route=route,
            key=f"{route.namespace}/{route.name}",
            networks=parse_networks(route.allowed_cidrs),
            jwt=jwt,
            targets=tuple(Target(b.name, b.url, {p: b.url + p for p in PROXIED_PATHS}) for b in backends),
            picker=Picker([b.name for b in backends], [b.weight for b in backends], sticky=route.sticky),
            cap=token_cap(route),
        )
        routes.append(cr)
        for model in route.models:
            by_model[model] = cr
    m.ROUTES.set(len(routes))
    m.ROUTE_CONFLICTS.set(len(conflicts))
    return Compiled(
        config,
        routes,
        by_model,
        parse_networks(config.trusted_proxies),
        tuple(verifiers.values()),
        tuple(conflicts),
    )

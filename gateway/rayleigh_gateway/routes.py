"""The gateway's route configuration: one `Route` per ModelDeployment, plus global settings.

The operator renders this into a ConfigMap (one entry per ModelDeployment, from its
`spec.gateway` section, same camelCase names); the gateway reads it from a mounted file and
reloads it when the file changes. Pure pydantic models: no heavy imports here, so the operator
can import this module to render the config.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from rayleigh_api import MODEL_NAME_PATTERN, Fairness, ModelDeployment, RateLimits
from rayleigh_api.errors import FieldErrors
from rayleigh_api.traffic import age_order

from .route_auth import AuthConfig, RouteModel
from .route_auth import JWTConfig as JWTConfig  # re-exported: jwt_auth and the tests read it here

_Model = RouteModel


# A served model name, as in the ModelDeployment; the gateway refuses requests for other shapes
# before the name reaches a metric, a log line or a lookup.
ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN)]


def _unset(value: object) -> bool:
    return value is None


def _falsy(value: object) -> bool:
    return not value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"backend must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class WeightedBackend(_Model):
    """One backend of a traffic split: a ModelDeployment's endpoint and its share of the requests."""

    name: str = Field(
        min_length=1,
        max_length=317,
        description="The ModelDeployment behind it, `namespace/name` (the `backend` label of "
        "rayleigh_gateway_backend_requests_total).",
    )
    url: str = Field(description="Base URL of its OpenAI endpoint.")
    weight: int = Field(
        ge=0,
        le=100,
        description="Relative weight: it gets weight/sum(weights) of the requests; 0 keeps it warm with no traffic.",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        return _http_url(value)


class Route(_Model):
    name: str = Field(min_length=1)
    namespace: str = "default"
    backend: str | None = Field(
        default=None,
        exclude_if=_unset,
        description="Base URL of the model's OpenAI endpoint, e.g. http://tiny-head:8000 (or `backends`).",
    )
    backends: list[WeightedBackend] = Field(
        default_factory=list,
        max_length=32,
        exclude_if=_falsy,
        description="A traffic split: several weighted backends for the same model names (instead of `backend`).",
    )
    sticky: bool = Field(
        default=False,
        exclude_if=_falsy,
        description="A split sends each caller (key id, JWT subject or client address) to one backend, by a "
        "weighted consistent hash (a weight change moves few callers).",
    )
    models: list[ModelName] = Field(min_length=1, description="Served names, LoRA adapter names included.")
    cold_start: bool = Field(
        default=False,
        alias="coldStart",
        exclude_if=_falsy,
        description="The operator scaled this model to zero: requests are held (limits.coldStartQueue, "
        "coldStartWaitSeconds) while the gateway wakes it (hold.py).",
    )
    scale_to_zero: bool = Field(
        default=False,
        alias="scaleToZero",
        exclude_if=_falsy,
        description="The model may be scaled to zero (autoscaling.minReplicas 0): a backend refusing "
        "connections is held for as a cold start, not answered 502.",
    )
    public: bool = False
    auth: AuthConfig = Field(default_factory=AuthConfig)
    allowed_cidrs: list[str] = Field(default_factory=list, alias="allowedCIDRs")
    rate_limits: RateLimits = Field(default_factory=RateLimits, alias="rateLimits")
    fairness: Fairness | None = Field(
        default=None,
        exclude_if=_unset,
        description="Fair sharing at saturation (docs/GATEWAY.md, Fair sharing); unset: first come, first served.",
    )
    # Left out of the rendered route when unset, so routes without them read as before.
    created_at: AwareDatetime | None = Field(
        default=None,
        alias="createdAt",
        exclude_if=_unset,
        description="When the ModelDeployment was created (RFC 3339, its metadata.creationTimestamp). When two "
        "routes claim one model name, the oldest keeps it (ties: namespace/name) and the other is not served.",
    )
    max_tokens: int | None = Field(
        default=None,
        alias="maxTokens",
        gt=0,
        exclude_if=_unset,
        description="Most tokens one request may generate (per sequence); larger max_tokens are lowered to it.",
    )
    max_model_len: int | None = Field(
        default=None,
        alias="maxModelLen",
        gt=0,
        exclude_if=_unset,
        description="The model's context length, if known: no request may generate more (as maxTokens).",
    )

    @field_validator("backend")
    @classmethod
    def _http_backend(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _one_backend_source(self) -> Route:
        if (self.backend is None) == (not self.backends):
            raise ValueError("set exactly one of backend (one URL) and backends (a weighted split)")
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backends: duplicate names in {names}")
        return self

    def targets(self) -> list[WeightedBackend]:
        """The backends to pick from: `backends`, or the one `backend` (weight 100, named after the route)."""
        if self.backends:
            return list(self.backends)
        assert self.backend is not None
        return [WeightedBackend(name=f"{self.namespace}/{self.name}", url=self.backend, weight=100)]

    @field_validator("allowed_cidrs")
    @classmethod
    def _valid_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {cidr!r}: {exc}") from None
        return value


class Limits(_Model):
    """Request handling limits of the gateway itself."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, alias="maxBodyBytes", gt=0)
    connect_timeout_seconds: float = Field(default=5.0, alias="connectTimeoutSeconds", gt=0)
    read_timeout_seconds: float = Field(default=600.0, alias="readTimeoutSeconds", gt=0)
    default_max_tokens: int = Field(
        default=512,
        alias="defaultMaxTokens",
        gt=0,
        description="Tokens charged up front for a request without max_tokens (corrected after).",
    )
    upstream_connections: int = Field(
        default=512,
        alias="upstreamConnections",
        ge=0,
        description="Connections per backend and worker (0: unbounded); one slow backend cannot take the others'.",
    )
    body_timeout_seconds: float = Field(
        default=30.0, alias="bodyTimeoutSeconds", gt=0, description="Whole request body read deadline (408 after)."
    )
    send_timeout_seconds: float = Field(
        default=30.0,
        alias="sendTimeoutSeconds",
        gt=0,
        description="A client that reads nothing of its answer for this long is cut off (upstream released).",
    )
    max_concurrent_streams: int = Field(
        default=64,
        alias="maxConcurrentStreams",
        ge=0,
        description="Streams one caller may have open per gateway process (0: unbounded); a key's own "
        "limits.maxConcurrentStreams wins.",
    )
    cold_start_queue: int = Field(
        default=64,
        alias="coldStartQueue",
        ge=0,
        description="Requests held per model (and process) while it starts from zero; more get 503 "
        "model_cold_starting with Retry-After (0: nothing is held).",
    )
    cold_start_wait_seconds: float = Field(
        default=300.0,
        alias="coldStartWaitSeconds",
        gt=0,
        description="Longest a request is held for a cold start before its 503 model_cold_starting.",
    )


class GatewayConfig(_Model):
    routes: list[Route] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(
        default_factory=list,
        alias="trustedProxies",
        description="CIDRs of proxies whose X-Forwarded-For is believed.",
    )
    limits: Limits = Field(default_factory=Limits)
    log_prompts: bool = Field(default=False, alias="logPrompts")
    jwks_allowed_hosts: list[str] = Field(
        default_factory=list,
        alias="jwksAllowedHosts",
        description="Hosts (`host`, `host:port` or `*.domain`) a route's jwksUrl may name; a route with another "
        "host is refused. Empty: any host (backward compatible; a warning is logged).",
    )
    websocket_allowed_origins: list[str] = Field(
        default_factory=list,
        alias="websocketAllowedOrigins",
        description="Origins (scheme://host[:port]) whose browsers may open /v1/ws/chat; '*': any. Empty: no "
        "browser origin. Clients that send no Origin header (not browsers) are always accepted.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: list[str]) -> list[str]:
        return Route._valid_cidrs(value)

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        # Two routes claiming one model name do not make the config invalid: `served_routes`
        # keeps the oldest and drops the other, so one tenant's name cannot take routing down.
        names: set[tuple[str, str]] = set()
        for route in self.routes:
            if (route.namespace, route.name) in names:
                raise ValueError(f"duplicate route {route.namespace}/{route.name}")
            names.add((route.namespace, route.name))
        return self


@dataclass(frozen=True, slots=True)
class RouteConflict:
    """A route that is not served: `model` is already served by the older route `winner`."""

    route: Route
    model: str
    winner: Route

    def describe(self) -> str:
        def who(r: Route) -> str:
            since = r.created_at.isoformat() if r.created_at is not None else "no createdAt"
            return f"{r.namespace}/{r.name} ({since})"

        return f"route {who(self.route)} is not served: model {self.model!r} is already served by {who(self.winner)}"


def _age_key(route: Route) -> tuple[float, str, str]:
    return age_order(route.created_at, route.namespace, route.name)


def served_routes(routes: list[Route]) -> tuple[list[Route], list[RouteConflict]]:
    """The routes to serve, in config order, and the ones dropped because an older route already
    serves one of their model names (oldest by createdAt wins, ties by namespace/name). A dropped
    route claims nothing, so the next route in age order may take its other names."""
    owner: dict[str, Route] = {}
    dropped: dict[int, RouteConflict] = {}
    for route in sorted(routes, key=_age_key):
        taken = next((m for m in route.models if m in owner), None)
        if taken is not None:
            dropped[id(route)] = RouteConflict(route, taken, owner[taken])
            continue
        for model in route.models:
            owner[model] = route
    return [r for r in routes if id(r) not in dropped], list(dropped.values())


def split_route(members: list[tuple[Route, int]], sticky: bool = False) -> Route:
    """One route for a traffic split: the first member's settings (the operator passes the oldest
    first: its auth, CIDRs, limits and name apply to the whole split) and every member's endpoint
    as a weighted backend named after its ModelDeployment."""
    if not members:
        raise ValueError("a traffic split needs at least one member")
    base = members[0][0]
    backends = []
    for route, weight in members:
        for target in route.targets():
            backends.append({"name": f"{route.namespace}/{route.name}", "url": target.url, "weight": weight})
    data = base.model_dump(by_alias=True, mode="json")
    data.pop("backend", None)
    data.update(backends=backends, sticky=sticky)
    return Route.model_validate(data)


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the field."""


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    if data is None:
        data = {}
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid gateway config:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "<root>"
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def _read(p: Path) -> Any:
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read gateway config: {exc.strerror}") from None
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: not valid YAML/JSON: {exc}") from None


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def config_files(directory: Path) -> list[Path]:
    """The files a config directory contributes, in a stable order (hidden files, such as a
    ConfigMap volume's `..data`, are skipped)."""
    return sorted(
        p for p in directory.iterdir() if not p.name.startswith(".") and p.suffix in CONFIG_SUFFIXES and p.is_file()
    )


def load_config(path: str | Path) -> GatewayConfig:
    """Read a gateway config from YAML or JSON (JSON is YAML, but use the faster parser).

    `path` may also be a directory, as when the operator's aggregated routes ConfigMap is mounted:
    `gateway.yaml`/`gateway.json` there holds the gateway-wide settings, and every other file is
    either one route (what the operator writes, one key per ModelDeployment) or a config with a
    `routes` list. Adding or removing a model then never rewrites the other models' entries.
    """
    p = Path(path)
    if not p.is_dir():
        return parse_config(_read(p), str(p))
    merged: dict[str, Any] = {"routes": []}
    for file in config_files(p):
        data = _read(file)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping (a route or a gateway config), got {type(data).__name__}")
        if file.stem == "gateway":
            merged = {**data, "routes": [*merged["routes"], *data.get("routes", [])]}
        elif "routes" in data:
            merged["routes"].extend(data["routes"])
        else:
            merged["routes"].append(data)
    return parse_config(merged, str(p))


class RouteError(FieldErrors):
    """A ModelDeployment whose gateway section the gateway cannot serve."""


def route_for(md: ModelDeployment, backend: str) -> Route:
    """The gateway's route for a ModelDeployment: the one place a spec becomes a route.

    The operator writes it into the routes ConfigMap and local mode (`rayleigh up`) into a file; both
    call this, so `auth`, CIDRs and limits mean the same in a cluster and on a laptop.
    """
    gw = md.spec.gateway
    route: dict[str, Any] = {
        "name": md.name or md.served_model_name(),
        "namespace": md.namespace,
        "backend": backend,
        "models": md.served_models(),
        "public": gw.public,
        "allowedCIDRs": list(gw.allowed_cidrs),
    }
    auto = md.spec.autoscaling
    if auto is not None and auto.min_replicas == 0:
        route["scaleToZero"] = True
        route["coldStart"] = md.spec.replicas == 0  # the operator scaled it to zero: hold, wake
    created = md.metadata.get("creationTimestamp")
    if isinstance(created, datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)  # a YAML timestamp read without its zone: Kubernetes writes UTC
    if created:
        route["createdAt"] = created
    if gw.auth is not None:
        auth: dict[str, Any] = {"apiKeys": gw.auth.api_keys}
        jwt = gw.auth.jwt
        if jwt is not None:
            if jwt.jwks_url is None:
                raise RouteError(
                    [
                        (
                            "spec.gateway.auth.jwt",
                            "the gateway reads JWT keys only from jwksUrl for now: publicKeySecretRef and "
                            "hmacSecretRef would have to be copied into the route ConfigMap, which is "
                            "readable by more people than the Secret; use jwksUrl",
                        )
                    ]
                )
            auth["jwt"] = {
                "issuer": jwt.issuer,
                "audience": jwt.audience,
                "jwksUrl": jwt.jwks_url,
                "algorithms": list(jwt.algorithms),
            }
        route["auth"] = auth
    if gw.rate_limits is not None:
        route["rateLimits"] = gw.rate_limits.model_dump(by_alias=True, exclude_none=True)
    if gw.fairness is not None:
        route["fairness"] = gw.fairness.model_dump(by_alias=True)
    try:
        return Route.model_validate(route)
    except ValueError as exc:
        raise RouteError([("spec.gateway", f"the gateway rejects this route: {exc}")]) from None

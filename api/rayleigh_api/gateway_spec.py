"""spec.gateway: who may call the model, from where, and how often."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rayleigh_api.base import CIDR_PATTERN, ApiModel, Rule
from rayleigh_api.model_spec import SecretKeyRef

JwtAlgorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "HS256", "HS384", "HS512"]


def _default_algorithms() -> list[JwtAlgorithm]:
    return ["RS256"]


class JwtAuth(ApiModel):
    """JSON Web Token validation: issuer and audience are always checked, algorithms are pinned."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "[has(self.jwksUrl), has(self.publicKeySecretRef), has(self.hmacSecretRef)].filter(x, x).size() == 1",
            "set exactly one key source: jwksUrl, publicKeySecretRef or hmacSecretRef",
        ),
        Rule(
            "!has(self.hmacSecretRef) || self.algorithms.all(a, a.startsWith('HS'))",
            "hmacSecretRef verifies only HS256/HS384/HS512: mixing them with RS/ES/PS algorithms allows "
            "key-confusion attacks",
            field_path=".algorithms",
        ),
        Rule(
            "has(self.hmacSecretRef) || self.algorithms.all(a, !a.startsWith('HS'))",
            "public-key sources (jwksUrl, publicKeySecretRef) verify only RS/ES/PS algorithms: HS* with a "
            "public key allows key-confusion attacks",
            field_path=".algorithms",
        ),
    ]

    issuer: str = Field(min_length=1, max_length=1024, description="Required `iss` claim.")
    audience: str = Field(min_length=1, max_length=1024, description="Required `aud` claim.")
    jwks_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https://.+",
        description="HTTPS URL of the issuer's JWKS (keys are cached and refreshed).",
    )
    public_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a PEM public key (RS*/ES*/PS*)."
    )
    hmac_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret holding a shared HMAC secret (HS*).")
    algorithms: list[JwtAlgorithm] = Field(
        default_factory=_default_algorithms,
        min_length=1,
        max_length=9,
        description="Accepted signing algorithms; 'none' is never accepted.",
        # In the CRD too: the API server defaults before it runs the CEL rules that read this list.
        json_schema_extra={"default": ["RS256"]},
    )


class GatewayAuth(ApiModel):
    api_keys: bool = Field(default=True, description="Accept the gateway's API keys (managed with `rayleigh keys`).")
    jwt: JwtAuth | None = Field(default=None, description="Also accept JWTs from this issuer.")


class RateLimits(ApiModel):
    """Token-bucket limits, shared by every gateway replica through Redis."""

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000, description="Per API key / subject.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Prompt + completion tokens per key / subject."
    )
    model_requests_per_minute: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Cap for all callers of this model together."
    )
    model_tokens_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000_000, description="Token cap for all callers of this model together."
    )
    fail_mode: Literal["open", "closed"] = Field(
        default="closed",
        description="When Redis is unreachable: 'closed' limits with a local in-memory fallback per gateway "
        "replica; 'open' admits requests unlimited.",
    )


class Fairness(ApiModel):
    """Fair sharing at saturation: past `maxInFlight` requests in flight on this model (per gateway
    process), requests wait in a bounded queue and are admitted by priority class, then by weighted
    fair queuing across callers (weights and classes from the API key or JWT), instead of first come."""

    max_in_flight: int = Field(
        ge=1, le=100_000, description="Requests in flight on this model (per gateway process) before requests queue."
    )
    max_queue: int = Field(
        default=1000, ge=0, le=100_000, description="Requests that may wait at once; past it: 429 queue_full."
    )
    max_wait_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Longest wait in the queue; past it: 503 queue_timeout."
    )
    engine_priority: bool = Field(
        default=False,
        description="The engine runs vLLM's `--scheduling-policy priority`: write the caller's class into the "
        "forwarded body as `priority` (high 0, normal 1, low 2). Leave false otherwise: vLLM rejects `priority` "
        "under the default FCFS policy.",
    )


class GatewaySpec(ApiModel):
    """How the gateway exposes this model. Nothing is public unless `public: true`."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!has(self.allowedCIDRs) || self.allowedCIDRs.all(c, isCIDR(c))",
            "every allowedCIDRs entry must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8",
            field_path=".allowedCIDRs",
        ),
        Rule(
            "!(self.public && has(self.auth))",
            "public: true serves without credentials, so auth would be ignored: remove auth or set public: false",
            field_path=".auth",
        ),
        Rule(
            "!has(self.auth) || self.auth.apiKeys || has(self.auth.jwt)",
            "auth allows no credential at all: set auth.apiKeys: true or configure auth.jwt",
            field_path=".auth",
        ),
    ]

    public: bool = Field(default=False, description="Serve without any credential (still subject to CIDRs and limits).")
    auth: GatewayAuth | None = Field(
        default=None, description="Credentials accepted for this model. Default: the gateway's API keys."
    )
    allowed_cidrs: list[str] = Field(
        default_factory=list,
        alias="allowedCIDRs",
        max_length=256,
        description="Client networks allowed to call this model (IPv4/IPv6 CIDRs). Empty allows all.",
        json_schema_extra={"items": {"type": "string", "maxLength": 64, "pattern": CIDR_PATTERN}},
    )
    rate_limits: RateLimits | None = Field(default=None, description="Request and token rate limits.")
    fairness: Fairness | None = Field(
        default=None, description="Fair sharing across callers when the model is saturated (off when unset)."
    )


class TrafficSpec(ApiModel):
    """This object's share of a traffic split: several ModelDeployments in one namespace that serve
    the same model names (base and LoRA adapters, identical sets) and all set `traffic` form one
    gateway route whose requests are spread by weight. The gateway normalises the weights (they
    need not sum to 100): each member gets weight / sum(weights) of the requests, as
    `status.traffic.share` shows. A member without `traffic`, in another namespace or with other
    adapters is not part of the split: the oldest ModelDeployment keeps the name (`Conflict`)."""

    weight: int = Field(
        ge=0,
        le=100,
        description="Relative weight of this ModelDeployment in the split, 0-100; 0 keeps it deployed and warm "
        "with no traffic.",
    )
    sticky: bool = Field(
        default=False,
        description="Keep each caller (API key id, JWT subject, or client address) on one member by a weighted "
        "consistent hash, so a weight change moves few callers. The split is sticky when any member asks.",
    )

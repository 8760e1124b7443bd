"""The route config's auth section: JWT verification settings and which credentials a route takes.

Part of the route config model (`rayleigh_gateway.routes`, which re-exports `JWTConfig`); split out
to keep that module small. Pure pydantic models, no heavy imports.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class RouteModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(RouteModel):
    """A key in a Kubernetes Secret (the operator resolves it into the rendered config)."""

    name: str
    key: str


class JWTConfig(RouteModel):
    """JWT verification for a route. Exactly one key source: a JWKS URL, a PEM public key or an
    HMAC secret. The algorithm list is pinned: `none` is never accepted, and HMAC algorithms are
    only allowed with an HMAC secret (and asymmetric ones only with public keys), so a token
    signed with HS256 using the public key as secret is rejected."""

    issuer: str = Field(description="Required `iss` claim.")
    audience: str | list[str] = Field(description="Required `aud` claim (one of).")
    jwks_url: str | None = Field(default=None, alias="jwksUrl", description="JWKS endpoint, cached.")
    public_key: str | None = Field(default=None, alias="publicKey", description="PEM public key.")
    hmac_secret: str | None = Field(default=None, alias="hmacSecret", description="HS* shared secret.")
    public_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="publicKeySecretRef")
    hmac_secret_ref: SecretKeyRef | None = Field(default=None, alias="hmacSecretRef")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    jwks_cache_seconds: float = Field(default=300.0, alias="jwksCacheSeconds", gt=0)
    leeway_seconds: float = Field(default=0.0, alias="leewaySeconds", ge=0, le=300)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("algorithm 'none' is never accepted")
            if alg not in HMAC_ALGORITHMS and alg not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(
                    f"unknown algorithm {alg!r}; expected one of {sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS)}"
                )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> JWTConfig:
        sources = [
            s
            for s, v in (
                ("jwksUrl", self.jwks_url),
                ("publicKey", self.public_key),
                ("hmacSecret", self.hmac_secret),
            )
            if v
        ]
        if len(sources) != 1:
            refs = self.public_key_secret_ref or self.hmac_secret_ref
            hint = " (secret refs must be resolved by the operator into publicKey/hmacSecret)" if refs else ""
            raise ValueError(f"exactly one of jwksUrl, publicKey, hmacSecret is required, got {sources}{hint}")
        hmac_algs = [a for a in self.algorithms if a in HMAC_ALGORITHMS]
        asym_algs = [a for a in self.algorithms if a in ASYMMETRIC_ALGORITHMS]
        if self.hmac_secret and asym_algs:
            raise ValueError(f"hmacSecret allows only HS* algorithms, not {asym_algs}")
        if (self.jwks_url or self.public_key) and hmac_algs:
            raise ValueError(
                f"a public key (jwksUrl/publicKey) allows only asymmetric algorithms, not {hmac_algs} (HS/RS confusion)"
            )
        return self


class AuthConfig(RouteModel):
    api_keys: bool = Field(default=True, alias="apiKeys", description="Accept keys from the key store.")
    jwt: JWTConfig | None = None

"""The ModelDeployment API (serving.rayleigh.dev/v1alpha1): the single source of truth.

The CRD's OpenAPI schema, its CEL rules, `kubectl explain` text, the docs' field reference and
`rayleigh validate` are all generated from these models, so field descriptions are written for
the people who read them there. Cross-field rules are CEL expressions attached to the model they
constrain (`RULES`); the API server enforces them from the CRD and `rayleigh validate` evaluates
the very same expressions offline, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "serving.rayleigh.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
CATEGORIES = ["rayleigh"]

# A model or adapter source: a Hugging Face repo, a path on a PersistentVolumeClaim, an S3 prefix,
# or (local mode only) a directory on this machine.
SOURCE_PATTERN = r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file://.+)$"
# LoRA adapters are loaded from a path on the replica: a mounted PersistentVolumeClaim, or (local
# mode) a local directory. Downloading adapters from the Hub or S3 is not supported yet.
ADAPTER_SOURCE_PATTERN = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file://.+)$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Served model names follow OpenAI's loose conventions: "Qwen/Qwen2.5-7B-Instruct", "tiny-qwen:lora".
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}$"
CIDR_PATTERN = (
    r"^(([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])"
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))$"
)
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"

# vLLM flags that Rayleigh sets itself (from first-class fields or wiring) and that extraArgs must
# therefore not override: a second value would silently fight the operator's.
DENIED_EXTRA_ARGS = [
    "model",
    "served-model-name",
    "host",
    "port",
    "tensor-parallel-size",
    "pipeline-parallel-size",
    "gpu-memory-utilization",
    "quantization",
    "dtype",
    "max-model-len",
    "kv-cache-dtype",
    "enable-lora",
    "lora-modules",
    "api-key",
    "ssl-keyfile",
    "ssl-certfile",
    "trust-remote-code",
    "download-dir",
    "chat-template",
]
_DENY_REGEX = "^--?(" + "|".join(DENIED_EXTRA_ARGS) + ")(=.*)?$"
ExtraArg = Annotated[
    str, StringConstraints(min_length=2, max_length=512, pattern=r"^--?[A-Za-z0-9][A-Za-z0-9_\-]*(=.*)?$")
]


@dataclass(frozen=True)
class Rule:
    """A CEL rule on the object it is attached to (`self`), as in `x-kubernetes-validations`."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """Base for every API object: camelCase keys on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )
    RULES: ClassVar[list[Rule]] = []


class SecretKeyRef(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a Secret in the ModelDeployment's namespace.",
    )
    key: str = Field(default="token", min_length=1, max_length=253, description="Key inside the Secret.")


class RopeScaling(ApiModel):
    """Rotary position embedding scaling, to serve a longer context than the model was trained on."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.type != 'yarn' || has(self.originalMaxPositionEmbeddings)",
            "ropeScaling.type 'yarn' needs originalMaxPositionEmbeddings (the context length the "
            "model was trained with, e.g. 32768 for Qwen2.5)",
            field_path=".originalMaxPositionEmbeddings",
        )
    ]

    type: Literal["linear", "dynamic", "yarn", "longrope"] = Field(
        description="Scaling method: 'yarn' is what Qwen2.5 documents for contexts beyond 32k; "
        "'dynamic' is NTK-aware scaling."
    )
    factor: float = Field(
        gt=1.0,
        le=64.0,
        description="How many times the original context length to support (e.g. 4.0 turns 32k into 128k).",
    )
    original_max_position_embeddings: int | None = Field(
        default=None,
        ge=128,
        le=1048576,
        description="Context length the model was trained with; required for 'yarn'.",
    )


class ModelSpec(ApiModel):
    """Which weights to serve and how to interpret them."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!(self.quantization in ['awq', 'gptq']) || self.dtype in ['auto', 'float16']",
            "quantization awq/gptq runs its int4 kernels in float16: set dtype to 'auto' or 'float16'",
            field_path=".dtype",
        ),
        Rule(
            "!(self.quantization in ['fp8', 'bitsandbytes']) || self.dtype != 'float32'",
            "quantization fp8/bitsandbytes computes in 16-bit: dtype 'float32' is not supported with it",
            field_path=".dtype",
        ),
        Rule(
            "!has(self.tokenSecretRef) || self.source.startsWith('hf://') || self.source.startsWith('s3://')",
            "tokenSecretRef is only used to download from hf:// or s3:// sources; remove it or change source",
            field_path=".tokenSecretRef",
        ),
        Rule(
            "!has(self.revision) || self.source.startsWith('hf://')",
            "revision pins a Hugging Face commit, branch or tag and needs an hf:// source",
            field_path=".revision",
        ),
        Rule(
            "!has(self.ropeScaling) || !has(self.maxModelLen) || !has(self.ropeScaling.originalMaxPositionEmbeddings)"
            " || double(self.maxModelLen) <= self.ropeScaling.factor"
            " * double(self.ropeScaling.originalMaxPositionEmbeddings)",
            "maxModelLen exceeds what ropeScaling provides (factor x originalMaxPositionEmbeddings): "
            "raise ropeScaling.factor or lower maxModelLen",
            field_path=".maxModelLen",
        ),
    ]

    source: str = Field(
        max_length=1024,
        pattern=SOURCE_PATTERN,
        description="Where the weights come from: 'hf://Org/Name' (Hugging Face Hub), "
        "'pvc://claim/path' (a PersistentVolumeClaim in the namespace), 's3://bucket/prefix', "
        "or 'file:///abs/path' (local mode only, e.g. `rayleigh up`).",
    )
    revision: str | None = Field(
        default=None,
        max_length=255,
        description="Hugging Face commit, branch or tag to pin (hf:// sources only). Pin it in production.",
    )
    served_model_name: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description="Name clients put in the OpenAI `model` field. Defaults to metadata.name.",
    )
    quantization: Literal["none", "awq", "gptq", "fp8", "bitsandbytes"] = Field(
        default="none",
        description="Weight quantization of the checkpoint: 'awq'/'gptq' for int4 checkpoints "
        "(e.g. Qwen2.5-7B-Instruct-AWQ), 'fp8' or 'bitsandbytes' for 8-bit. 'none' serves the "
        "weights as they are.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto",
        description="Compute dtype. 'auto' takes the checkpoint's; use 'float16' on GPUs without bfloat16.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=1048576,
        description="Longest prompt + completion in tokens. Lower it to fit more concurrent requests "
        "into the KV cache (see `rayleigh plan`). Defaults to the model's own limit.",
    )
    rope_scaling: RopeScaling | None = Field(
        default=None, description="Extend the context window with RoPE scaling (YaRN, NTK)."
    )
    chat_template: str | None = Field(
        default=None,
        max_length=65536,
        description="Inline Jinja chat template overriding the tokenizer's (for base models without one).",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding a Hugging Face (or S3) token for gated or private models.",
    )


class EngineSpec(ApiModel):
    """vLLM engine knobs. Each maps to the vLLM engine argument of the same name."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!has(self.maxNumBatchedTokens) || !has(self.maxNumSeqs) || self.maxNumBatchedTokens >= self.maxNumSeqs",
            "maxNumBatchedTokens must be at least maxNumSeqs (every running sequence needs one token per step)",
            field_path=".maxNumBatchedTokens",
        ),
        Rule(
            f"self.extraArgs.all(a, !a.matches('{_DENY_REGEX}'))",
            "extraArgs must not set flags Rayleigh manages (model, served-model-name, host, port, "
            "parallelism, gpu-memory-utilization, quantization, dtype, max-model-len, kv-cache-dtype, "
            "LoRA, api-key, TLS, trust-remote-code, download-dir, chat-template): use the spec field instead",
            field_path=".extraArgs",
        ),
    ]

    tensor_parallel_size: int = Field(
        default=1, ge=1, le=16, description="GPUs one replica shards each layer across (vLLM tensor parallel)."
    )
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=16, description="Pipeline stages per replica (vLLM pipeline parallel)."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        ge=0.05,
        le=0.99,
        description="Fraction of each GPU's memory vLLM may use for weights, activations and KV cache.",
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto",
        description="KV-cache dtype. 'fp8' halves KV memory (about twice the concurrent tokens) at a "
        "small accuracy cost.",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of shared prompt prefixes (system prompts, few-shot)."
    )
    max_num_seqs: int | None = Field(
        default=None, ge=1, le=4096, description="Most sequences batched in one step. Defaults to vLLM's."
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, le=1048576, description="Most tokens processed in one step (chunked prefill budget)."
    )
    extra_args: list[ExtraArg] = Field(
        default_factory=list,
        max_length=32,
        description="Extra vLLM engine arguments as '--flag=value' strings; an escape hatch for knobs "
        "without a field. Flags Rayleigh manages are rejected.",
    )


class Adapter(ApiModel):
    name: str = Field(pattern=MODEL_NAME_PATTERN, description="Model name clients use to reach this adapter.")
    source: str = Field(
        max_length=1024,
        pattern=ADAPTER_SOURCE_PATTERN,
        description="Where the LoRA adapter's weights are: 'pvc://claim/path' (mounted on every replica) or "
        "'file:///abs/path' (local mode).",
    )


class Autoscaling(ApiModel):
    """Horizontal autoscaling of replicas by a serving signal (an HPA on the scale subresource)."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas",
            field_path=".minReplicas",
        ),
        Rule(
            "self.metric != 'kvCacheUsage' || !has(self.target) || (self.target > 0.0 && self.target <= 1.0)",
            "for metric kvCacheUsage, target is a fraction of the KV cache between 0 and 1 (e.g. 0.8)",
            field_path=".target",
        ),
    ]

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest replicas the autoscaler keeps.")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas the autoscaler may create.")
    metric: Literal["queueDepth", "inFlightRequests", "kvCacheUsage"] = Field(
        default="queueDepth",
        description="Signal to scale on, averaged per replica: 'queueDepth' (requests waiting in vLLM's "
        "queue; the default, because GPU utilisation saturates with one request), 'inFlightRequests' "
        "(running + waiting), or 'kvCacheUsage' (fraction of KV cache in use).",
    )
    target: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Target value of the metric per replica. Defaults: queueDepth 2, inFlightRequests 16, "
        "kvCacheUsage 0.8.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="How long a higher recommendation must hold before scaling up."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long a lower recommendation must hold before scaling down (model loads are slow: "
        "keep this generous).",
    )


class Toleration(ApiModel):
    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="'Exists' or 'Equal'.")
    value: str | None = Field(default=None, description="Taint value to match with 'Equal'.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Resources(ApiModel):
    """What one replica asks the scheduler for."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per replica; must equal tensorParallelSize x pipelineParallelSize. "
        "0 runs on CPU (local mode, tests).",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$",
        description="Extended resource name of the GPU (e.g. nvidia.com/gpu, amd.com/gpu, or a MIG profile "
        "like nvidia.com/mig-3g.40gb).",
    )
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="CPU request, e.g. '8'.")
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Memory request and limit, e.g. '32Gi'."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a replica's pod must match (e.g. GPU product)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for tainted GPU nodes."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity rules, as in a Pod spec's `affinity`."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass for replica pods on shared GPU clusters."
    )


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


class GatewaySpec(ApiModel):
    """How the gateway exposes this model. Nothing is public unless `public: true`."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.allowedCIDRs.all(c, isCIDR(c))",
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


class Rollout(ApiModel):
    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!(string(self.maxUnavailable) in ['0', '0%'] && string(self.maxSurge) in ['0', '0%'])",
            "maxUnavailable and maxSurge cannot both be 0: a rollout could never make progress",
            field_path=".maxSurge",
        )
    ]

    max_unavailable: int | str = Field(
        default=0,
        description="Replicas (or a percentage) that may be down during a rollout. 0 keeps full capacity.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    max_surge: int | str = Field(
        default=1,
        description="Extra replicas (or a percentage) created during a rollout; each needs its own GPUs.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )


class ImageSpec(ApiModel):
    name: str | None = Field(
        default=None,
        max_length=512,
        description="Override the Ray + vLLM replica image (default: the chart's image for this version).",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )
    pull_secrets: list[str] = Field(default_factory=list, max_length=16, description="Names of image pull Secrets.")


class ServingSpec(ApiModel):
    """Ray Serve level knobs; changing them updates the Serve config in place, with no pod restart."""

    stream_batching_interval_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="How long Ray Serve gathers streamed chunks before sending them (trades first-token "
        "latency for throughput). Default: Rayleigh's measured setting.",
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, le=100000, description="Requests one replica accepts at once before queueing."
    )


class ModelDeploymentSpec(ApiModel):
    """Desired state of a served model."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.resources.gpus == 0 ? (self.engine.tensorParallelSize == 1 && "
            "self.engine.pipelineParallelSize == 1) : self.resources.gpus == "
            "self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
            "resources.gpus must equal engine.tensorParallelSize x engine.pipelineParallelSize "
            "(one replica uses one GPU per shard); with gpus 0 (CPU) both must be 1",
            field_path=".resources.gpus",
        ),
        Rule(
            "self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
            "adapter names must be unique",
            field_path=".adapters",
        ),
        Rule(
            "!has(self.model.servedModelName) || self.adapters.all(a, a.name != self.model.servedModelName)",
            "an adapter name must differ from model.servedModelName",
            field_path=".adapters",
        ),
        Rule(
            "!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas"
            " && self.replicas <= self.autoscaling.maxReplicas)",
            "replicas must lie within autoscaling.minReplicas..maxReplicas (the autoscaler owns it from there)",
            field_path=".replicas",
        ),
    ]

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="vLLM engine settings.", json_schema_extra={"default": {}}
    )
    adapters: list[Adapter] = Field(
        default_factory=list, max_length=32, description="LoRA adapters served as extra model names."
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Number of replicas (each with resources.gpus GPUs).")
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale replicas automatically on a serving signal."
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resources per replica.", json_schema_extra={"default": {}}
    )
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec,
        description="Exposure through the Rayleigh gateway.",
        json_schema_extra={"default": {}},
    )
    rollout: Rollout = Field(
        default_factory=Rollout, description="Rolling update settings.", json_schema_extra={"default": {}}
    )
    image: ImageSpec = Field(
        default_factory=ImageSpec, description="Replica image overrides.", json_schema_extra={"default": {}}
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Ray Serve settings.", json_schema_extra={"default": {}}
    )


Phase = Literal["Pending", "Deploying", "Ready", "Degraded", "Failed"]


class Condition(ApiModel):
    type: str = Field(description="Condition type: Ready, Progressing, Degraded, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Generation this condition reflects.")


class ModelDeploymentStatus(ApiModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    phase: Phase | None = Field(default=None, description="Pending, Deploying, Ready, Degraded or Failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Latest observations, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas that can serve requests.")
    selector: str | None = Field(default=None, description="Label selector of replica pods (for the HPA).")
    endpoint: str | None = Field(default=None, description="OpenAI base URL through the gateway.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    served_models: list[str] = Field(
        default_factory=list, max_length=64, description="Model names served (base + adapters)."
    )


class ModelDeployment(ApiModel):
    """A model served by Rayleigh: Ray Serve replicas wrapping vLLM, behind the gateway."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["serving.rayleigh.dev/v1alpha1"] = "serving.rayleigh.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")

    def served_model_name(self) -> str:
        """The base model's name in the OpenAI `model` field."""
        return self.spec.model.served_model_name or self.name

    def served_models(self) -> list[str]:
        """Every name a client can ask for: the base model, then each adapter."""
        return [self.served_model_name(), *(a.name for a in self.spec.adapters)]


def load_yaml_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file (`-` reads standard input)."""
    import sys

    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def load_model_deployment(path: str | Path) -> ModelDeployment:
    """Load and fully validate one ModelDeployment (raises SpecError listing every problem)."""
    from rayleigh_operator.validation import SpecError, validate_document

    docs = load_yaml_documents(path)
    if len(docs) != 1:
        raise SpecError([("", f"{path}: expected exactly one YAML document, found {len(docs)}")])
    return validate_document(docs[0])

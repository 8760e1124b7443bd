"""spec.model, spec.engine and spec.adapters: which weights to serve and how vLLM runs them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from rayleigh_api.base import (
    ADAPTER_SOURCE_PATTERN,
    DENY_REGEX,
    MODEL_NAME_PATTERN,
    S3_ENDPOINT_PATTERN,
    SOURCE_PATTERN,
    ApiModel,
    ExtraArg,
    Rule,
)


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
            f"!has(self.extraArgs) || self.extraArgs.all(a, !a.matches('{DENY_REGEX}'))",
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
    max_loras: int | None = Field(
        default=None,
        ge=1,
        le=32,
        description="LoRA adapters one batch can mix (vLLM max_loras); default 4 while spec.adapters is not "
        "empty. Setting it keeps LoRA on even with no adapters, so that the first adapter added loads "
        "without restarting the replicas. Changing it restarts them.",
    )
    max_lora_rank: Literal[8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16,
        description="Highest LoRA rank an adapter may have (vLLM max_lora_rank); an adapter of a higher rank "
        "fails to load. Changing it restarts the replicas.",
    )
    extra_args: list[ExtraArg] = Field(
        default_factory=list,
        max_length=32,
        description="Extra vLLM engine arguments as '--flag=value' strings; an escape hatch for knobs "
        "without a field. Flags Rayleigh manages are rejected.",
    )


class S3Options(ApiModel):
    """Where an s3:// adapter's bucket lives, when it is not AWS S3's default for the pods."""

    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=S3_ENDPOINT_PATTERN,
        description="URL of an S3-compatible store (MinIO, Ceph RGW, Cloudflare R2...), e.g. "
        "'http://minio.storage:9000'. Unset: AWS S3.",
    )
    region: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9\-]*$",
        description="Region to sign requests for (e.g. 'eu-west-1'). Unset: the pods' AWS_REGION, else us-east-1.",
    )


class Adapter(ApiModel):
    """A LoRA adapter served as an extra model name on the same replicas.

    Adding or removing an adapter loads or unloads it on the running replicas (no restart)."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!has(self.secretRef) || self.source.startsWith('hf://') || self.source.startsWith('s3://')",
            "secretRef holds download credentials and needs an hf:// or s3:// source; remove it or change source",
            field_path=".secretRef",
        ),
        Rule(
            "!has(self.s3) || self.source.startsWith('s3://')",
            "s3 (endpoint, region) applies to s3:// sources only; remove it or change source",
            field_path=".s3",
        ),
    ]

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="Model name clients use to reach this adapter.")
    source: str = Field(
        max_length=1024,
        pattern=ADAPTER_SOURCE_PATTERN,
        description="Where the LoRA adapter's weights are: 'hf://Org/Name' or 'hf://Org/Name@revision' "
        "(Hugging Face Hub; pin a commit in production), 's3://bucket/prefix' (S3 or an S3-compatible "
        "store, see `s3`), 'pvc://claim/path' (mounted on every replica) or 'file:///abs/path' "
        "(local mode). hf:// and s3:// adapters are downloaded by each replica when added.",
    )
    secret_ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret (in this namespace) with the download credentials: key 'token' (a Hugging Face "
        "token) for hf://; keys 'AWS_ACCESS_KEY_ID' and 'AWS_SECRET_ACCESS_KEY' (and optionally "
        "'AWS_SESSION_TOKEN') for s3://. Mounted read-only into the Ray pods: naming a Secret no other "
        "adapter names adds a mount, which restarts the pods once. Unset: the pods' own credentials "
        "(HF_TOKEN from model.tokenSecretRef, the pod's AWS identity).",
    )
    s3: S3Options | None = Field(default=None, description="Endpoint and region of an s3:// source.")

"""GPU memory planner: will this model fit, and how many tokens can be in flight?

vLLM tells you a model does not fit only after minutes of pulling an image and loading weights
(or, worse, starts with room for a handful of concurrent tokens). The planner answers at
admission time from the model's architecture alone:

    weights      = parameters x bytes per parameter (quantization-aware)
    KV per token = 2 (K and V) x layers x KV heads x head_dim x KV-cache bytes
    KV budget    = GPU memory x gpuMemoryUtilization - weights - runtime overhead
    tokens       = KV budget / KV per token

all per GPU when tensor parallelism shards weights and KV heads. The numbers are estimates of the
same quantities vLLM's profiler measures; they are meant to be right within a few percent for
decoder-only transformers (Qwen2, Llama) and to say clearly when a configuration cannot work.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rayleigh_api as api

GIB = 1024**3

# CUDA context, cuBLAS/NCCL workspaces and the activation peak vLLM profiles before sizing the KV
# cache. 1 GiB per GPU is a conservative middle for 0.5B-8B models with default batch sizes.
RUNTIME_OVERHEAD_BYTES = 1 * GIB

DTYPE_BYTES = {"auto": 2.0, "float16": 2.0, "bfloat16": 2.0, "float32": 4.0}
KV_DTYPE_BYTES = {"fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0}

# Bytes per weight of the decoder's linear layers (the only ones quantized; embeddings, lm_head,
# norms and biases stay in 16-bit):
# - awq/gptq: 4-bit weights plus, per group of 128, an fp16 scale and a 4-bit zero point;
# - bitsandbytes (vLLM loads it as 4-bit NF4): 4-bit weights plus an fp32 absmax per block of 64;
# - fp8: one byte per weight (per-tensor scales are negligible).
QUANTIZED_WEIGHT_BYTES = {
    "awq": 0.5 + (2 + 0.5) / 128,
    "gptq": 0.5 + (2 + 0.5) / 128,
    "bitsandbytes": 0.5 + 4 / 64,
    "fp8": 1.0,
}


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that decide its memory footprint."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool
    max_position_embeddings: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Architecture:
        """From a Hugging Face config.json (Qwen2, Llama, Mistral and look-alikes)."""
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        model_type = str(cfg.get("model_type", ""))
        return cls(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2 puts biases on q/k/v; Llama has none unless the config says so.
            attention_bias=bool(cfg.get("attention_bias", model_type in ("qwen2", "qwen"))),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        )

    def quantizable_params(self) -> int:
        """Weights of the decoder's linear layers: q, k, v, o and the gated MLP."""
        q_out = self.num_heads * self.head_dim
        kv_out = self.num_kv_heads * self.head_dim
        attention = self.hidden_size * q_out + 2 * self.hidden_size * kv_out + q_out * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + mlp)

    def other_params(self) -> int:
        """Embeddings, lm_head, norms and biases: kept in 16-bit by every quantization."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        biases = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        norms = 2 * self.hidden_size
        return embeddings + self.num_layers * (biases + norms) + self.hidden_size

    def total_params(self) -> int:
        return self.quantizable_params() + self.other_params()


def _qwen2(vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool, ctx: int) -> Architecture:
    return Architecture(vocab, hidden, inter, layers, heads, kv, hidden // heads, tied, True, ctx)


def _llama(
    vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, tied: bool, ctx: int, hd: int
) -> Architecture:
    return Architecture(vocab, hidden, inter, layers, heads, kv, hd, tied, False, ctx)


# Well-known models by normalised name (org, -Instruct/-Chat and quantization suffixes removed).
KNOWN_MODELS: dict[str, Architecture] = {
    "qwen2-0.5b": _qwen2(151936, 896, 4864, 24, 14, 2, True, 32768),
    "qwen2-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, True, 32768),
    "qwen2-7b": _qwen2(152064, 3584, 18944, 28, 28, 4, False, 32768),
    "qwen2.5-0.5b": _qwen2(151936, 896, 4864, 24, 14, 2, True, 32768),
    "qwen2.5-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, True, 32768),
    "qwen2.5-3b": _qwen2(151936, 2048, 11008, 36, 16, 2, True, 32768),
    "qwen2.5-7b": _qwen2(152064, 3584, 18944, 28, 28, 4, False, 32768),
    "qwen1.5-1.8b": _qwen2(151936, 2048, 5504, 24, 16, 16, False, 32768),
    "llama-3-8b": _llama(128256, 4096, 14336, 32, 32, 8, False, 8192, 128),
    "llama-3.1-8b": _llama(128256, 4096, 14336, 32, 32, 8, False, 131072, 128),
    "llama-3.2-1b": _llama(128256, 2048, 8192, 16, 32, 8, True, 131072, 64),
    "llama-3.2-3b": _llama(128256, 3072, 8192, 28, 24, 8, True, 131072, 128),
}

_SUFFIXES = re.compile(r"(-(instruct|chat|base|hf))?(-(awq|gptq(-int[48])?|int[48]|fp8|bnb(-4bit)?))*$")


def normalise_name(source: str) -> str:
    """'hf://Qwen/Qwen2.5-7B-Instruct-AWQ' -> 'qwen2.5-7b'."""
    name = source.split("://", 1)[-1].rstrip("/").rsplit("/", 1)[-1].lower()
    name = name.replace("meta-llama-", "llama-").replace("llama3", "llama-3")
    previous = None
    while previous != name:
        previous = name
        name = _SUFFIXES.sub("", name)
    return name


class UnknownModelError(LookupError):
    pass


def architecture_for(md: api.ModelDeployment, base_dir: Path | None = None) -> tuple[Architecture, str]:
    """The model's architecture and where it came from (its config.json or the built-in table)."""
    source = md.spec.model.source
    if source.startswith("file://"):
        path = Path(source.removeprefix("file://"))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        config = path / "config.json"
        if config.is_file():
            return Architecture.from_config(json.loads(config.read_text())), str(config)
    key = normalise_name(source)
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key], f"built-in table ({key})"
    raise UnknownModelError(
        f"spec.model.source {source!r}: no local config.json and not a known model "
        f"(known: {', '.join(sorted(KNOWN_MODELS))}); pass --config path/to/config.json"
    )


@dataclass
class Plan:
    architecture: Architecture
    origin: str
    gpu_memory_bytes: int
    gpus_per_replica: int
    quantization: str
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    kv_budget_bytes_per_gpu: float
    max_model_len: int
    max_tokens_in_cache: int
    fits: bool
    reasons: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def max_full_length_sequences(self) -> int:
        return self.max_tokens_in_cache // self.max_model_len if self.max_model_len else 0


def weight_bytes(arch: Architecture, quantization: str, dtype: str) -> float:
    """Bytes of all weights of one replica (before sharding)."""
    dense = DTYPE_BYTES[dtype]
    other_bytes = arch.other_params() * (2.0 if quantization != "none" else dense)
    per_weight = QUANTIZED_WEIGHT_BYTES.get(quantization, dense)
    return arch.quantizable_params() * per_weight + other_bytes


def kv_bytes_per_token(arch: Architecture, kv_cache_dtype: str, dtype: str, tensor_parallel: int = 1) -> float:
    """K and V for one token across all layers, on one GPU (KV heads are split across TP ranks,
    and replicated when there are fewer KV heads than ranks)."""
    element = KV_DTYPE_BYTES.get(kv_cache_dtype, DTYPE_BYTES[dtype])
    heads_per_gpu = max(1, math.ceil(arch.num_kv_heads / tensor_parallel))
    return 2 * arch.num_layers * heads_per_gpu * arch.head_dim * element


def plan(
    md: api.ModelDeployment,
    gpu_memory_bytes: int,
    *,
    architecture: Architecture | None = None,
    origin: str = "given",
    base_dir: Path | None = None,
) -> Plan:
    arch, origin = (architecture, origin) if architecture else architecture_for(md, base_dir)
    spec = md.spec
    tp = spec.engine.tensor_parallel_size
    pp = spec.engine.pipeline_parallel_size
    dtype = spec.model.dtype
    if dtype == "auto" and spec.model.quantization in ("awq", "gptq"):
        dtype = "float16"
    shards = tp * pp
    weights = weight_bytes(arch, spec.model.quantization, dtype) / shards
    # Pipeline stages hold a share of the layers, hence a share of each token's KV.
    kv_token = kv_bytes_per_token(arch, spec.engine.kv_cache_dtype, dtype, tp) / pp
    budget = gpu_memory_bytes * spec.engine.gpu_memory_utilization - weights - RUNTIME_OVERHEAD_BYTES
    max_len = spec.model.max_model_len or arch.max_position_embeddings
    tokens = max(0, int(budget // kv_token)) if budget > 0 else 0
    result = Plan(
        architecture=arch,
        origin=origin,
        gpu_memory_bytes=gpu_memory_bytes,
        gpus_per_replica=shards,
        quantization=spec.model.quantization,
        weight_bytes_per_gpu=weights,
        kv_bytes_per_token_per_gpu=kv_token,
        kv_budget_bytes_per_gpu=budget,
        max_model_len=max_len,
        max_tokens_in_cache=tokens,
        fits=budget > 0 and tokens >= max_len,
    )
    usable = gpu_memory_bytes * spec.engine.gpu_memory_utilization
    if budget <= 0:
        result.reasons.append(
            f"weights ({weights / GIB:.2f} GiB per GPU) + runtime overhead "
            f"({RUNTIME_OVERHEAD_BYTES / GIB:.2f} GiB) exceed the usable "
            f"{usable / GIB:.2f} GiB (gpuMemoryUtilization {spec.engine.gpu_memory_utilization})"
        )
    elif tokens < max_len:
        result.reasons.append(
            f"the KV cache holds {tokens} tokens, fewer than one full sequence of maxModelLen {max_len}"
        )
    if not result.fits:
        result.suggestions = _suggestions(md, arch, gpu_memory_bytes, dtype, max_len)
    return result


def _suggestions(
    md: api.ModelDeployment, arch: Architecture, gpu_memory_bytes: int, dtype: str, max_len: int
) -> list[str]:
    spec = md.spec
    out: list[str] = []
    shards = spec.engine.tensor_parallel_size * spec.engine.pipeline_parallel_size
    usable = gpu_memory_bytes * spec.engine.gpu_memory_utilization - RUNTIME_OVERHEAD_BYTES

    def tokens_with(quant: str, kv_dtype: str) -> int:
        qdtype = "float16" if quant in ("awq", "gptq") and dtype == "auto" else dtype
        w = weight_bytes(arch, quant, qdtype) / shards
        kv = kv_bytes_per_token(arch, kv_dtype, qdtype, spec.engine.tensor_parallel_size)
        kv /= spec.engine.pipeline_parallel_size
        return int((usable - w) // kv) if usable > w else 0

    current = tokens_with(spec.model.quantization, spec.engine.kv_cache_dtype)
    if current >= 256:
        out.append(f"set spec.model.maxModelLen to at most {current} (the KV cache holds {current} tokens)")
    if spec.engine.kv_cache_dtype == "auto":
        fp8 = tokens_with(spec.model.quantization, "fp8")
        if fp8 >= max_len:
            out.append(f"set spec.engine.kvCacheDtype: fp8 (room for {fp8} tokens)")
    order = ["fp8", "awq", "gptq"]
    for quant in order:
        if quant == spec.model.quantization:
            continue
        if QUANTIZED_WEIGHT_BYTES[quant] >= QUANTIZED_WEIGHT_BYTES.get(spec.model.quantization, 99):
            continue
        t = tokens_with(quant, spec.engine.kv_cache_dtype)
        label = "int8/fp8" if quant == "fp8" else f"int4 {quant.upper()}"
        if t >= max_len:
            out.append(f"serve an {label} checkpoint (spec.model.quantization: {quant}; room for {t} tokens)")
        elif t >= 256:
            out.append(
                f"serve an {label} checkpoint with spec.model.maxModelLen at most {t} "
                f"(spec.model.quantization: {quant})"
            )
    if not out:
        out.append("use a GPU with more memory or shard the model: raise engine.tensorParallelSize and resources.gpus")
    return out


def parse_size(text: str) -> int:
    """'8GiB', '80G', '24Gi', '16384Mi' -> bytes (binary units; 'G' is read as GiB like GPU specs)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B?|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read memory size {text!r}: expected e.g. 8GiB, 24Gi, 80G or 16384Mi")
    number = float(match.group(1))
    unit = match.group(2).upper()
    scale = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(number * scale)


def format_plan(p: Plan) -> str:
    a = p.architecture
    lines = [
        f"model architecture     {a.total_params() / 1e9:.2f} B parameters, {a.num_layers} layers, "
        f"{a.num_kv_heads} KV heads x head_dim {a.head_dim}  [{p.origin}]",
        f"GPU                    {p.gpu_memory_bytes / GIB:.1f} GiB x {p.gpus_per_replica} per replica",
        f"weights per GPU        {p.weight_bytes_per_gpu / GIB:.2f} GiB  (quantization: {p.quantization})",
        f"KV cache per token     {p.kv_bytes_per_token_per_gpu / 1024:.1f} KiB per GPU",
        f"KV cache budget        {max(p.kv_budget_bytes_per_gpu, 0) / GIB:.2f} GiB per GPU "
        f"(after {RUNTIME_OVERHEAD_BYTES / GIB:.1f} GiB runtime overhead)",
        f"tokens in KV cache     {p.max_tokens_in_cache}",
        f"maxModelLen            {p.max_model_len}  -> {p.max_full_length_sequences} full-length sequences at once",
    ]
    if p.fits:
        lines.append("verdict                FITS")
    else:
        lines.append("verdict                DOES NOT FIT: " + "; ".join(p.reasons))
        lines.extend(f"  try: {s}" for s in p.suggestions)
    return "\n".join(lines)

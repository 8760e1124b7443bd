"""Tiny random Qwen2 models with a ChatML tokenizer, generated offline in seconds.

The tests and `make demo` serve these through the very same stack a real model uses; a real
model is one `spec.model.source` away. Everything is deterministic for a given seed: the
tokenizer is trained on a fixed built-in corpus and the weights come from a seeded generator.

Sizes:
- ``tiny``: hidden 128, 2 layers, 2 heads / 1 KV head, head_dim 64 (about 1.4 MB in float32):
  the engine does almost nothing, so it measures the framework.
- ``medium``: hidden 512, 8 layers, 8 heads / 2 KV heads, head_dim 64, intermediate 1536
  (24 M parameters): the engine does real work; the model to compare serving stacks with.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512

# Qwen2's ChatML template (the system turn is optional), with a generation prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "intermediate_size": 256,
    },
    "medium": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "intermediate_size": 1536,
    },
}

_CORPUS_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "by",
    "at",
    "be",
    "this",
    "from",
    "or",
    "are",
    "have",
    "not",
    "model",
    "models",
    "serve",
    "serving",
    "request",
    "requests",
    "token",
    "tokens",
    "stream",
    "streaming",
    "chat",
    "completion",
    "replica",
    "replicas",
    "cluster",
    "kubernetes",
    "ray",
    "vllm",
    "engine",
    "cache",
    "memory",
    "gpu",
    "cpu",
    "latency",
    "throughput",
    "hello",
    "world",
    "user",
    "assistant",
    "system",
    "answer",
    "question",
    "please",
    "thank",
    "you",
    "yes",
    "no",
    "what",
    "why",
    "how",
    "when",
    "where",
    "who",
    "which",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "zero",
    "number",
    "numbers",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "light",
    "wave",
    "scattering",
    "sky",
    "blue",
    "red",
    "green",
    "rayleigh",
    "deployment",
    "operator",
    "gateway",
    "metric",
    "metrics",
    "key",
    "keys",
    "rate",
    "limit",
    "limits",
    "queue",
    "depth",
    "time",
]


def _corpus(seed: int) -> list[str]:
    """A fixed pseudo-random text corpus (ASCII words, digits, punctuation, ChatML markup)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        n = rng.randint(3, 14)
        words = [rng.choice(_CORPUS_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.append(str(rng.randint(0, 9999)))
        punct = rng.choice([".", "?", "!", ",", ":", ""])
        line = " ".join(words) + punct
        lines.append(line.capitalize() if rng.random() < 0.5 else line)
    lines += ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>"] * 20
    return lines


def build_tokenizer(seed: int = 0) -> Any:
    """A byte-level BPE tokenizer with ~512 tokens and Qwen2's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    return tok


def make_tiny_model(out: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random Qwen2 model + ChatML tokenizer to `out` (created) and return it."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {sorted(SIZES)}")
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = build_tokenizer(seed)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    vocab = raw.get_vocab_size()
    eos_id = raw.token_to_id("<|im_end|>")
    pad_id = raw.token_to_id("<|endoftext|>")

    config = Qwen2Config(
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    model: Any = Qwen2ForCausalLM(config)
    model = model.to(torch.float32)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Older vLLM/transformers read the template from tokenizer_config.json only.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", CHATML_TEMPLATE)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def make_tiny_lora(base: str | Path, out: str | Path, *, rank: int = 8, seed: int = 1) -> Path:
    """Write a LoRA adapter with random (non-zero) weights for the model in `base`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A and B: the adapter changes the output
    )
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    # vLLM resolves the base by path; record the one it was made for.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(base).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def merge_lora(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Merge a LoRA adapter into its base weights (peft `merge_and_unload`) and save a full model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter, out = Path(base), Path(adapter), Path(out)
    for p, what in ((base, "base model"), (adapter, "adapter")):
        if not p.is_dir():
            raise FileNotFoundError(f"{what} directory not found: {p}")
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter_config.json: not a peft LoRA adapter")
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    gen = base / "generation_config.json"
    if gen.is_file():
        (out / "generation_config.json").write_text(gen.read_text())
    _ = torch  # imported for its side effect of loading the backend before peft
    return out


def _ensure(out: Path, marker: str, make: Any) -> Path:
    """Make `out` once: build in a sibling temp dir and rename, so concurrent makers never collide."""
    import os
    import shutil
    import tempfile

    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        make(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_tiny_model(out: str | Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """The tiny model in `out`, made if missing (safe when several processes race)."""
    return _ensure(Path(out), "model.safetensors", lambda d: make_tiny_model(d, size=size, seed=seed))


def ensure_tiny_lora(base: str | Path, out: str | Path, *, seed: int = 1) -> Path:
    """A random LoRA adapter for `base` in `out`, made if missing."""
    return _ensure(Path(out), "adapter_model.safetensors", lambda d: make_tiny_lora(base, d, seed=seed))

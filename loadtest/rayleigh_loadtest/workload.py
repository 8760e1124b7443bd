"""What is sent: synthetic prompts of a given token length, or a user's JSONL dataset.

Synthetic prompts are random sequences of common English words, a different one per request (so a
server's prefix cache does not turn the run into a cache benchmark). With the model's tokenizer
(`--tokenizer PATH`, a local folder; loaded only then) each prompt has exactly
the requested number of tokens; without it the length is approximate (these words are about one
token each in the usual BPE vocabularies) and the results say so.

Datasets are JSONL, one object per line, in any of these shapes:
  ShareGPT   {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}
  OpenAI     {"messages": [{"role": "user", "content": "..."}], "max_tokens": 64}
  plain      {"prompt": "...", "max_tokens": 64}
The first human/user turn is the prompt; the reference answer that follows it (ShareGPT) sets the
output length unless `--output-tokens` is given.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was", "at", "by", "be", "this",
    "are", "from", "or", "have", "an", "not", "they", "which", "you", "one", "had", "but", "were", "all", "we",
    "can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other",
    "its", "may", "these", "about", "two", "time", "first", "new", "very", "out", "could", "also", "like", "than",
    "into", "only", "some", "what", "make", "over", "such", "after", "most", "good", "where", "just", "those",
    "many", "through", "back", "year", "work", "well", "way", "even", "because", "any", "people", "day", "each",
    "how",
)  # fmt: skip

CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text when no tokenizer is at hand


class Tokenizer:
    """The model's tokenizer, from a local folder.

    A folder with `tokenizer.json` is read with the light `tokenizers` library (what transformers'
    fast tokenizers run on, seconds faster to import); any other through `transformers`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fast: Any = None
        self._tok: Any = None
        file = Path(path) / "tokenizer.json"
        if file.is_file():
            try:
                from tokenizers import Tokenizer as FastTokenizer

                self._fast = FastTokenizer.from_file(str(file))
                return
            except ImportError:
                pass
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError("--tokenizer needs the `transformers` package (pip install transformers)") from exc
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        if self._fast is not None:
            return str(self._fast.decode(list(ids), skip_special_tokens=True))
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def count(self, text: str) -> int:
        return len(self.encode(text))


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]  # for the chat API
    text: str  # for the completions API (the user content, joined)
    prompt_tokens: int  # exact with a tokenizer, else approximate
    max_tokens: int


@dataclass
class Workload:
    prompts: list[Prompt]
    kind: str  # "synthetic" | "dataset"
    exact: bool  # prompt lengths counted with the model's tokenizer
    prompt_tokens: int | None = None  # the requested length (synthetic)
    output_tokens: int | None = None  # the requested max_tokens, when one for all
    dataset: str | None = None
    tokenizer: Tokenizer | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("the workload has no prompts")

    def __getitem__(self, i: int) -> Prompt:
        return self.prompts[i % len(self.prompts)]

    def describe(self) -> dict[str, Any]:
        lengths = [p.prompt_tokens for p in self.prompts]
        return {
            "kind": self.kind,
            "prompts": len(self.prompts),
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
            "prompt_tokens_exact": self.exact,
            "prompt_tokens_note": (
                f"counted with the tokenizer at {self.tokenizer.path} (user content, before the chat template)"
                if self.tokenizer
                else "approximate: no tokenizer given (--tokenizer PATH); the server's usage has the real count"
            ),
            "output_tokens": self.output_tokens,
            "dataset": self.dataset,
            "tokenizer": self.tokenizer.path if self.tokenizer else None,
        }


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _exact_prompt(words: list[str], n: int, tok: Tokenizer) -> tuple[str, int]:
    """Text of exactly `n` tokens when the tokenizer allows it (decode/encode rarely round-trips exactly)."""
    ids = tok.encode(" ".join(words))
    text = tok.decode(ids[:n])
    for _ in range(4):
        got = tok.encode(text)
        if len(got) == n:
            break
        text = tok.decode(got[:n]) if len(got) > n else text + " " + tok.decode(ids[len(got) : n])
    return text, tok.count(text)


def synthetic(
    prompt_tokens: int,
    output_tokens: int,
    *,
    count: int = 64,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> Workload:
    """`count` different prompts of `prompt_tokens` tokens each, asking for `output_tokens` tokens."""
    if prompt_tokens < 1 or output_tokens < 1:
        raise ValueError("--prompt-tokens and --output-tokens must be at least 1")
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        # Twice the words needed: a word is at least one token, often more with a small vocabulary.
        words = [rng.choice(WORDS) for _ in range(prompt_tokens * 2 if tokenizer else prompt_tokens)]
        if tokenizer is not None:
            text, n = _exact_prompt(words, prompt_tokens, tokenizer)
        else:
            text, n = " ".join(words), prompt_tokens
        prompts.append(Prompt(_user(text), text, n, output_tokens))
    return Workload(prompts, "synthetic", tokenizer is not None, prompt_tokens, output_tokens, tokenizer=tokenizer)


def _length(text: str, tok: Tokenizer | None) -> int:
    return tok.count(text) if tok else max(1, round(len(text) / CHARS_PER_TOKEN))


def _parse_line(obj: Any, output_tokens: int | None, tok: Tokenizer | None) -> Prompt | None:
    if not isinstance(obj, dict):
        return None
    max_tokens = obj.get("max_tokens")
    if isinstance(obj.get("conversations"), list):
        turns = [t for t in obj["conversations"] if isinstance(t, dict)]
        first = next((i for i, t in enumerate(turns) if t.get("from") in ("human", "user")), None)
        if first is None:
            return None
        text = str(turns[first].get("value") or "")
        answer = turns[first + 1].get("value") if first + 1 < len(turns) else None
        if max_tokens is None and isinstance(answer, str) and answer:
            max_tokens = _length(answer, tok)
        messages = _user(text)
    elif isinstance(obj.get("messages"), list):
        messages = [
            {"role": str(m.get("role")), "content": str(m.get("content") or "")}
            for m in obj["messages"]
            if isinstance(m, dict)
        ]
        text = "\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    elif isinstance(obj.get("prompt"), str):
        text = obj["prompt"]
        messages = _user(text)
    else:
        return None
    if not text.strip():
        return None
    if output_tokens is not None:
        max_tokens = output_tokens
    if not isinstance(max_tokens, int) or max_tokens < 1:
        max_tokens = 128
    return Prompt(messages, text, _length(text, tok), max_tokens)


def from_dataset(
    path: str | Path,
    *,
    output_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int = 0,
    limit: int = 10_000,
) -> Workload:
    """Prompts from a JSONL file (shapes in the module docstring), shuffled with `seed`, at most `limit`."""
    prompts: list[Prompt] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON: {exc}") from exc
            prompt = _parse_line(obj, output_tokens, tokenizer)
            if prompt is not None:
                prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no usable prompts (see docs/BENCH.md for the accepted shapes)")
    random.Random(seed).shuffle(prompts)
    return Workload(
        prompts[:limit],
        "dataset",
        tokenizer is not None,
        output_tokens=output_tokens,
        dataset=str(path),
        tokenizer=tokenizer,
    )

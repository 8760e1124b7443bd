"""What a request is charged: its token budget (what the engine may generate, which the gateway
also writes into the forwarded body), the buckets it takes from, their costs, and the 429 answer
when a bucket says no. Pure functions; the Redis call itself is in ratelimit.py and the admission
step (admission.py) puts the two together.

The charge must hold whatever the backend does with the body, so the fields that size a
generation are checked as strictly as OpenAI does, not as leniently as vLLM's pydantic models
(which turn "100000", 100.0, true or "yes" into numbers and booleans): `max_tokens`,
`max_completion_tokens`, `n`, `best_of` must be JSON integers >= 1 (or null/absent), `stream`
a JSON boolean (or null/absent); anything else is a 400 naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayleigh_api import RateLimits

from .errors import GatewayError, retry_after
from .keys import KeyRecord
from .policy import ratelimit_headers
from .ratelimit import BUCKET_PREFIX, Bucket, Decision


def route_buckets(route_key: str, rl: RateLimits, ident: str, record: KeyRecord | None) -> tuple[Bucket, ...]:
    """The buckets a caller (`ident`, its key record if any) takes from on the route `route_key`:
    the route's per-caller limits, the key's own limits, then the route's limits for all callers."""
    out: list[Bucket] = []
    if rl.requests_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}kr:{route_key}:{ident}:r", rl.requests_per_minute, False))
    if rl.tokens_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}kr:{route_key}:{ident}:t", rl.tokens_per_minute, True))
    if record is not None and record.requests_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}k:{ident}:r", record.requests_per_minute, False))
    if record is not None and record.tokens_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}k:{ident}:t", record.tokens_per_minute, True))
    if rl.model_requests_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}m:{route_key}:r", rl.model_requests_per_minute, False))
    if rl.model_tokens_per_minute:
        out.append(Bucket(f"{BUCKET_PREFIX}m:{route_key}:t", rl.model_tokens_per_minute, True))
    return tuple(out)


# What /v1/completions generates without max_tokens (OpenAI's default, which vLLM applies too).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(slots=True)
class Charge:
    """What admission charges a request and what it must change in the body it forwards."""

    tokens: int  # charged up front: prompt estimate + budget x sequences x prompts
    writes: dict[str, Any]  # fields to set in the forwarded body (empty: forward the bytes as they came)
    stream: bool  # the backend will stream (exactly `"stream": true`; other values are refused)


def invalid_param(param: str, message: str, code: str = "invalid_type") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param=param)


# The largest count the gateway takes (int32, what the OpenAPI document states): larger numbers
# only ever come from a caller probing it, and some JSON parsers turn them into floats.
MAX_COUNT = 2**31 - 1


def _count(payload: dict[str, Any], name: str) -> int | None:
    """A positive JSON integer field up to MAX_COUNT: its value, None when absent or null, else the 400."""
    value = payload.get(name)
    if value is None:
        return None
    if type(value) is not int:  # bool, float, str: refused, the backend would coerce them
        raise invalid_param(
            name, f"Invalid type for '{name}': expected an integer, got {type(value).__name__} ({value!r:.40})"
        )
    if value < 1:
        raise invalid_param(
            name, f"Invalid '{name}': {value}; expected an integer of at least 1", "integer_below_min_value"
        )
    if value > MAX_COUNT:
        raise invalid_param(
            name, f"Invalid '{name}': {value}; expected an integer of at most {MAX_COUNT}", "integer_above_max_value"
        )
    return value


def _prompts(payload: dict[str, Any]) -> int:
    """How many prompts a /v1/completions request carries (each one gets `n` completions)."""
    count = 0
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        count += len(prompt)  # a batch: list[str] or list[list[int]]
    elif prompt is not None:
        count += 1  # one prompt: a string or list[int]
    embeds = payload.get("prompt_embeds")
    if isinstance(embeds, list):
        count += len(embeds)
    elif embeds is not None:
        count += 1
    return max(1, count)


def request_charge(
    payload: dict[str, Any], body_len: int, kind: str, default_max_tokens: int, cap: int | None
) -> Charge:
    """The tokens a request may make the engine process, and the body fields that hold it to that.

    `kind`: "chat", "completions" or "embeddings" (prompt only). The completion budget is the
    request's `max_tokens` / `max_completion_tokens` (chat; the larger when both are sent),
    lowered to `cap` (route maxTokens / maxModelLen) and then written back; when neither is sent,
    the gateway writes `max_tokens`: `default_max_tokens` for chat, at most 16 for completions
    (OpenAI's default), within `cap`. It is multiplied by the sequences generated (`n`, and `best_of` on
    completions) and by the number of prompts of a completions batch.
    """
    prompt = body_len // 4 + 1  # about 4 bytes of JSON per token: an over-estimate for text
    if kind == "embeddings":
        return Charge(prompt, {}, False)
    stream = payload.get("stream")
    if stream is not None and type(stream) is not bool:
        raise invalid_param("stream", f"Invalid type for 'stream': expected a boolean, got {type(stream).__name__}")
    chat = kind == "chat"
    fields = ("max_tokens", "max_completion_tokens") if chat else ("max_tokens",)
    sent = [(name, value) for name in fields if (value := _count(payload, name)) is not None]
    n = _count(payload, "n") or 1
    best_of = None if chat else _count(payload, "best_of")
    writes: dict[str, Any] = {}
    if sent:
        budget = 0
        for name, value in sent:
            if cap is not None and value > cap:
                value = writes[name] = cap
            budget = max(budget, value)
    else:
        budget = default_max_tokens if chat else min(default_max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
        if cap is not None:
            budget = min(budget, cap)
        writes["max_tokens"] = budget
    sequences = max(n, best_of or 1)
    prompts = 1 if chat else _prompts(payload)
    return Charge(prompt + budget * sequences * prompts, writes, stream is True)


def request_estimate(payload: dict[str, Any], body_len: int, default_max_tokens: int, embeddings: bool) -> int:
    """Tokens charged up front for a chat (or embeddings) request: `request_charge(...).tokens`."""
    kind = "embeddings" if embeddings else "chat"
    return request_charge(payload, body_len, kind, default_max_tokens, None).tokens


def bucket_costs(buckets: Sequence[Bucket], estimate: int) -> list[int]:
    """1 from each request bucket, the token estimate from each token bucket."""
    return [estimate if b.tokens else 1 for b in buckets]


def limit_hit(buckets: Sequence[Bucket], decision: Decision, costs: Sequence[int]) -> Bucket:
    """Which limit said no: the first bucket below its cost."""
    for bucket, level, cost in zip(buckets, decision.levels, costs, strict=False):
        if level < cost:
            return bucket
    return buckets[0]


def rejection(hit: Bucket, decision: Decision, estimate: int) -> GatewayError:
    """The 429 for a request that `decision` did not admit (`hit`: the limit that said no)."""
    headers = ratelimit_headers(decision)
    what = "tokens" if hit.tokens else "requests"
    scope = "model" if ":m:" in hit.key else "key"
    if decision.wait_ms < 0:
        return GatewayError(
            429,
            f"This request needs about {estimate} tokens but the {scope} limit is {hit.per_minute} tokens "
            "per minute; lower max_tokens or the prompt",
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            [retry_after(60), *headers],
        )
    retry = max(1, math.ceil(decision.wait_ms / 1000))
    return GatewayError(
        429,
        f"Rate limit reached for {what} per minute ({scope} limit {hit.per_minute}/min); retry after {retry} s",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        [retry_after(retry), *headers],
    )

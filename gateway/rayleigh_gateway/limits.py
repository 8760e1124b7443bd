"""What a request is charged: its token estimate, the buckets it takes from, their costs, and the
429 answer when a bucket says no. Pure functions; the Redis call itself is in ratelimit.py and
the admission step (admission.py) puts the two together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rayleigh_api import RateLimits

from .errors import GatewayError
from .keys import KeyRecord
from .policy import estimate_tokens, ratelimit_headers
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


def request_estimate(payload: dict[str, Any], body_len: int, default_max_tokens: int, embeddings: bool) -> int:
    """Tokens charged up front: a prompt estimate from the body size plus `max_tokens` (or
    `max_completion_tokens`, or the configured default) for the completion."""
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        max_tokens = payload.get("max_completion_tokens")
    return estimate_tokens(body_len, max_tokens, default_max_tokens, embeddings)


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
            [(b"retry-after", b"60"), *headers],
        )
    retry = max(1, math.ceil(decision.wait_ms / 1000))
    return GatewayError(
        429,
        f"Rate limit reached for {what} per minute ({scope} limit {hit.per_minute}/min); retry after {retry} s",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        [(b"retry-after", str(retry).encode()), *headers],
    )

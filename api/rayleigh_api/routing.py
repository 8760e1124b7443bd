"""spec.routing, and the pure routing decision both the gateway and the Serve router use.

Which replica of a model serves a request: `choose()` decides, from the request's affinity key,
each replica's requests in flight and the strategy, and says why (a bounded set of reasons). The
affinity key (`affinity_key()`) names what a request shares with earlier ones: the model or
adapter name plus the start of its conversation (every message up to the first user message), or
the first `PROMPT_PREFIX_CHARS` characters of a completion prompt. Every turn of one chat has the
same key, so it lands where vLLM's prefix cache already holds its system prompt and history.

Prefix-aware routing is bounded-load rendezvous hashing: each (key, replica) pair gets a score
from a hash, and a key's replicas are ranked by score. The request goes to the first replica in
that order whose load stays within `balanceFactor` x the mean (HAProxy's `hash-balance-factor`,
Mirrokni et al.'s consistent hashing with bounded loads); the first replica always qualifies when
loads are even, and the least loaded always does. No state is shared: every Serve proxy (one per
node) ranks the same key the same way, and adding or removing a replica moves only the keys that
ranked it first.

This module imports nothing outside the standard library and pydantic: the gateway computes the key
(it has parsed the body), the Serve router in `rayleigh_serving.router` takes the decision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from rayleigh_api.base import ApiModel

Strategy = Literal["prefix-aware", "least-loaded", "round-robin"]
STRATEGIES: tuple[str, ...] = ("prefix-aware", "least-loaded", "round-robin")
# The request header that carries the affinity key from the gateway to the Serve router. Ray's proxy
# parses this header (RAY_SERVE_SESSION_ID_HEADER_KEY, default x-session-id) into the request
# metadata every router sees; the body is not there yet when a replica is picked.
AFFINITY_HEADER = "x-session-id"
# A completion prompt's key covers this many leading characters (chat keys cover whole messages).
PROMPT_PREFIX_CHARS = 512
# Why a replica was picked: the `reason` label of rayleigh_routing_decisions_total.
REASONS: tuple[str, ...] = ("affinity", "spill", "no_key", "least_loaded", "round_robin", "replica_full")
_TWO_64 = float(1 << 64)


class Routing(ApiModel):
    """How requests are spread over the replicas of this model (the Serve request router)."""

    strategy: Strategy = Field(
        default="prefix-aware",
        description="prefix-aware: send each conversation to the replica whose vLLM prefix cache most likely "
        "holds its start (system prompt and history; the key includes the model or adapter name), spilling to "
        "the next replica when it is loaded above balanceFactor x the mean. least-loaded: the replica with the "
        "fewest requests in flight. round-robin: each replica in turn.",
    )
    balance_factor: float = Field(
        default=1.25,
        ge=1.0,
        le=10.0,
        description="prefix-aware only: a replica keeps a request only while its requests in flight, this one "
        "included, stay within ceil(balanceFactor x mean); 1.0 balances strictly, larger values keep more "
        "requests on the replica that holds their prefix.",
    )


@dataclass(frozen=True, slots=True)
class Choice:
    """A routing decision: the replica, why, and the order to try replicas in if it refuses."""

    replica: str
    reason: str
    ranked: tuple[str, ...]


def _text(value: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text(part) for part in value)
    if isinstance(value, Mapping):
        text = value.get("text")
        if isinstance(text, str):
            return text
        image = value.get("image_url")
        if isinstance(image, Mapping) and isinstance(image.get("url"), str):
            return str(image["url"])
        return _text(value.get("content"))
    return ""


def _field(message: Any, name: str) -> Any:
    if isinstance(message, Mapping):
        return message.get(name)
    return getattr(message, name, None)


def anchor_text(messages: Any = None, prompt: Any = None) -> str | None:
    """What a request's affinity key covers: its messages up to and including the first user message
    (chat), or the first PROMPT_PREFIX_CHARS characters of its prompt (completions); None if neither."""
    if isinstance(messages, Sequence) and not isinstance(messages, str | bytes) and messages:
        parts = []
        for message in messages:
            role = _field(message, "role")
            parts.append(f"{role}\x1f{_text(_field(message, 'content'))}")
            if role == "user":
                break
        return "\x1e".join(parts)
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0] if isinstance(prompt[0], str | list) else prompt
        if isinstance(prompt, list):  # token ids
            return ",".join(str(t) for t in prompt[:PROMPT_PREFIX_CHARS])
    if isinstance(prompt, str) and prompt:
        return prompt[:PROMPT_PREFIX_CHARS]
    return None


def affinity_key(model: Any, messages: Any = None, prompt: Any = None) -> str | None:
    """The affinity key of an OpenAI chat or completion request: a short hash of the model (or LoRA
    adapter) name and the request's anchor text; None when the request has neither messages nor prompt."""
    anchor = anchor_text(messages, prompt)
    if anchor is None:
        return None
    data = f"{model if isinstance(model, str) else ''}\x00{anchor}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def payload_key(payload: Mapping[str, Any]) -> str | None:
    """`affinity_key` of a parsed request body."""
    return affinity_key(payload.get("model"), payload.get("messages"), payload.get("prompt"))


def score(key: str, replica: str) -> float:
    """The rendezvous score of (key, replica): a hash as a float in (0, 1), the same in every process."""
    digest = hashlib.blake2b(f"{key}\x00{replica}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


def rank(key: str, replicas: Sequence[str]) -> list[str]:
    """The replicas in the key's order of preference (highest rendezvous score first)."""
    return sorted(replicas, key=lambda r: (-score(key, r), r))


def load_bound(loads: Mapping[str, int], balance_factor: float) -> int:
    """The most requests in flight (the new one included) a replica may have to take a request."""
    total = sum(loads.values()) + 1
    return max(1, math.ceil(balance_factor * total / len(loads) - 1e-9))


def choose(
    strategy: str,
    loads: Mapping[str, int],
    *,
    key: str | None = None,
    capacity: Mapping[str, int] | None = None,
    balance_factor: float = 1.25,
    turn: int = 0,
) -> Choice:
    """Pick a replica for one request.

    `loads`: requests in flight on each routable replica (its id -> count). `capacity`: the most a
    replica accepts (Serve's max_ongoing_requests); a full replica is picked only when all are full.
    `turn`: a counter the caller advances per request (round-robin position, tie-breaks).
    """
    if not loads:
        raise ValueError("no replica to choose from")
    ids = sorted(loads)
    cap = capacity or {}
    open_ids = [r for r in ids if loads[r] < cap.get(r, math.inf)] or ids
    by_load = sorted(open_ids, key=lambda r: (loads[r], (ids.index(r) - turn) % len(ids)))
    if strategy == "round-robin":
        first = open_ids[turn % len(open_ids)]
        return Choice(first, "round_robin", (first, *[r for r in by_load if r != first]))
    if strategy == "least-loaded":
        return Choice(by_load[0], "least_loaded", tuple(by_load))
    if strategy != "prefix-aware":
        raise ValueError(f"unknown routing strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if key is None:
        return Choice(by_load[0], "no_key", tuple(by_load))
    order = [r for r in rank(key, ids) if r in open_ids]
    bound = load_bound({r: loads[r] for r in ids}, balance_factor)
    for i, r in enumerate(order):
        if loads[r] + 1 <= bound:
            return Choice(r, "affinity" if i == 0 else "spill", (r, *[x for x in order if x != r]))
    # Only reachable when full replicas were left out: the least loaded open one.
    return Choice(by_load[0], "spill", tuple(by_load))

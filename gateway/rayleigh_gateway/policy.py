"""Pure policy pieces of the gateway: client address, allow-lists, rate-limit headers, estimates."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence

from .ratelimit import Bucket, Decision

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, in which case the
    right-most X-Forwarded-For hop that is not itself a trusted proxy. A header sent by an
    untrusted peer is ignored, so a client cannot spoof its address."""
    if not forwarded_for or not trusted:
        return peer
    peer_ip = parse_ip(peer)
    if peer_ip is None or not in_networks(peer_ip, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = parse_ip(hop)
        if ip is None:
            return hop[:64]  # unparseable: an untrusted client (fails any allow-list); bounded for logs
        if not in_networks(ip, trusted):
            return str(ip)
    return hops[0][:64] if hops else peer


def address_allowed(address: str, networks: Sequence[IPNetwork]) -> bool:
    if not networks:
        return True
    ip = parse_ip(address)
    return ip is not None and in_networks(ip, networks)


def estimate_tokens(body_len: int, max_tokens: object, default_max_tokens: int, embeddings: bool) -> int:
    """Tokens charged before the request: a prompt estimate (about 4 bytes of JSON per token,
    an over-estimate for the prompt text) plus the completion budget."""
    prompt = body_len // 4 + 1
    if embeddings:
        return prompt
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0:
        return prompt + max_tokens
    return prompt + default_max_tokens


def format_reset(ms: float) -> str:
    """OpenAI-style durations: `20ms`, `1.5s`, `6m0s`."""
    ms = max(0.0, ms)
    if ms < 1000:
        return f"{math.ceil(ms)}ms"
    seconds = ms / 1000.0
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes = int(seconds // 60)
    return f"{minutes}m{int(seconds - minutes * 60)}s"


def ratelimit_headers(decision: Decision) -> list[tuple[bytes, bytes]]:
    """x-ratelimit-* headers for the tightest request bucket and the tightest token bucket."""
    best: dict[bool, tuple[Bucket, int]] = {}
    for bucket, level in zip(decision.buckets, decision.levels, strict=False):
        current = best.get(bucket.tokens)
        if current is None or level * current[0].per_minute < current[1] * bucket.per_minute:
            best[bucket.tokens] = (bucket, level)
    headers: list[tuple[bytes, bytes]] = []
    for tokens, name in ((False, b"requests"), (True, b"tokens")):
        if tokens not in best:
            continue
        bucket, level = best[tokens]
        remaining = max(0, int(level))
        reset_ms = (bucket.per_minute - level) / bucket.rate_per_ms
        headers += [
            (b"x-ratelimit-limit-" + name, str(bucket.per_minute).encode()),
            (b"x-ratelimit-remaining-" + name, str(remaining).encode()),
            (b"x-ratelimit-reset-" + name, format_reset(reset_ms).encode()),
        ]
    return headers


_PROMPT_RE = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_RE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def usage_from_json(data: bytes) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) from an OpenAI response body, without a full parse."""
    at = data.rfind(b'"usage"')
    if at < 0:
        return None
    tail = data[at:]
    p = _PROMPT_RE.search(tail)
    c = _COMPLETION_RE.search(tail)
    if p is None:
        return None
    return int(p.group(1)), int(c.group(1)) if c else 0

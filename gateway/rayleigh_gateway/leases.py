"""Local shares of the Redis token buckets: what lets a gateway process admit without a Redis
round trip and still never admit more than the limit.

A process leases a share of a bucket: it takes up to L tokens from the bucket in Redis, in the
same atomic script as a request's own take (or in a background refill), and then admits
requests from that share in memory. Tokens in a share were taken out of the Redis bucket, so
every process's shares plus the Redis level never hold more than the bucket ever had (burst +
rate x elapsed): N processes together never admit more than the limit. What leasing costs is
under-admission: tokens parked in one process's share cannot serve a request that arrives at
another process. A share is at most L = floor(capacity x fraction) tokens (lease size adapts to
the process's own demand: about `horizon` seconds of it), is refilled in the background when it
falls below half its target, and is given back to Redis after `idle_seconds` without use and at
shutdown. Buckets too small for a lease of two requests' cost are not leased: every request
takes from Redis directly, exactly as without leases.

This module is the bookkeeping only (no I/O); `ratelimit.RateLimiter` does the Redis calls.
The math is in docs/GATEWAY.md ("Rate limits").
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class BucketLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def per_minute(self) -> int: ...
    @property
    def rate_per_ms(self) -> float: ...


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """`fraction`: the largest share of a bucket one process may hold (L = capacity x fraction);
    0 turns leasing off (every request takes from Redis). `horizon`: seconds of the process's own
    demand a lease aims to cover. `idle_seconds`: a share unused this long goes back to Redis."""

    fraction: float = 1 / 32
    horizon: float = 0.25
    idle_seconds: float = 2.0
    max_shares: int = 50_000

    def max_lease(self, capacity: int) -> int:
        return int(capacity * self.fraction)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LeaseConfig:
        d = cls()
        return cls(
            fraction=float(env.get("RAYLEIGH_GATEWAY_LEASE_FRACTION", d.fraction)),
            horizon=float(env.get("RAYLEIGH_GATEWAY_LEASE_HORIZON_SECONDS", d.horizon)),
            idle_seconds=float(env.get("RAYLEIGH_GATEWAY_LEASE_IDLE_SECONDS", d.idle_seconds)),
        )


@dataclass(slots=True)
class Share:
    """This process's share of one bucket (tokens taken from Redis and not yet admitted)."""

    cap: int  # the bucket's capacity (per minute)
    rate: float  # its refill per ms
    max_lease: int  # L: level + pending never exceed it
    level: int = 0  # tokens held
    target: int = 0  # lease size aimed at now (adapts to demand), <= max_lease
    pending: int = 0  # tokens asked for by Redis calls in flight
    redis_level: int = 0  # the bucket's level in Redis at the last call (for headers)
    last_use: float = 0.0
    since: float = 0.0  # start of the demand window
    used: int = 0  # tokens admitted since `since`
    cost: int = 1  # the last request's cost
    waiter: Any = None  # an asyncio future done when the lease in flight for this share lands


@dataclass(slots=True)
class Reservation:
    """What the request path asks of Redis when the shares alone cannot admit a request:
    per bucket, the share (if leased), the part of the cost the share covers (already taken
    from it), the rest (`need`, taken from Redis or the request is refused) and the extra
    tokens to lease (`want`)."""

    shares: list[Share | None]
    covers: list[int]
    needs: list[int]
    wants: list[int]
    costs: Sequence[int]


@dataclass(slots=True)
class RefillPlan:
    keys: list[str] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)
    wants: list[int] = field(default_factory=list)


class LeaseBook:
    """Every share this process holds, keyed by bucket key."""

    def __init__(self, config: LeaseConfig | None = None) -> None:
        self.config = config or LeaseConfig()
        self.shares: dict[str, Share] = {}
        self.low: dict[str, Share] = {}  # shares below half their target, to refill
        self.local_admits = 0  # requests admitted from the shares alone (no Redis call)
        self.remote_takes = 0  # request-path Redis calls

    # ------------------------------------------------------------ the request path

    def take(self, buckets: Sequence[BucketLike], costs: Sequence[int], now: float) -> list[int] | None:
        """Admit from the shares alone, all or nothing; the levels to report, or None."""
        shares = self.shares
        picked: list[Share] = []
        for bucket, cost in zip(buckets, costs, strict=True):
            share = shares.get(bucket.key)
            if share is None or share.level < cost or share.cap != bucket.per_minute:
                return None
            picked.append(share)
        levels: list[int] = []
        for bucket, share, cost in zip(buckets, picked, costs, strict=True):
            share.level -= cost
            share.used += cost
            share.cost = cost
            share.last_use = now
            if share.level * 2 < share.target and not share.pending:
                self.low[bucket.key] = share
            levels.append(share.redis_level + share.level)
        self.local_admits += 1
        return levels

    def reserve(self, buckets: Sequence[BucketLike], costs: Sequence[int], now: float) -> Reservation:
        """Before a request-path Redis call: take what the shares can cover and decide, per
        bucket, the rest to take from Redis and the tokens to lease on top (up to the target)."""
        config = self.config
        n = len(buckets)
        res = Reservation([None] * n, [0] * n, list(costs), [0] * n, costs)
        for i, (bucket, cost) in enumerate(zip(buckets, costs, strict=True)):
            share = self.shares.get(bucket.key)
            if share is None:
                lmax = config.max_lease(bucket.per_minute)
                if lmax < 2 * cost or len(self.shares) >= config.max_shares:
                    continue  # too small to lease: this bucket is taken from Redis per request
                share = Share(bucket.per_minute, bucket.rate_per_ms, lmax, target=min(lmax, 4 * cost), since=now)
                self.shares[bucket.key] = share
            elif share.cap != bucket.per_minute:  # the limit changed: new bounds, tokens kept
                share.cap, share.rate = bucket.per_minute, bucket.rate_per_ms
                share.max_lease = config.max_lease(bucket.per_minute)
            if share.level < cost:  # a miss: the share was too small for the demand, lease more
                share.target = min(share.max_lease, max(2 * share.target, 2 * cost))
            cover = min(share.level, cost) if share.level > 0 else 0
            share.level -= cover
            share.used += cost
            share.cost = cost
            share.last_use = now
            if share.target < 2 * cost:
                share.target = min(share.max_lease, 2 * cost)
            want = max(0, min(share.target, share.max_lease) - share.level - share.pending)
            share.pending += want
            res.shares[i] = share
            res.covers[i] = cover
            res.needs[i] = cost - cover
            res.wants[i] = want
        self.remote_takes += 1
        return res

    def waiting_for(self, buckets: Sequence[BucketLike], costs: Sequence[int]) -> Any:
        """The future of a lease in flight that may cover a bucket this request is short of
        (waiting for it saves a Redis call per request when a burst finds a share empty)."""
        for bucket, cost in zip(buckets, costs, strict=True):
            share = self.shares.get(bucket.key)
            if share is not None and share.level < cost:
                if share.waiter is not None and share.pending >= cost - share.level:
                    return share.waiter
                return None
        return None

    def finish(self, res: Reservation, admitted: bool, levels: Sequence[int], grants: Sequence[int]) -> list[int]:
        """After the Redis reply: grants go into the shares; a refusal gives the covers back.
        Returns the levels to report (the bucket in Redis plus this process's share)."""
        out: list[int] = []
        for i, share in enumerate(res.shares):
            level = int(levels[i])
            if share is None:
                out.append(level)
                continue
            share.pending -= res.wants[i]
            share.redis_level = level
            if admitted:
                share.level += int(grants[i])
            else:
                share.level += res.covers[i]
                share.used -= res.costs[i]
            out.append(level + share.level)
        return out

    def restore(self, res: Reservation) -> None:
        """Redis could not be asked: give the covers back, nothing was leased."""
        for i, share in enumerate(res.shares):
            if share is not None:
                share.level += res.covers[i]
                share.pending -= res.wants[i]
                share.used -= res.costs[i]

    # ------------------------------------------------------------ background refills

    def refill_plan(self, now: float) -> RefillPlan:
        """The shares that fell below half their target, each with the tokens to ask for.
        The target follows the demand seen since the last refill: `horizon` seconds of it."""
        plan = RefillPlan()
        config = self.config
        low, self.low = self.low, {}
        for key, share in low.items():
            if share.pending or self.shares.get(key) is not share:
                continue
            elapsed = now - share.since
            if elapsed > 0:
                demand = share.used / elapsed  # tokens per second
                floor = min(share.max_lease, 2 * share.cost)
                share.target = max(floor, min(share.max_lease, math.ceil(demand * config.horizon)))
                share.used, share.since = 0, now
            want = share.target - share.level
            if want <= 0:
                continue
            share.pending += want
            plan.keys.append(key)
            plan.shares.append(share)
            plan.wants.append(want)
        return plan

    def refill_done(self, plan: RefillPlan, levels: Sequence[int], grants: Sequence[int]) -> None:
        for share, want, level, grant in zip(plan.shares, plan.wants, levels, grants, strict=True):
            share.pending -= want
            share.level += int(grant)
            share.redis_level = int(level)

    def refill_failed(self, plan: RefillPlan) -> None:
        for share, want in zip(plan.shares, plan.wants, strict=True):
            share.pending -= want

    # ------------------------------------------------------------ returns

    def idle(self, now: float) -> list[tuple[str, Share]]:
        """Remove and return the shares unused for `idle_seconds` (none with a call in flight)."""
        limit = now - self.config.idle_seconds
        out = [(k, s) for k, s in self.shares.items() if s.last_use < limit and not s.pending]
        for key, _ in out:
            del self.shares[key]
            self.low.pop(key, None)
        return out

    def drain(self) -> list[tuple[str, Share]]:
        """Remove and return every share without a call in flight (shutdown)."""
        out = [(k, s) for k, s in self.shares.items() if not s.pending]
        for key, _ in out:
            del self.shares[key]
        self.low.clear()
        return out

    def held(self) -> int:
        """Tokens held in all shares (for tests and the under-admission bound)."""
        return sum(s.level for s in self.shares.values())

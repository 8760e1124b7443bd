"""Token-bucket rate limits shared by all gateway processes through Redis, admitted locally.

Each limit "N per minute" is a bucket of capacity N (the burst) refilled at N/60 per second,
kept in Redis and computed with Redis's own clock (TIME), so processes with skewed clocks share
one budget. A request takes 1 from each request bucket and its token estimate (prompt estimate +
max_tokens) from each token bucket, all or nothing.

No Redis round trip on the request path: each process admits from local shares of the buckets
that it leased from Redis ahead of need (leases.py: the bookkeeping; docs/GATEWAY.md: the math).
Only when the shares cannot cover a request (a cold bucket, an empty share, a bucket too small
to lease) does the request wait for one EVALSHA, which takes what the shares do not cover and
leases more on top in the same atomic step. Shares are refilled in the background before they
run out and given back when idle and at shutdown. When the response ends the token buckets are
corrected with the real usage (batched, off the request path; a debt is carried, never clamped).

When Redis is unreachable the limiter reports it; the gateway then either keeps limiting with an
in-memory limiter with the same math, per process (failMode closed, the default) or admits
without limits (failMode open), and tries Redis again after a short back-off. Tokens already in
a share were taken from Redis before it went away and are still admitted from.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .leases import LeaseBook, LeaseConfig, RefillPlan, Reservation, Share
from .ratelimit_scripts import SETTLE_SCRIPT, SETTLE_SHA, TAKE_SCRIPT, TAKE_SHA
from .redis_conn import RedisOptions, RespClient
from .resp import RedisError
from .usage import USAGE_PREFIX, usage_prefixes

log = logging.getLogger("rayleigh.gateway")

BUCKET_PREFIX = "rayleigh:rl:"
MAINTAIN_EVERY = 0.5  # seconds between looks for idle shares


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit: `key` in Redis, `per_minute` capacity, `tokens` True for a token bucket."""

    key: str
    per_minute: int
    tokens: bool

    @property
    def rate_per_ms(self) -> float:
        return self.per_minute / 60000.0


@dataclass(slots=True)
class Decision:
    admitted: bool
    wait_ms: int  # -1: the request can never fit (cost above capacity)
    buckets: Sequence[Bucket]
    levels: Sequence[int]
    backend: str  # "lease" (local share) | "redis" | "local" (in-memory fallback) | "none"


def take_local(
    state: dict[str, tuple[float, float]], now_ms: float, buckets: Sequence[Bucket], costs: Sequence[int]
) -> tuple[bool, int, list[float]]:
    """The same token-bucket math as TAKE_SCRIPT, on an in-memory dict (pure, unit-tested)."""
    levels: list[float] = []
    ok = True
    wait = 0
    never = False
    for bucket, cost in zip(buckets, costs, strict=True):
        cap = bucket.per_minute
        rate = bucket.rate_per_ms
        prev = state.get(bucket.key)
        level = float(cap) if prev is None else min(cap, prev[1] + max(0.0, now_ms - prev[0]) * rate)
        levels.append(level)
        if level < cost:
            ok = False
            if cost > cap:
                never = True
            else:
                wait = max(wait, math.ceil((cost - level) / rate))
    if never:
        wait = -1
    if ok:
        for i, (bucket, cost) in enumerate(zip(buckets, costs, strict=True)):
            levels[i] -= cost
            state[bucket.key] = (now_ms, levels[i])
    return ok, wait, levels


def settle_local(state: dict[str, tuple[float, float]], buckets: Sequence[Bucket], delta: int) -> None:
    """A correction on the in-memory buckets: a debt is carried, a refund stops at the capacity."""
    for bucket in buckets:
        prev = state.get(bucket.key)
        if prev is not None:
            state[bucket.key] = (prev[0], min(bucket.per_minute, prev[1] + delta))


class RateLimiter:
    """Admits from the local shares (leases.py), else takes from the buckets in Redis;
    `take_fallback` is the in-memory limiter (failMode closed)."""

    def __init__(
        self,
        redis: RedisOptions | str | None,
        timeout: float = 0.25,
        retry_after_failure: float = 1.0,
        on_error: Callable[[str], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
        leases: LeaseConfig | None = None,
    ) -> None:
        # A URL string takes the other Redis settings (TLS files, ACL user, Sentinel) from the
        # environment `rayleigh gateway` set from its flags.
        options = RedisOptions.from_env(redis) if isinstance(redis, str) else redis
        self.options = options
        self.client = RespClient(options, connect_timeout=timeout, timeout=timeout) if options else None
        self.timeout = timeout
        self.retry_after_failure = retry_after_failure
        self.local: dict[str, tuple[float, float]] = {}
        self.down_until = 0.0
        self.redis_up = self.client is not None
        self.error_count = 0
        self.on_error = on_error
        self.on_state = on_state
        self.book = LeaseBook(leases or LeaseConfig.from_env())
        self.corrections: dict[str, list[float]] = {}  # bucket key -> [capacity, refill per ms, delta]
        self._refill_task: asyncio.Task[None] | None = None
        self._maintained = 0.0

    async def _evalsha(self, sha: str, script: str, keys: Sequence[str], args: Sequence[object]) -> object:
        assert self.client is not None
        cmd = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.client.execute(*cmd)  # type: ignore[arg-type]
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.client.execute("SCRIPT", "LOAD", script)  # after a Redis restart or a failover
        return await self.client.execute(*cmd)  # type: ignore[arg-type]

    def _mark_down(self, exc: BaseException, op: str) -> None:
        self.error_count += 1
        if self.on_error is not None:
            self.on_error(op)
        self.down_until = time.monotonic() + self.retry_after_failure
        if self.client is not None:
            self.client.close()
        if self.redis_up:
            self.redis_up = False
            if self.on_state is not None:
                self.on_state(False)
            log.warning(
                "redis unreachable (%s: %s); rate limits follow each route's failMode until it returns",
                op,
                exc.__class__.__name__ if not str(exc) else exc,
            )

    def _mark_up(self) -> None:
        if not self.redis_up:
            self.redis_up = True
            if self.on_state is not None:
                self.on_state(True)
            log.warning("redis reachable again; rate limits are shared through redis again")

    def redis_available(self) -> bool:
        return self.client is not None and time.monotonic() >= self.down_until

    # ------------------------------------------------------------ the request path

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Decision | None:
        """A decision from the local shares or Redis, or None when Redis cannot be reached and
        the shares do not cover the request (the caller applies failMode)."""
        if not buckets:
            return Decision(True, 0, (), (), "none")
        now = time.monotonic()
        book = self.book
        levels = book.take(buckets, costs, now)
        if levels is not None:
            if book.low and self._refill_task is None and self.redis_available():
                self._refill_task = asyncio.get_running_loop().create_task(self._refill())
            return Decision(True, 0, buckets, levels, "lease")
        for bucket, cost in zip(buckets, costs, strict=True):
            if cost > bucket.per_minute:  # can never fit: no need to ask Redis
                return Decision(False, -1, buckets, [self._known_level(b) for b in buckets], "redis")
        if not self.redis_available():
            return None
        for _ in range(4):  # a lease in flight may cover this request: wait for it, not for Redis
            landing = book.waiting_for(buckets, costs)
            if landing is None:
                break
            await asyncio.shield(landing)
            levels = book.take(buckets, costs, time.monotonic())
            if levels is not None:
                return Decision(True, 0, buckets, levels, "lease")
        res = book.reserve(buckets, costs, time.monotonic())
        landing = self._landing([s for s, w in zip(res.shares, res.wants, strict=True) if w and s is not None])
        try:
            reply = await self._evalsha(TAKE_SHA, TAKE_SCRIPT, [b.key for b in buckets], self._take_args(buckets, res))
        except (RedisError, OSError, TimeoutError) as exc:
            book.restore(res)
            self._mark_down(exc, "take")
            return None
        finally:
            self._landed(landing)
        self._mark_up()
        assert isinstance(reply, list)
        n = len(buckets)
        admitted = bool(reply[0])
        levels = book.finish(res, admitted, reply[2 : 2 + n], reply[2 + n :])
        return Decision(admitted, int(reply[1]), buckets, levels, "redis")

    @staticmethod
    def _landing(shares: Sequence[Share]) -> tuple[asyncio.Future[None], Sequence[Share]] | None:
        """A future that requests short of these shares can wait for (done when the lease lands)."""
        if not shares:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for share in shares:
            share.waiter = fut
        return fut, shares

    @staticmethod
    def _landed(landing: tuple[asyncio.Future[None], Sequence[Share]] | None) -> None:
        if landing is None:
            return
        fut, shares = landing
        for share in shares:
            if share.waiter is fut:
                share.waiter = None
        fut.set_result(None)

    @staticmethod
    def _take_args(buckets: Sequence[Bucket], res: Reservation) -> list[object]:
        args: list[object] = []
        for bucket, need, want in zip(buckets, res.needs, res.wants, strict=True):
            args += (bucket.per_minute, repr(bucket.rate_per_ms), need, want)
        return args

    def _known_level(self, bucket: Bucket) -> int:
        share = self.book.shares.get(bucket.key)
        return bucket.per_minute if share is None else share.redis_level + share.level

    def take_fallback(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Decision:
        ok, wait, levels = take_local(self.local, time.monotonic() * 1000.0, buckets, costs)
        return Decision(ok, wait, buckets, [math.floor(v) for v in levels], "local")

    # ------------------------------------------------------------ shares: refill, return

    async def _refill(self) -> None:
        """Top up the shares that fell below half their target (one script call for all)."""
        try:
            book = self.book
            while book.low and self.redis_available():
                plan: RefillPlan = book.refill_plan(time.monotonic())
                if not plan.keys:
                    break
                args: list[object] = []
                for share, want in zip(plan.shares, plan.wants, strict=True):
                    args += (share.cap, repr(share.rate), 0, want)
                landing = self._landing(plan.shares)
                try:
                    reply = await self._evalsha(TAKE_SHA, TAKE_SCRIPT, plan.keys, args)
                except (RedisError, OSError, TimeoutError) as exc:
                    book.refill_failed(plan)
                    self._mark_down(exc, "take")
                    break
                finally:
                    self._landed(landing)
                self._mark_up()
                assert isinstance(reply, list)
                n = len(plan.keys)
                book.refill_done(plan, reply[2 : 2 + n], reply[2 + n :])
        finally:
            self._refill_task = None

    def correct(self, key: str, cap: int, rate: float, delta: float) -> None:
        """Queue a correction of a Redis bucket (written by the next flush)."""
        entry = self.corrections.get(key)
        if entry is None:
            if len(self.corrections) < Settler.MAX_PENDING_KEYS:
                self.corrections[key] = [cap, rate, delta]
        else:
            entry[2] += delta

    def _give_back(self, shares: list[tuple[str, Share]]) -> None:
        for key, share in shares:
            if share.level > 0:
                self.correct(key, share.cap, share.rate, share.level)

    def maintain(self, now: float | None = None) -> None:
        """Give the shares idle for `idle_seconds` back (as corrections written by the flush)."""
        now = time.monotonic() if now is None else now
        if now - self._maintained < MAINTAIN_EVERY or not self.book.shares:
            return
        self._maintained = now
        self._give_back(self.book.idle(now))

    async def write(self, usage: dict[str, dict[str, int]] | None = None, now: float | None = None) -> bool:
        """Write the queued corrections and the usage counters (`ident -> field -> increment`,
        into the hour/day/month keys of `now`) in one script call. False when Redis failed
        (usage is then the caller's to keep)."""
        corrections, self.corrections = self.corrections, {}
        usage = usage or {}
        if not corrections and not usage:
            return True
        keys: list[str] = list(corrections)
        args: list[object] = [len(corrections)]
        for cap, rate, delta in corrections.values():
            args += (int(cap), repr(rate), int(delta))
        prefixes = usage_prefixes(time.time() if now is None else now)
        for ident, counters in usage.items():
            for prefix, ttl in prefixes:
                keys.append(prefix + ident)
                args += (ttl, len(counters))
                for name, inc in counters.items():
                    args += (name, inc)
        try:
            await self._evalsha(SETTLE_SHA, SETTLE_SCRIPT, keys, args)
        except (RedisError, OSError, TimeoutError) as exc:
            # Corrections and returned shares are dropped (the buckets refill anyway).
            self._mark_down(exc, "settle")
            return False
        return True

    async def aclose(self) -> None:
        """At shutdown: give every share back and write what is queued, then close."""
        if self.client is not None and self.redis_available():
            self._give_back(self.book.drain())
            await self.write()
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Settler:
    """Collects token corrections and usage counters per request (cheap, synchronous) and writes
    them to Redis in one script call per flush, so nothing of this is on the request path."""

    MAX_PENDING_KEYS = 10_000

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.usage: dict[str, dict[str, int]] = {}  # ident -> field -> increment

    def add(self, decision: Decision, delta: int, ident: str | None, fields: Sequence[tuple[str, int]]) -> None:
        """`delta` (estimate - actual tokens) corrects the token buckets the request took from;
        `fields` count into the caller's usage (`ident`: key id, JWT subject or client address)."""
        limiter = self.limiter
        if delta:
            token_buckets = [b for b in decision.buckets if b.tokens]
            if decision.backend == "local":
                settle_local(limiter.local, token_buckets, delta)
            elif decision.backend in ("redis", "lease"):
                for b in token_buckets:
                    limiter.correct(b.key, b.per_minute, b.rate_per_ms, delta)
        if ident and ident.startswith(USAGE_PREFIX):  # the key name an older caller passed
            ident = ident[len(USAGE_PREFIX) :]
        if ident and limiter.client is not None and len(self.usage) < self.MAX_PENDING_KEYS:
            counters = self.usage.get(ident)
            if counters is None:
                counters = self.usage[ident] = {}
            for name, inc in fields:
                counters[name] = counters.get(name, 0) + inc

    def pending(self) -> bool:
        return bool(self.limiter.corrections or self.usage)

    async def flush(self) -> None:
        limiter = self.limiter
        limiter.maintain()
        if not self.pending() or not limiter.redis_available():
            return
        usage, self.usage = self.usage, {}
        if not await limiter.write(usage):
            # Usage counters are kept for later (they land in the period of that later write).
            for ident, counters in usage.items():
                if len(self.usage) >= self.MAX_PENDING_KEYS:
                    break
                mine = self.usage.setdefault(ident, {})
                for name, inc in counters.items():
                    mine[name] = mine.get(name, 0) + inc

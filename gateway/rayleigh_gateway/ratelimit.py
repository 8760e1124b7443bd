"""Token-bucket rate limits in Redis: one atomic Lua call per request, shared by all replicas.

Each limit "N per minute" is a bucket of capacity N (the burst) refilled at N/60 per second.
A request takes 1 from each request bucket and its token estimate (prompt estimate +
max_tokens) from each token bucket, all or nothing, in one EVALSHA. When the response ends the
token buckets are corrected with the real usage (another script, off the request path).
Redis's own clock (TIME) is used, so replicas with skewed clocks still share one budget.

When Redis is unreachable the limiter reports it; the gateway then either keeps limiting with an
in-memory limiter with the same math, per replica (failMode closed, the default) or admits
without limits (failMode open), and tries Redis again after a short back-off.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .resp import RedisError, RespClient

log = logging.getLogger("rayleigh.gateway")

# KEYS: n bucket keys. ARGV: per bucket (capacity, refill per ms, cost).
# Returns {admitted, wait_ms (-1: never fits), level_1, ..., level_n} (levels after the take).
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local levels = {}
local ok = 1
local wait = 0
local never = false
for i = 1, n do
  local cap = tonumber(ARGV[3*i-2])
  local rate = tonumber(ARGV[3*i-1])
  local cost = tonumber(ARGV[3*i])
  local v = redis.call('HMGET', KEYS[i], 't', 'l')
  local l = cap
  if v[1] then
    l = math.min(cap, tonumber(v[2]) + math.max(0, now - tonumber(v[1])) * rate)
  end
  levels[i] = l
  if l < cost then
    ok = 0
    if cost > cap then
      never = true
    else
      local w = math.ceil((cost - l) / rate)
      if w > wait then wait = w end
    end
  end
end
if never then wait = -1 end
local out = {ok, wait}
for i = 1, n do
  local l = levels[i]
  if ok == 1 then
    local cap = tonumber(ARGV[3*i-2])
    local rate = tonumber(ARGV[3*i-1])
    l = l - tonumber(ARGV[3*i])
    redis.call('HSET', KEYS[i], 't', now, 'l', l)
    redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 1000)
  end
  out[i + 2] = math.floor(l)
end
return out
"""

# Batched corrections, written every ~100 ms by the gateway (never on the request path).
# KEYS: n token-bucket keys, then usage hashes. ARGV: n, then (capacity, delta) per bucket
# (delta > 0 refunds an over-estimate), then per usage hash: field count, field/increment pairs.
SETTLE_SCRIPT = """
local n = tonumber(ARGV[1])
local a = 2
for i = 1, n do
  local cap = tonumber(ARGV[a])
  local delta = tonumber(ARGV[a + 1])
  a = a + 2
  local l = redis.call('HGET', KEYS[i], 'l')
  if l then
    redis.call('HSET', KEYS[i], 'l', math.max(-cap, math.min(cap, tonumber(l) + delta)))
  end
end
for j = n + 1, #KEYS do
  local m = tonumber(ARGV[a])
  a = a + 1
  for k = 1, m do
    redis.call('HINCRBY', KEYS[j], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
return n
"""

TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
SETTLE_SHA = hashlib.sha1(SETTLE_SCRIPT.encode()).hexdigest()

USAGE_PREFIX = "rayleigh:usage:"
BUCKET_PREFIX = "rayleigh:rl:"


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
    backend: str  # "redis" | "local" | "none"


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
    for bucket in buckets:
        prev = state.get(bucket.key)
        if prev is not None:
            cap = bucket.per_minute
            state[bucket.key] = (prev[0], max(-cap, min(cap, prev[1] + delta)))


class RateLimiter:
    """Takes from the buckets in Redis; `take_fallback` is the in-memory limiter (failMode closed)."""

    def __init__(
        self,
        redis_url: str | None,
        timeout: float = 0.25,
        retry_after_failure: float = 1.0,
        on_error: Callable[[str], None] | None = None,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.client = RespClient(redis_url, connect_timeout=timeout, timeout=timeout) if redis_url else None
        self.timeout = timeout
        self.retry_after_failure = retry_after_failure
        self.local: dict[str, tuple[float, float]] = {}
        self.down_until = 0.0
        self.redis_up = self.client is not None
        self._loaded = False
        self.error_count = 0
        self.on_error = on_error
        self.on_state = on_state

    async def _evalsha(self, sha: str, script: str, keys: Sequence[str], args: Sequence[object]) -> object:
        assert self.client is not None
        cmd = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.client.execute(*cmd)  # type: ignore[arg-type]
        except RedisError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.client.execute("SCRIPT", "LOAD", script)  # after a Redis restart
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

    async def take(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Decision | None:
        """A decision from Redis, or None when Redis cannot be reached (caller applies failMode)."""
        if not buckets:
            return Decision(True, 0, (), (), "none")
        if not self.redis_available():
            return None
        args: list[object] = []
        for bucket, cost in zip(buckets, costs, strict=True):
            args += (bucket.per_minute, repr(bucket.rate_per_ms), cost)
        try:
            reply = await self._evalsha(TAKE_SHA, TAKE_SCRIPT, [b.key for b in buckets], args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down(exc, "take")
            return None
        self._mark_up()
        assert isinstance(reply, list)
        return Decision(bool(reply[0]), int(reply[1]), buckets, reply[2:], "redis")

    def take_fallback(self, buckets: Sequence[Bucket], costs: Sequence[int]) -> Decision:
        ok, wait, levels = take_local(self.local, time.monotonic() * 1000.0, buckets, costs)
        return Decision(ok, wait, buckets, [math.floor(v) for v in levels], "local")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class Settler:
    """Collects token corrections and usage counters per request (cheap, synchronous) and writes
    them to Redis in one script call per flush, so the request path has one Redis round trip."""

    MAX_PENDING_KEYS = 10_000

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.buckets: dict[str, list[int]] = {}  # key -> [capacity, delta]
        self.usage: dict[str, dict[str, int]] = {}

    def add(self, decision: Decision, delta: int, usage_key: str | None, fields: Sequence[tuple[str, int]]) -> None:
        if delta:
            token_buckets = [b for b in decision.buckets if b.tokens]
            if decision.backend == "local":
                settle_local(self.limiter.local, token_buckets, delta)
            elif decision.backend == "redis":
                for b in token_buckets:
                    entry = self.buckets.get(b.key)
                    if entry is None:
                        self.buckets[b.key] = [b.per_minute, delta]
                    else:
                        entry[1] += delta
        if usage_key and self.limiter.client is not None and len(self.usage) < self.MAX_PENDING_KEYS:
            counters = self.usage.get(usage_key)
            if counters is None:
                counters = self.usage[usage_key] = {}
            for name, inc in fields:
                counters[name] = counters.get(name, 0) + inc

    def pending(self) -> bool:
        return bool(self.buckets or self.usage)

    async def flush(self) -> None:
        if not self.pending() or not self.limiter.redis_available():
            return
        buckets, usage = self.buckets, self.usage
        self.buckets, self.usage = {}, {}
        args: list[object] = [len(buckets)]
        for cap, delta in buckets.values():
            args += (cap, delta)
        for counters in usage.values():
            args.append(len(counters))
            for name, inc in counters.items():
                args += (name, inc)
        try:
            await self.limiter._evalsha(SETTLE_SHA, SETTLE_SCRIPT, [*buckets, *usage], args)
        except (RedisError, OSError, TimeoutError) as exc:
            self.limiter._mark_down(exc, "settle")
            # Corrections go stale (buckets refill anyway); usage counters are kept for later.
            for key, counters in usage.items():
                if len(self.usage) >= self.MAX_PENDING_KEYS:
                    break
                mine = self.usage.setdefault(key, {})
                for name, inc in counters.items():
                    mine[name] = mine.get(name, 0) + inc

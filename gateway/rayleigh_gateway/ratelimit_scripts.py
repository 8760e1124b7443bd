"""The two Lua scripts the rate limiter runs in Redis (atomic: one script, one step).

TAKE admits a request against every bucket it charges, all or nothing, and leases shares on top;
SETTLE applies token corrections, returned shares and usage increments in one batch. Both read
Redis's own clock (TIME), so gateway processes with skewed clocks share one budget.
"""

from __future__ import annotations

import hashlib

# KEYS: n bucket keys. ARGV per bucket: capacity, refill per ms, need (taken from the bucket or
# the request is refused), want (leased on top when the request is admitted, as far as the
# bucket has tokens). A bucket in debt (level below 0, see SETTLE) admits nothing until refilled.
# Returns {admitted, wait_ms, level_1..n (after the take), grant_1..n}.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
local levels = {}
local ok = 1
local wait = 0
for i = 1, n do
  local cap = tonumber(ARGV[4*i-3])
  local rate = tonumber(ARGV[4*i-2])
  local need = tonumber(ARGV[4*i-1])
  local v = redis.call('HMGET', KEYS[i], 't', 'l')
  local l = cap
  if v[1] then
    l = math.min(cap, tonumber(v[2]) + math.max(0, now - tonumber(v[1])) * rate)
  end
  levels[i] = l
  if need > 0 and l < need then
    ok = 0
    local w = math.ceil((need - l) / rate)
    if w > wait then wait = w end
  end
end
local out = {ok, wait}
for i = 1, n do
  local l = levels[i]
  local g = 0
  if ok == 1 then
    local cap = tonumber(ARGV[4*i-3])
    local rate = tonumber(ARGV[4*i-2])
    local need = tonumber(ARGV[4*i-1])
    local want = tonumber(ARGV[4*i])
    if want > 0 and l - need >= 1 then
      g = math.min(want, math.floor(l - need))
    end
    if need + g > 0 then
      l = l - need - g
      redis.call('HSET', KEYS[i], 't', now, 'l', l)
      redis.call('PEXPIRE', KEYS[i], math.ceil((cap - l) / rate) + 1000)
    end
  end
  out[i + 2] = math.floor(l)
  out[n + 2 + i] = g
end
return out
"""

# Batched every ~100 ms (never on the request path): token corrections, shares given back, usage.
# KEYS: n bucket keys, then usage hashes. ARGV: n, then per bucket (capacity, refill per ms,
# delta: > 0 a refund or a returned share, < 0 a debt), then per usage hash: TTL seconds, field
# count, field/increment pairs. A debt is carried (the level may go below 0 and even below
# -capacity, delaying the caller's next requests by as long as it takes to refill); a refund
# never lifts a bucket above its capacity. A missing bucket is full: only a debt creates it.
# Every key written gets a TTL: a bucket's is the time until it would be full again.
SETTLE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local a = 2
for i = 1, n do
  local cap = tonumber(ARGV[a])
  local rate = tonumber(ARGV[a + 1])
  local delta = tonumber(ARGV[a + 2])
  a = a + 3
  local v = redis.call('HMGET', KEYS[i], 't', 'l')
  local l = nil
  if v[1] then
    l = math.min(cap, math.min(cap, tonumber(v[2]) + math.max(0, now - tonumber(v[1])) * rate) + delta)
  elseif delta < 0 then
    l = cap + delta
  end
  if l then
    redis.call('HSET', KEYS[i], 't', now, 'l', l)
    redis.call('PEXPIRE', KEYS[i], math.ceil((cap - l) / rate) + 1000)
  end
end
for j = n + 1, #KEYS do
  local ttl = tonumber(ARGV[a])
  local m = tonumber(ARGV[a + 1])
  a = a + 2
  for k = 1, m do
    redis.call('HINCRBY', KEYS[j], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[j], ttl)
end
return n
"""

TAKE_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
SETTLE_SHA = hashlib.sha1(SETTLE_SCRIPT.encode()).hexdigest()

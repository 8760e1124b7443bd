"""Usage counters in Redis, metered per period, every key with a TTL.

The gateway counts each caller's requests and tokens per model into three hashes, one per
period (UTC): `rayleigh:usage:hour:2026110113:<ident>` (kept 48 h), `rayleigh:usage:day:20261101:<ident>`
(kept 40 days) and `rayleigh:usage:month:202611:<ident>` (kept 400 days), fields
`<model>|requests`, `<model>|prompt_tokens`, `<model>|completion_tokens`. Each write sets the
key's TTL again, a bit longer than its period, so usage never fills Redis: under `volatile-lru`
(the bundled Redis) the rate-limit buckets are no longer the only keys eviction may take.
`<ident>` is the API key id, the JWT subject, or the client address of an anonymous caller.

`rayleigh keys usage` reads them back (`read_usage`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

USAGE_PREFIX = "rayleigh:usage:"
# period -> (strftime format of its stamp, TTL in seconds)
PERIODS: dict[str, tuple[str, int]] = {
    "hour": ("%Y%m%d%H", 48 * 3600),
    "day": ("%Y%m%d", 40 * 86400),
    "month": ("%Y%m", 400 * 86400),
}
_LABEL = {"hour": (10, "{0}-{1}-{2}T{3}"), "day": (8, "{0}-{1}-{2}"), "month": (6, "{0}-{1}")}
COUNTERS = ("requests", "prompt_tokens", "completion_tokens")


def usage_prefixes(now: float) -> list[tuple[str, int]]:
    """(key prefix, TTL) of the hour, day and month that `now` (unix seconds) falls in; the
    caller's ident completes each key."""
    t = time.gmtime(now)
    return [(f"{USAGE_PREFIX}{p}:{time.strftime(fmt, t)}:", ttl) for p, (fmt, ttl) in PERIODS.items()]


def usage_keys(ident: str, now: float) -> list[tuple[str, int]]:
    return [(prefix + ident, ttl) for prefix, ttl in usage_prefixes(now)]


def stamp(period: str, ts: float) -> str:
    return time.strftime(PERIODS[period][0], time.gmtime(ts))


def label(period: str, value: str) -> str:
    """`2026110113` -> `2026-11-01T13` (hour), `2026-11-01` (day), `2026-11` (month)."""
    _, fmt = _LABEL[period]
    parts = [value[0:4], value[4:6], value[6:8], value[8:10]]
    return fmt.format(*parts)


def parse_key(name: str, period: str) -> tuple[str, str] | None:
    """(stamp, ident) of a usage key of `period`, or None."""
    prefix = f"{USAGE_PREFIX}{period}:"
    if not name.startswith(prefix):
        return None
    value, sep, ident = name[len(prefix) :].partition(":")
    if not sep or len(value) != _LABEL[period][0] or not value.isdigit():
        return None
    return value, ident


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def read_usage(
    client: Any, period: str | None, since: float | None, key_ids: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Rows of usage from Redis (`client`: a redis_conn.RespClient). With a `period`: one row per
    period, caller and model, from `since` on. Without: totals per caller and model over the
    kept months (or the months from `since` on)."""
    p = period or "month"
    first = stamp(p, since if since is not None else time.time() - PERIODS[p][1])
    patterns = [f"{USAGE_PREFIX}{p}:*:{glob_escape(k)}" for k in key_ids] or [f"{USAGE_PREFIX}{p}:*"]
    wanted = set(key_ids)
    names: list[tuple[str, str, str]] = []  # (key, stamp, ident)
    for pattern in patterns:
        cursor = b"0"
        for _ in range(1_000_000):  # SCAN ends when the cursor comes back to 0
            reply = await client.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            cursor, batch = reply[0], reply[1]
            for raw in batch:
                name = raw.decode()
                parsed = parse_key(name, p)
                if parsed and parsed[0] >= first and (not wanted or parsed[1] in wanted):
                    names.append((name, *parsed))
            if cursor in (b"0", 0):
                break
    names = sorted(set(names), key=lambda x: (x[1], x[2]))
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for start in range(0, len(names), 200):
        chunk = names[start : start + 200]
        replies = await client.pipeline([("HGETALL", name) for name, _, _ in chunk])
        for (_, value, ident), flat in zip(chunk, replies, strict=True):
            for i in range(0, len(flat), 2):
                model, _, kind = flat[i].decode().rpartition("|")
                group = (label(p, value) if period else "", ident, model)
                row = rows.get(group)
                if row is None:
                    row = rows[group] = {"period": group[0]} if period else {}
                    row.update(key_id=ident, model=model)
                row[kind] = row.get(kind, 0) + int(flat[i + 1])
    return [rows[g] for g in sorted(rows)]

"""Figures from measured requests: percentiles, throughput, goodput, and bootstrap intervals.

Pure functions over `Record`s (no I/O), so that a saved run can be summarized again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .client import Record

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Slo:
    """Service-level objectives a request must meet to count towards goodput (None: not set)."""

    ttft_s: float | None = None
    itl_s: float | None = None  # on the request's mean inter-token latency (TPOT)
    e2e_s: float | None = None

    def met(self, r: Record) -> bool:
        if not r.ok:
            return False
        if self.ttft_s is not None and (r.ttft is None or r.ttft > self.ttft_s):
            return False
        tpot = r.tpot
        if self.itl_s is not None and tpot is not None and tpot > self.itl_s:
            return False
        return self.e2e_s is None or r.e2e <= self.e2e_s

    def to_json(self) -> dict[str, float | None]:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1e3, 3)

        return {"ttft_ms": ms(self.ttft_s), "itl_ms": ms(self.itl_s), "e2e_ms": ms(self.e2e_s)}


def _ms(v: float) -> float:
    return round(float(v) * 1e3, 3)


def percentiles(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    """`{prefix}_p50_ms`, `_p90_ms`, `_p99_ms`, `_mean_ms` of `values` (seconds); None when empty."""
    out: dict[str, float | None] = {}
    if len(values) == 0:
        for p in PERCENTILES:
            out[f"{prefix}_p{p}_ms"] = None
        out[f"{prefix}_mean_ms"] = None
        return out
    arr = np.asarray(values, dtype=float)
    for p, v in zip(PERCENTILES, np.percentile(arr, PERCENTILES), strict=True):
        out[f"{prefix}_p{p}_ms"] = _ms(v)
    out[f"{prefix}_mean_ms"] = _ms(arr.mean())
    return out


def tokens_source(records: Sequence[Record]) -> str | None:
    sources = {r.tokens_source for r in records if r.ok}
    if not sources:
        return None
    return sources.pop() if len(sources) == 1 else "mixed"


def errors_by_status(records: Sequence[Record]) -> dict[str, int]:
    return dict(sorted(Counter(r.error for r in records if r.error is not None).items()))


def summarize(
    records: Sequence[Record],
    *,
    elapsed_s: float,
    slo: Slo,
    cancelled: int = 0,
) -> dict[str, Any]:
    """The figures of one step (one load level): see docs/BENCH.md for each key."""
    ok = [r for r in records if r.ok]
    elapsed = max(elapsed_s, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    met = sum(1 for r in records if slo.met(r))
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    fig: dict[str, Any] = {
        "duration_s": round(elapsed_s, 4),
        "requests": len(records),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "cancelled": cancelled,
        "errors": errors_by_status(records),
        "output_tokens": out_tokens,
        "output_tokens_source": tokens_source(records),
        "prompt_tokens_mean": round(sum(prompt) / len(prompt), 2) if prompt else None,
        "output_tokens_per_s": round(out_tokens / elapsed, 3),
        "requests_per_s": round(len(ok) / elapsed, 3),
        "goodput": round(met / len(records), 4) if records else None,
        "goodput_requests_per_s": round(met / elapsed, 3),
    }
    fig.update(percentiles([r.ttft for r in ok if r.ttft is not None], "ttft"))
    fig.update(percentiles([g for r in ok for g in r.itl], "itl"))
    tpots = [t for r in ok if (t := r.tpot) is not None]
    fig["tpot_undefined"] = len(ok) - len(tpots)
    fig.update(percentiles(tpots, "tpot"))
    fig.update(percentiles([r.e2e for r in ok], "e2e"))
    return fig


# --- bootstrap -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """B's figure over A's, with a bootstrap confidence interval.

    A value or bound that cannot be computed is None, and `reason` says why (no samples on a side,
    A's figure is zero, or too many resamples had a zero A to bound the interval).
    """

    value: float | None
    low: float | None
    high: float | None
    confidence: float
    reason: str | None = None

    def contains(self, x: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= x <= self.high

    def to_json(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None or not np.isfinite(v) else round(float(v), 4)

        out: dict[str, Any] = {"ratio": r(self.value), "low": r(self.low), "high": r(self.high)}
        out["confidence"] = self.confidence
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _ratio(num: float, den: float) -> float:
    """num / den without raising: +inf for x / 0 with x > 0, NaN for 0 / 0."""
    if den != 0:
        return num / den
    return float("inf") if num > 0 else float("nan")


def _interval(boot: np.ndarray, confidence: float) -> tuple[float | None, float | None, str | None]:
    """Percentile interval of the resampled ratios. Resamples where both sides' figure is 0 (NaN)
    carry no ratio and are dropped; those where only A's is 0 (+inf) stay in, so that a bound they
    reach is reported as unbounded (None) rather than silently narrowed."""
    undefined = int(np.isnan(boot).sum())
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return None, None, "every resample had a zero figure on both sides"
    tail = (1 - confidence) / 2 * 100
    with np.errstate(invalid="ignore"):  # interpolating between two +inf: NaN, i.e. unbounded
        lo, hi = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    reasons = []
    if undefined:
        reasons.append(f"{undefined} of {boot.size + undefined} resamples had a zero figure on both sides")
    if not np.isfinite(hi):
        reasons.append("A's figure was zero in too many resamples to bound the interval above")
    return (lo if np.isfinite(lo) else None), (hi if np.isfinite(hi) else None), "; ".join(reasons) or None


def _t_quantile(p: float, df: int) -> float:
    """Student's t quantile (numpy only: the bench extra has no scipy)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float) -> float:
        t = np.linspace(0.0, x, 4001)
        y = c * (1 + t * t / df) ** (-(df + 1) / 2)
        return 0.5 + float(((y[1:] + y[:-1]) / 2 * np.diff(t)).sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def few_rounds_factor(k: int, confidence: float) -> float:
    """How much wider a percentile interval over `k` resampled rounds must be: t(k-1) over normal
    quantiles, times sqrt(k / (k-1)) (the bootstrap's variance is (k-1)/k of the sample's). With 6
    rounds at 99% it is 1.71; with 2 rounds, 35 (two rounds say little about the drift between them).
    Measured on this machine, uncorrected 99% intervals of one endpoint against itself over 4-6 rounds
    excluded 1 in about 1 run of 20."""
    if k < 2:
        return 1.0
    p = 1 - (1 - confidence) / 2
    return _t_quantile(p, k - 1) / NormalDist().inv_cdf(p) * math.sqrt(k / (k - 1))


def median_stat(x: np.ndarray) -> float:
    """The median of per-request values (a latency)."""
    return float(np.median(x))


def rate_stat(x: np.ndarray) -> float:
    """Sum of amounts over sum of time, for rows (amount, seconds): a throughput."""
    return float(x[:, 0].sum() / x[:, 1].sum())


def bootstrap_ratio(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    stat: Callable[[np.ndarray], float],
    *,
    n: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    min_rounds: int = 1,
) -> Ratio:
    """stat(B) / stat(A) with a two-stage bootstrap interval over paired rounds.

    `a[i]` and `b[i]` are the samples (per-request values, or rows of (amount, seconds) for rates) of
    round i, measured one after the other. Each resample draws rounds with replacement, the same
    rounds for both sides (they shared the machine's conditions), then the samples within each drawn
    round with replacement. Drawing rounds carries the drift between rounds into the interval, which
    resampling requests alone would miss: interleave many short rounds for a tight, honest interval.

    Rounds where either side has no sample are left out; with fewer than `min_rounds` left there is
    a ratio but no interval (requests from one round say nothing of the drift between rounds).
    """
    pairs = [(x, y) for x, y in zip(a, b, strict=False) if len(x) and len(y)]
    if not pairs:
        return Ratio(None, None, None, confidence, "no round has samples on both sides")
    xa = np.concatenate([x for x, _ in pairs])
    xb = np.concatenate([y for _, y in pairs])
    rng = np.random.default_rng(seed)
    k = len(pairs)

    def sizes(side: int) -> tuple[np.ndarray, np.ndarray]:
        n_ = np.array([len(p[side]) for p in pairs])
        return n_, np.concatenate([[0], np.cumsum(n_)[:-1]])

    (na, oa), (nb, ob) = sizes(0), sizes(1)

    def draw(pool: np.ndarray, n_: np.ndarray, offsets: np.ndarray, rounds: np.ndarray) -> np.ndarray:
        # Every sample of each drawn round, drawn again with replacement, in one vectorized step.
        lengths = np.repeat(n_[rounds], n_[rounds])
        starts = np.repeat(offsets[rounds], n_[rounds])
        return pool[starts + (rng.random(lengths.size) * lengths).astype(np.int64)]

    base = stat(xa)
    if k < min_rounds:
        value = stat(xb) / base if base else None
        few = f"only {k} round(s) had samples on both sides, too few for an interval (at least {min_rounds})"
        return Ratio(value, None, None, confidence, few if base else f"A's figure is zero; {few}")
    boot = np.empty(n)
    for i in range(n):
        rounds = rng.integers(0, k, k)
        boot[i] = _ratio(stat(draw(xb, nb, ob, rounds)), stat(draw(xa, na, oa, rounds)))
    if base != 0 and (center := stat(xb) / base) > 0 and np.isfinite(center):
        # Few rounds: widen the resampled ratios around the ratio, on a log scale (see few_rounds_factor).
        ok = np.isfinite(boot) & (boot > 0)
        c = math.log(center)
        boot[ok] = np.exp(c + (np.log(boot[ok]) - c) * few_rounds_factor(k, confidence))
    lo, hi, reason = _interval(boot, confidence)
    if base == 0:
        # B / 0 has no value; the interval's lower bound (if any) still says how far above A B is.
        return Ratio(None, lo, None, confidence, "A's figure is zero")
    return Ratio(stat(xb) / base, lo, hi, confidence, reason)


def time_blocks(records: Sequence[Record], elapsed_s: float, k: int, amount: Callable[[Record], float]) -> np.ndarray:
    """Rows (amount, seconds): one measured window cut into `k` equal blocks, `amount` summed over
    the requests that finished in each (for the throughput intervals).

    Blocks may be empty (few requests, or many finishing together): resampled, they give the
    interval the width that a rate measured from few completions has. A resample whose blocks of A
    are all empty has no ratio (B / 0): `bootstrap_ratio` then reports the interval as unbounded
    above rather than dividing by zero. (Spreading each request over its lifetime instead fills every
    block, and measured intervals of the same endpoint twice then excluded 1 in 4 of 20 runs at 99%.)"""
    k = max(1, k)
    width = elapsed_s / k if elapsed_s > 0 else 1.0
    sums = np.zeros(k)
    for r in records:
        if r.ok:
            sums[min(k - 1, max(0, int(r.end / width)))] += amount(r)
    return np.column_stack([sums, np.full(k, width)])

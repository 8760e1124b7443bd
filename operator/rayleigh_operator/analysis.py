"""Rollout analysis: is the new version as good as the old one, over the same window?

Pure core: `judge(new, old, settings)` compares two `Sample`s (requests, errors, TTFT p95) and
says Passed, Failed or Inconclusive; `Tally.record` turns a sequence of results into the rollout's
verdict (continue after a pass, roll back after `failureLimit` failures in a row, pause after
`inconclusiveLimit` inconclusive checks in a row), as Argo Rollouts' and Flagger's analysis runs do.

Edge: `Prometheus.sample` reads one version's sample with instant queries over the window. The
versions are told apart by their Serve replicas, which the operator reads from Serve: Rayleigh's
request metrics carry Ray's `WorkerId` label (the replica's worker), vLLM's TTFT histogram the
`ReplicaId` label (the replica's id), so a version is the set of its replicas' ids.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

import rayleigh_api as api

Result = Literal["Passed", "Failed", "Inconclusive"]
# Only model requests count (not /health, /v1/models).
ROUTES = "/v1/chat/completions|/v1/completions"


@dataclass(frozen=True)
class Sample:
    """One version over the window: requests finished, of which errors, and TTFT p95 (seconds).
    None: no data (no series)."""

    requests: float | None = None
    errors: float | None = None
    ttft_p95: float | None = None

    @property
    def error_rate(self) -> float | None:
        if not self.requests:
            return None
        return (self.errors or 0.0) / self.requests


@dataclass(frozen=True)
class Judgement:
    result: Result
    message: str


def judge(new: Sample, old: Sample, settings: api.Analysis) -> Judgement:
    """The new version against the old one; errors first (a broken version rarely serves enough
    successful requests for a latency figure)."""
    requests = new.requests or 0.0
    new_rate, old_rate = new.error_rate, old.error_rate or 0.0
    if new_rate is not None and requests >= settings.min_requests:
        if new_rate > old_rate + settings.max_error_rate_increase:
            return Judgement(
                "Failed",
                f"error rate {new_rate:.1%} on the new version vs {old_rate:.1%} on the old one "
                f"(allowed: +{settings.max_error_rate_increase:.1%}) over {requests:.0f} requests",
            )
    else:
        return Judgement(
            "Inconclusive",
            f"the new version served {requests:.0f} requests in the window (needs {settings.min_requests})",
        )
    if (
        new.ttft_p95 is not None
        and old.ttft_p95 is not None
        and not math.isnan(new.ttft_p95)
        and not math.isnan(old.ttft_p95)
        and old.ttft_p95 > 0
        and new.ttft_p95 > old.ttft_p95 * settings.max_ttft_ratio
    ):
        return Judgement(
            "Failed",
            f"TTFT p95 {new.ttft_p95:.3f}s on the new version vs {old.ttft_p95:.3f}s on the old one "
            f"(allowed: x{settings.max_ttft_ratio:g})",
        )
    return Judgement("Passed", f"error rate {new_rate:.1%} vs {old_rate:.1%} over {requests:.0f} requests")


@dataclass
class Tally:
    """Checks in a row of one rollout step sequence."""

    failures: int = 0
    inconclusive: int = 0

    def record(self, result: Result, settings: api.Analysis) -> Literal["continue", "wait", "pause", "rollback"]:
        if result == "Passed":
            self.failures = self.inconclusive = 0
            return "continue"
        if result == "Failed":
            self.failures += 1
            self.inconclusive = 0
            return "rollback" if self.failures >= settings.failure_limit else "wait"
        self.inconclusive += 1
        return "pause" if self.inconclusive >= settings.inconclusive_limit else "wait"


def _ids(values: tuple[str, ...]) -> str:
    return "|".join(v.replace("\\", "").replace('"', "") for v in values) or "none"


def queries(workers: tuple[str, ...], replicas: tuple[str, ...], window_s: int) -> dict[str, str]:
    """The PromQL of one version's sample (by its replicas' worker ids and replica ids)."""
    w = f'WorkerId=~"{_ids(workers)}",route=~"{ROUTES}"'
    return {
        "requests": f"sum(increase(ray_rayleigh_serving_requests_total{{{w}}}[{window_s}s]))",
        "errors": f"sum(increase(ray_rayleigh_serving_errors_total{{{w}}}[{window_s}s]))",
        "ttft_p95": "histogram_quantile(0.95, sum by (le) (increase("
        f'ray_vllm_time_to_first_token_seconds_bucket{{ReplicaId=~"{_ids(replicas)}"}}[{window_s}s])))',
    }


class PrometheusError(Exception):
    pass


class Prometheus:
    """Instant queries against Prometheus' HTTP API (`/api/v1/query`)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def query(self, expr: str) -> float | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            async with self._session.get(url) as resp:
                body: dict[str, Any] = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PrometheusError(f"Prometheus {self.url} unreachable: {exc!r}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {expr!r}: {body.get('error', body)}")
        result = body["data"]["result"]
        if not result:
            return None
        return float(result[0]["value"][1])

    async def sample(self, workers: tuple[str, ...], replicas: tuple[str, ...], window_s: int) -> Sample:
        q = queries(workers, replicas, window_s)
        return Sample(
            requests=await self.query(q["requests"]),
            errors=await self.query(q["errors"]),
            ttft_p95=await self.query(q["ttft_p95"]),
        )

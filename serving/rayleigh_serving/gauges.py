"""Keeps a replica's gauges exported while nothing changes them.

Ray 2.60's metrics agent evicts a gauge series that has not been re-reported within two export
intervals (`metrics_report_interval_ms`, so 20 s by default), and a `ray.util.metrics.Gauge` is
re-reported only when `set()` is called again (measured: a gauge set once is on the Prometheus
endpoint for about 2 s with a 1 s interval, then gone for good, while counters stay). vLLM sets
its engine gauges (`vllm:num_requests_running`, `vllm:num_requests_waiting`,
`vllm:kv_cache_usage_perc`) only on engine steps, so an idle replica would drop exactly the series
the HPA and the dashboards read, and the HPA would see "metric missing" instead of 0.

`GaugeKeeper` remembers the last value of every gauge series set in this process and sets it
again, from a daemon thread, at half the export interval. A series of a dead replica still ages
out, because its process (and keeper) is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SeriesKey = tuple[int, tuple[tuple[str, str], ...]]


class GaugeKeeper:
    """Last value per (gauge, tags) series; `refresh()` sets them all again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[SeriesKey, tuple[Any, dict[str, str] | None, float]] = {}
        self._original_set: Callable[..., None] | None = None

    def remember(self, gauge: Any, value: float, tags: dict[str, str] | None) -> None:
        key = (id(gauge), tuple(sorted((tags or {}).items())))
        with self._lock:
            self._series[key] = (gauge, dict(tags) if tags else None, value)

    def refresh(self) -> None:
        setter = self._original_set
        if setter is None:
            return
        with self._lock:
            series = list(self._series.values())
        for gauge, tags, value in series:
            try:
                setter(gauge, value, tags)
            except Exception:  # a broken series must not stop the others
                log.debug("gauge refresh failed for %s", getattr(gauge, "_name", gauge), exc_info=True)

    def install(self, interval_s: float) -> None:
        """Wrap `ray.util.metrics.Gauge.set` in this process and start refreshing (idempotent)."""
        from ray.util import metrics

        with self._lock:
            if self._original_set is not None:
                return
            original = metrics.Gauge.set
            keeper = self

            def set_and_remember(gauge: Any, value: float | None, tags: dict[str, str] | None = None) -> None:
                original(gauge, value, tags)  # type: ignore[arg-type]
                if value is not None:
                    keeper.remember(gauge, value, tags)

            self._original_set = original
            metrics.Gauge.set = set_and_remember  # type: ignore[method-assign,assignment]
            threading.Thread(target=self._run, args=(interval_s,), name="rayleigh-gauge-keeper", daemon=True).start()

    def _run(self, interval_s: float) -> None:
        while True:  # a daemon thread: it ends with the replica's process
            time.sleep(interval_s)
            self.refresh()


KEEPER = GaugeKeeper()


def refresh_interval_s() -> float:
    """Half of Ray's gauge export interval (which Ray floors at 1 s): two refreshes per eviction window."""
    try:
        import ray

        interval_ms = float(ray._config.metrics_report_interval_ms())
    except Exception:
        interval_ms = 10_000.0
    return max(interval_ms, 1000.0) / 2000.0


def keep_gauges_exported() -> None:
    KEEPER.install(refresh_interval_s())

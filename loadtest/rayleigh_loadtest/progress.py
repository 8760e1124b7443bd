"""The live progress display (rich) and the printed summaries.

The live view is redrawn four times a second from the step's counters, on rich's own thread:
the event loop that sends requests never formats text. It shows only on a terminal; elsewhere
(CI logs, tests) one line per finished step is printed instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.live import Live as RichLive
from rich.table import Table
from rich.text import Text

from .runner import Live


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


class Display:
    def __init__(self, *, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.live_enabled = not quiet and self.console.is_terminal

    def message(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False)

    @contextmanager
    def step(self, title: str, live: Live) -> Iterator[None]:
        if not self.live_enabled:
            yield
            return
        with RichLive(
            get_renderable=lambda: self._render(title, live),
            console=self.console,
            refresh_per_second=4,
            transient=True,
        ):
            yield

    @staticmethod
    def _render(title: str, live: Live) -> Text:
        elapsed = max(time.perf_counter() - live.t0, 1e-9)
        ttft = live.ttft_sum / live.ttft_n * 1e3 if live.ttft_n else None
        left = max(0.0, live.duration_s - elapsed)
        return Text(
            f"{title}  {elapsed:6.1f} s (≤ {left:5.1f} s left)  done {live.done}/{live.max_requests}  "
            f"in flight {live.inflight}  errors {live.errors}  {live.done / elapsed:7.1f} req/s  "
            f"{live.tokens / elapsed:8.1f} tok/s  TTFT mean {_fmt(ttft)} ms"
        )

    def step_done(self, title: str, s: dict[str, Any]) -> None:
        if self.quiet:
            return
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "none"
        self.console.print(
            f"{title}: {s['completed']}/{s['requests']} ok in {s['duration_s']:.1f} s, "
            f"{s['requests_per_s']:.1f} req/s, {s['output_tokens_per_s']:.1f} tok/s, "
            f"TTFT p50 {_fmt(s['ttft_p50_ms'])} ms, ITL p50 {_fmt(s['itl_p50_ms'], 2)} ms, "
            f"goodput {_fmt(s['goodput'], 3)}, errors {errors}",
            highlight=False,
        )


def out_console() -> Console:
    """Standard output; wide enough for the tables when it is a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def steps_table(title: str, steps: Sequence[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for col in (
        "load",
        "ok/all",
        "req/s",
        "tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99",
        "E2E p50",
        "goodput",
        "errors",
    ):
        t.add_column(col, justify="left" if col in ("load", "errors") else "right")
    for s in steps:
        t.add_row(
            s["label"],
            f"{s['completed']}/{s['requests']}",
            _fmt(s["requests_per_s"]),
            _fmt(s["output_tokens_per_s"]),
            _fmt(s["ttft_p50_ms"]),
            _fmt(s["ttft_p99_ms"]),
            _fmt(s["itl_p50_ms"], 2),
            _fmt(s["itl_p99_ms"], 2),
            _fmt(s["e2e_p50_ms"]),
            _fmt(s["goodput"], 3),
            ", ".join(f"{k}:{v}" for k, v in s["errors"].items()) or "-",
        )
    return t


def ratios_table(title: str, steps: Sequence[dict[str, Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("load")
    metrics = list(steps[0]["ratios"]) if steps else []
    for m in metrics:
        t.add_column(f"{m} B/A", justify="right")
    for s in steps:
        cells = []
        for m in metrics:
            r = s["ratios"][m]
            if r["ratio"] is None:
                cells.append("-")
            else:
                lo = "-" if r["low"] is None else f"{r['low']:.3f}"
                hi = "-" if r["high"] is None else f"{r['high']:.3f}"
                cells.append(f"{r['ratio']:.3f} [{lo}, {hi}]")
        t.add_row(s["label"], *cells)
    return t

"""Plots drawn from saved results (matplotlib's object API on the Agg canvas: no pyplot, no display).

`build_figures(runs)` returns the Figures (so that tests can inspect labels and lines before
saving); `save_figures` writes them as PNGs. Several runs on one figure overlay: one colour per run.

  throughput.png    output tokens/s vs load (one line per run); requests/s and goodput requests/s
  ttft.png          TTFT p50/p90/p99 vs load (three lines per run)
  itl.png           inter-token latency p50/p90/p99 vs load (three lines per run)
  latency_cdf.png   CDFs of TTFT, inter-token latency and end-to-end latency (one line per run and step)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .results import SavedRun

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
PCT_STYLES = {50: "-", 90: "--", 99: ":"}


def _x(step: dict[str, Any]) -> float:
    return float(step["concurrency"] if step.get("mode") == "concurrency" else step["rate"])


def x_label(runs: Sequence[SavedRun]) -> str:
    modes = {s.get("mode") for r in runs for s in r.doc["steps"]}
    if modes == {"concurrency"}:
        return "concurrency (requests in flight)"
    if modes == {"rate"}:
        return "request rate (requests/s, Poisson arrivals)"
    return "load (concurrency, or requests/s)"


def _set_xscale(ax: Any, runs: Sequence[SavedRun]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    xs = sorted({_x(s) for r in runs for s in r.doc["steps"]})
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())


def _new_figure(ncols: int, width: float = 6.4) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(run: SavedRun, key: str) -> tuple[list[float], list[float]]:
    pts = sorted((_x(s), s.get(key)) for s in run.doc["steps"])
    return [x for x, y in pts if y is not None], [float(y) for x, y in pts if y is not None]


def throughput_figure(runs: Sequence[SavedRun]) -> Any:
    fig = _new_figure(2)
    ax_tok, ax_req = fig.subplots(1, 2)
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        ax_tok.plot(*_series(run, "output_tokens_per_s"), marker="o", color=color, label=run.label)
        ax_req.plot(*_series(run, "requests_per_s"), marker="o", color=color, label=f"{run.label} requests/s")
        ax_req.plot(
            *_series(run, "goodput_requests_per_s"),
            marker="x",
            linestyle="--",
            color=color,
            label=f"{run.label} goodput (within SLOs)",
        )
    ax_tok.set_ylabel("output tokens/s")
    ax_tok.set_title("Throughput")
    ax_req.set_ylabel("requests/s")
    ax_req.set_title("Requests and goodput")
    for ax in (ax_tok, ax_req):
        ax.set_xlabel(x_label(runs))
        _set_xscale(ax, runs)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def percentile_figure(runs: Sequence[SavedRun], metric: str, title: str) -> Any:
    fig = _new_figure(1, width=7.2)
    ax = fig.subplots()
    for i, run in enumerate(runs):
        color = COLORS[i % len(COLORS)]
        for p, style in PCT_STYLES.items():
            xs, ys = _series(run, f"{metric}_p{p}_ms")
            ax.plot(xs, ys, marker="o", linestyle=style, color=color, label=f"{run.label} p{p}")
    ax.set_xlabel(x_label(runs))
    ax.set_ylabel(f"{title} (ms)")
    ax.set_title(f"{title} percentiles vs load")
    _set_xscale(ax, runs)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", ncol=max(1, len(runs)))
    return fig


def cdf_figure(runs: Sequence[SavedRun]) -> Any:
    import numpy as np

    fig = _new_figure(3, width=5.2)
    axes = fig.subplots(1, 3)
    metrics = (
        ("time to first token (ms)", lambda r: [] if r.ttft is None else [r.ttft * 1e3]),
        ("inter-token latency (ms)", lambda r: [g * 1e3 for g in r.itl]),
        ("end-to-end latency (ms)", lambda r: [r.e2e * 1e3]),
    )
    for ax, (name, get) in zip(axes, metrics, strict=True):
        for i, run in enumerate(runs):
            if run.records is None:
                continue
            color = COLORS[i % len(COLORS)]
            n = len(run.records)
            for j, (step, recs) in enumerate(zip(run.doc["steps"], run.records, strict=True)):
                values = np.sort(np.array([v for r in recs if r.ok for v in get(r)], dtype=float))
                if values.size == 0:
                    continue
                y = np.arange(1, values.size + 1) / values.size
                alpha = 1.0 if n == 1 else 0.35 + 0.65 * j / (n - 1)
                ax.plot(values, y, color=color, alpha=alpha, label=f"{run.label} {step['label']}")
        ax.set_xlabel(name)
        ax.set_ylabel("fraction of requests" if "inter-token" not in name else "fraction of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="x-small")
    fig.suptitle("Latency CDFs")
    return fig


def build_figures(runs: Sequence[SavedRun]) -> dict[str, Any]:
    """{file stem: matplotlib Figure} for the runs (overlaid)."""
    if not runs:
        raise ValueError("no runs to plot")
    figs = {
        "throughput": throughput_figure(runs),
        "ttft": percentile_figure(runs, "ttft", "Time to first token"),
        "itl": percentile_figure(runs, "itl", "Inter-token latency"),
    }
    if any(r.records for r in runs):
        figs["latency_cdf"] = cdf_figure(runs)
    return figs


def save_figures(figs: dict[str, Any], out: str | Path, dpi: int = 110) -> list[Path]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def plot_runs(runs: Sequence[SavedRun], out: str | Path) -> list[Path]:
    return save_figures(build_figures(runs), out)

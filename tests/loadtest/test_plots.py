"""The plots are real PNG images drawn from the saved JSON: axes labelled, one line per run."""

from __future__ import annotations

import itertools
import json
import struct
from pathlib import Path

from click.testing import CliRunner

from rayleigh_loadtest.cli import bench
from rayleigh_loadtest.plots import build_figures, save_figures
from rayleigh_loadtest.results import load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _run(devupstream: str, out: Path, label: str, chunks: int) -> None:
    args = [
        "load", "--base-url", devupstream, "--model", "dev", "--label", label, "--concurrency", "1,2,8",
        "--requests", "8", "--extra-body", json.dumps({"rayleigh_test": {"chunks": chunks}}), "-q", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 0, result.output


def test_plots_of_two_runs_overlay_one_line_per_run(devupstream: str, tmp_path: Path) -> None:
    _run(devupstream, tmp_path / "a", "short", 4)
    _run(devupstream, tmp_path / "b", "long", 12)
    runs = [load_run(tmp_path / "a"), load_run(tmp_path / "b")]
    figs = build_figures(runs)
    assert set(figs) == {"throughput", "ttft", "itl", "latency_cdf"}

    tok, req = figs["throughput"].axes
    assert tok.get_xlabel() == "concurrency (requests in flight)"
    assert tok.get_ylabel() == "output tokens/s"
    assert len(tok.get_lines()) == 2  # one line per run
    for run, line in zip(runs, tok.get_lines(), strict=True):
        assert line.get_label() == run.label
        # drawn from the JSON: the points are the steps' figures
        assert list(line.get_xdata()) == [s["concurrency"] for s in run.doc["steps"]]
        assert list(line.get_ydata()) == [s["output_tokens_per_s"] for s in run.doc["steps"]]
    assert req.get_ylabel() == "requests/s" and len(req.get_lines()) == 2 * 2  # requests/s and goodput per run

    for name, ylabel in (("ttft", "Time to first token (ms)"), ("itl", "Inter-token latency (ms)")):
        (ax,) = figs[name].axes
        assert ax.get_xlabel() == "concurrency (requests in flight)" and ax.get_ylabel() == ylabel
        assert len(ax.get_lines()) == 3 * 2  # p50, p90, p99 per run
        p50 = ax.get_lines()[0]
        assert list(p50.get_ydata()) == [s[f"{name}_p50_ms"] for s in runs[0].doc["steps"]]

    cdf_axes = figs["latency_cdf"].axes
    assert [a.get_xlabel() for a in cdf_axes] == [
        "time to first token (ms)",
        "inter-token latency (ms)",
        "end-to-end latency (ms)",
    ]
    for ax in cdf_axes:
        assert len(ax.get_lines()) == 2 * 3  # one per run and step
        ys = ax.get_lines()[0].get_ydata()
        assert ys[-1] == 1.0 and all(a <= b for a, b in itertools.pairwise(ys))

    paths = save_figures(figs, tmp_path / "plots")
    for p in paths:
        w, h = png_size(p)
        assert w > 500 and h > 300 and p.stat().st_size > 10_000


def test_load_and_report_write_pngs(devupstream: str, tmp_path: Path) -> None:
    _run(devupstream, tmp_path / "a", "a", 3)
    for name in ("throughput", "ttft", "itl", "latency_cdf"):
        assert png_size(tmp_path / "a" / f"{name}.png")[0] > 500
    _run(devupstream, tmp_path / "b", "b", 5)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        bench,
        [
            "report",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--label",
            "first",
            "--label",
            "second",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "first" in result.output and "second" in result.output
    assert {p.name for p in out.glob("*.png")} == {"throughput.png", "ttft.png", "itl.png", "latency_cdf.png"}


def test_rate_runs_are_labelled_as_rates(tmp_path: Path) -> None:
    doc = {
        "label": "r",
        "steps": [
            {"mode": "rate", "rate": r, "concurrency": None, "label": f"rate={r}/s", "output_tokens_per_s": 10.0 * r,
             "requests_per_s": r, "goodput_requests_per_s": r, **{f"{m}_p{p}_ms": 1.0 for m in ("ttft", "itl")
             for p in (50, 90, 99)}}
            for r in (1.0, 2.0)
        ],
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(doc))
    figs = build_figures([load_run(tmp_path)])
    assert "latency_cdf" not in figs  # no requests.jsonl: no CDFs
    assert figs["throughput"].axes[0].get_xlabel() == "request rate (requests/s, Poisson arrivals)"

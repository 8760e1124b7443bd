"""`DIR/results.json` (one object per step) and `DIR/requests.jsonl` (one line per request).

The schema is documented in docs/BENCH.md; `SCHEMA_VERSION` changes when a key changes meaning.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from . import SCHEMA_VERSION
from .client import Record
from .runner import StepResult
from .stats import Slo, summarize

RESULTS = "results.json"
REQUESTS = "requests.jsonl"


def step_json(sr: StepResult, slo: Slo) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": sr.step.mode,
        "concurrency": int(sr.step.level) if sr.step.mode == "concurrency" else None,
        "rate": sr.step.level if sr.step.mode == "rate" else None,
        "label": sr.step.label,
        "interrupted": sr.interrupted,
        "late_arrivals": sr.late,
    }
    out.update(summarize(sr.records, elapsed_s=sr.elapsed_s, slo=slo, cancelled=sr.cancelled))
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def client_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "rayleigh": _version("rayleigh"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }


def notes(steps: Sequence[dict[str, Any]], workload: dict[str, Any]) -> list[str]:
    """Plain-language caveats a reader of the figures must know."""
    out = []
    if not workload.get("prompt_tokens_exact"):
        out.append("prompt lengths are approximate: no tokenizer was given (--tokenizer PATH)")
    sources = {s.get("output_tokens_source") for s in steps} - {None, "usage"}
    if sources:
        out.append(
            "output tokens were not all reported by the server (no `usage`): counted with "
            + ", ".join(sorted(str(x) for x in sources))
            + " (tokenizer: exact; chunks: one per streamed event; approximate: characters / 4)"
        )
    undefined = sum(s.get("tpot_undefined") or 0 for s in steps)
    if undefined:
        completed = sum(s.get("completed") or 0 for s in steps)
        out.append(
            f"TPOT is undefined for {undefined} of {completed} successful requests, whose tokens all arrived "
            "in one read (a server that batches streamed tokens, a short answer, or no streaming): "
            "the tpot_* figures are over the others"
        )
    if any(s.get("interrupted") for s in steps):
        out.append("the run was interrupted: the last step holds what was measured until then")
    if any(s.get("cancelled") for s in steps):
        out.append("some requests were still in flight when a step ended and were cancelled (not counted)")
    return out


def run_json(
    *,
    tool: str,
    label: str,
    endpoint: dict[str, Any],
    workload: dict[str, Any],
    options: dict[str, Any],
    limits: dict[str, Any],
    slo: Slo,
    step_results: Sequence[StepResult],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    steps = [step_json(sr, slo) for sr in step_results]
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": tool,
        "label": label,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "endpoint": endpoint,
        "workload": workload,
        "options": options,
        "limits": limits,
        "slo": slo.to_json(),
        "mode": step_results[0].step.mode if step_results else None,
        "interrupted": any(sr.interrupted for sr in step_results),
        "client": client_info(),
        "notes": notes(steps, workload),
        "steps": steps,
    }
    if extra:
        doc.update(extra)
    return doc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run(out: str | Path, doc: dict[str, Any], step_results: Sequence[StepResult]) -> Path:
    """Write `results.json` and `requests.jsonl` into `out` (created); returns the results path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sr in enumerate(step_results):
        for r in sr.records:
            lines.append(json.dumps({"step": i, **r.to_json()}, separators=(",", ":")))
    _atomic_write(folder / REQUESTS, "\n".join(lines) + ("\n" if lines else ""))
    _atomic_write(folder / RESULTS, json.dumps(doc, indent=2) + "\n")
    return folder / RESULTS


@dataclass
class SavedRun:
    label: str
    doc: dict[str, Any]
    records: list[list[Record]] | None  # per step; None when requests.jsonl is missing
    path: Path | None = None


def load_run(folder: str | Path, label: str | None = None) -> SavedRun:
    folder = Path(folder)
    path = folder / RESULTS if folder.is_dir() else folder
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: no results here (written by `rayleigh bench load --out DIR`)") from exc
    if not isinstance(doc, dict) or "steps" not in doc:
        raise ValueError(f"{path}: not a `rayleigh bench` results file")
    records: list[list[Record]] | None = None
    req = path.parent / REQUESTS
    if req.is_file():
        records = [[] for _ in doc["steps"]]
        for line in req.read_text(encoding="utf-8").splitlines():
            if line.strip():
                d = json.loads(line)
                if 0 <= d["step"] < len(records):
                    records[d["step"]].append(Record.from_json(d))
    return SavedRun(label or doc.get("label") or path.parent.name, doc, records, path.parent)

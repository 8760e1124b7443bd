"""Shared helpers of the chart tests: the real helm binary, rendering, metric names in PromQL."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rayleigh"
HELM = ROOT / ".tools" / "bin" / "helm"
PROMTOOL = "/usr/bin/promtool"
RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
ADAPTER_FILE = CHART / "files" / "prometheus-adapter-rules.yaml"
K8S_VERSION = "1.34.0"
NAMESPACE = "rayleigh-system"


def load_script(path: Path, name: str) -> Any:
    """Import a script by path under its own module name (`dashboards/build.py` is no package, and
    the name `build` would clash with PyPA's `build`)."""
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def dashboards_build() -> Any:
    return load_script(ROOT / "dashboards" / "build.py", "rayleigh_dashboards_build")


def charts_sync() -> Any:
    return load_script(ROOT / "charts" / "sync.py", "rayleigh_charts_sync")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, check=check)


def template_args(values: dict[str, Any] | None = None, *extra: str) -> list[str]:
    args = ["template", "rayleigh", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return [*args, *extra]


@functools.lru_cache(maxsize=32)
def _render(values_json: str, extra: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    values = json.loads(values_json)
    out = helm(*template_args(values, *extra)).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """`helm template` with `--set-json key=value` per entry; the parsed documents (cached)."""
    return [json.loads(json.dumps(d)) for d in _render(json.dumps(values or {}, sort_keys=True), extra)]


def find(docs: list[dict[str, Any]], kind: str, suffix: str | None = None) -> dict[str, Any]:
    """The one object of `kind` named `rayleigh<suffix>` (the release is called `rayleigh`)."""
    hits = [d for d in docs if d["kind"] == kind and (suffix is None or d["metadata"]["name"] == "rayleigh" + suffix)]
    assert len(hits) == 1, f"expected one {kind} rayleigh{suffix or '*'}, got {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


# --- PromQL -----------------------------------------------------------------------------------

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables by values Prometheus accepts: intervals, and `.*` for the rest."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Names of every series selector in a PromQL expression (parsed, not pattern-matched)."""
    return set(selectors(expr))


def selectors(expr: str) -> dict[str, set[str]]:
    """Metric name -> the label names its selectors match on, for every selector of an expression."""
    out: dict[str, set[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                out.setdefault(node.name, set()).update(m.name for m in node.matchers.matchers)
            return
        for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)
        for child in getattr(node, "args", None) or []:
            walk(child)

    walk(promql_parser.parse(expr))
    return out


HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def base_metric(name: str) -> str:
    """`foo_bucket` -> `foo` (a histogram's series are documented under the histogram's name)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def documented_metrics() -> set[str]:
    """Metric names in the metric tables of docs/METRICS.md and docs/metrics/*.md (`name` in backticks)."""
    files = sorted((ROOT / "docs" / "metrics").glob("*.md"))
    if (ROOT / "docs" / "METRICS.md").exists():
        files.append(ROOT / "docs" / "METRICS.md")
    names: set[str] = set()
    for f in files:
        names |= set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", f.read_text()))
    return names


def is_documented(name: str, documented: set[str]) -> bool:
    candidates = {name, base_metric(name)}
    # Counters may be documented with or without prometheus_client's `_total` suffix.
    candidates |= {c.removesuffix("_total") for c in candidates} | {c + "_total" for c in candidates}
    return bool(candidates & documented)


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES_FILE.read_text())
    return [r for g in data["groups"] for r in g["rules"]]

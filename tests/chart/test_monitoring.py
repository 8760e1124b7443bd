"""Dashboards, alerts and prometheus-adapter rules: real promtool checks, drift, and metric existence.

Every PromQL expression of every dashboard panel, dashboard variable, alert and adapter rule is
(1) parsed by Prometheus' own parser (`promtool check rules` on a generated rules file) and
(2) parsed into an AST (promql-parser) whose series selectors must each name a metric documented
in docs/metrics/*.md or docs/METRICS.md: a panel on a metric nobody exports fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart import helpers
from tests.chart.helpers import (
    ADAPTER_FILE,
    CHART,
    PROMTOOL,
    ROOT,
    RULES_FILE,
    alert_rules,
    documented_metrics,
    grafana_to_promql,
    is_documented,
    metric_names,
    selectors,
)

pytestmark = pytest.mark.timeout(60)

dashboards_build = helpers.dashboards_build()

DASHBOARD_FILES = sorted((ROOT / "dashboards").glob("*.json"))


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=30)


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every dashboard query, alert and adapter seriesQuery (Grafana vars replaced)."""
    out: list[tuple[str, str]] = []
    for path in DASHBOARD_FILES:
        for where, expr in dashboards_build.panel_queries(json.loads(path.read_text())):
            out.append((f"{path.name}: {where}", grafana_to_promql(expr)))
    for rule in alert_rules():
        out.append((f"alert {rule['alert']}", rule["expr"]))
    for i, rule in enumerate(yaml.safe_load(ADAPTER_FILE.read_text())["rules"]):
        out.append((f"adapter rule {i} seriesQuery", rule["seriesQuery"]))
        out.append((f"adapter rule {i} metricsQuery", adapter_query(rule)))
    return out


def adapter_query(rule: dict[str, str]) -> str:
    """A prometheus-adapter metricsQuery as the adapter expands it for one pod."""
    series = rule["seriesQuery"].split("{", 1)[0]
    query = rule["metricsQuery"].replace("<<.Series>>", series)
    return query.replace("<<.LabelMatchers>>", 'namespace="ns",pod=~"w-1|w-2"').replace("<<.GroupBy>>", "pod")


def test_alert_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass_promtool_test_rules() -> None:
    result = _promtool("test", "rules", str(Path(__file__).with_name("alerts_test.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_and_adapter_expression_parses_in_prometheus(tmp_path: Path) -> None:
    rules = [{"record": f"rayleigh:check:{i}", "expr": expr} for i, (_, expr) in enumerate(all_expressions())]
    path = tmp_path / "expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "every-expression", "rules": rules}]}))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rules) > 40


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The previous test can fail: promtool does reject a bad expression in the same setup."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r:x", "expr": "sum(rate(x[5m])"}]}]})
    )
    assert _promtool("check", "rules", str(path)).returncode != 0


def test_every_queried_metric_is_documented() -> None:
    documented = documented_metrics()
    assert documented, "no metric documentation found in docs/metrics/*.md or docs/METRICS.md"
    missing = sorted(
        f"{name}  ({where})"
        for where, expr in all_expressions()
        for name in metric_names(expr)
        if not is_documented(name, documented)
    )
    assert not missing, "queried but not documented in docs/metrics/*.md:\n" + "\n".join(missing)


# Labels Prometheus adds at scrape time (ServiceMonitor/PodMonitor targets), and histogram buckets' `le`.
SCRAPE_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container", "le"}


# Metrics the alerts and dashboards already use, awaited from a component that does not export
# them yet (docs/metrics/alerts.md says so): name -> the labels they will have. The rules use them
# with a fallback on today's metrics. Once the component registers one, the registry check applies
# to it as to any other metric and the entry must go (the test below fails until then).
AWAITED: dict[str, set[str]] = {}


@pytest.mark.parametrize("component", ["gateway", "operator"])
def test_rayleigh_metrics_queried_exist_in_the_code_with_the_labels_matched(component: str) -> None:
    """Beyond the docs: each `rayleigh_<component>_*` series a query selects is registered by the
    component's own code (its prometheus_client registry), and every label a selector matches on
    is one of the metric's labels or a scrape-time label."""
    import importlib

    from prometheus_client import REGISTRY

    importlib.import_module(f"rayleigh_{component}.metrics")
    collectors = REGISTRY._names_to_collectors  # name (with _total/_bucket/...) -> collector
    prefix = f"rayleigh_{component}_"
    for name in AWAITED:
        assert name not in collectors, f"{name} is exported now: remove it from AWAITED"
    used = 0
    for where, expr in all_expressions():
        for name, labels in selectors(expr).items():
            if not name.startswith(prefix):
                continue
            used += 1
            if name in AWAITED:
                assert labels <= AWAITED[name] | SCRAPE_LABELS, f"{where}: {name} will have no {labels}"
                continue
            assert name in collectors, f"{where}: {name} is not registered by rayleigh_{component}.metrics"
            known = set(getattr(collectors[name], "_labelnames", ())) | SCRAPE_LABELS
            assert labels <= known, f"{where}: {name} has no label(s) {sorted(labels - known)}"
    assert used >= 5


def test_every_dashboard_has_namespace_and_model_variables_and_every_panel_filters_by_namespace() -> None:
    for path in DASHBOARD_FILES:
        data = json.loads(path.read_text())
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert {"datasource", "namespace", "model"} <= set(variables), path.name
        for name in ("namespace", "model"):
            assert variables[name]["type"] == "query" and variables[name]["includeAll"], (path.name, name)
        # The model variable's values depend on the namespace chosen.
        assert "$namespace" in variables["model"]["query"], path.name
        for where, expr in dashboards_build.panel_queries(data):
            if where.startswith("variable $namespace"):
                continue
            assert 'namespace=~"$namespace"' in expr, f"{path.name}: {where} ignores $namespace: {expr}"
        model_filtered = [e for w, e in dashboards_build.panel_queries(data) if "$model" in e and w.startswith("panel")]
        assert model_filtered, f"{path.name}: no panel uses $model"


def test_up_alerts_select_the_job_names_the_servicemonitors_set() -> None:
    from tests.chart.helpers import render

    docs = render({"monitoring.serviceMonitors": "true"})
    jobs = {}
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        (endpoint,) = sm["spec"]["endpoints"]
        (relabel,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
        jobs[sm["metadata"]["name"].removeprefix("rayleigh-")] = relabel["replacement"]
    assert jobs == {"gateway": "rayleigh-gateway", "operator": "rayleigh-operator"}
    rules = {r["alert"]: r["expr"] for r in alert_rules()}
    for component, job in jobs.items():
        expr = rules[f"Rayleigh{component.capitalize()}Down"]
        assert f'up{{job="{job}"}}' in expr and "absent(" in expr


def test_prometheus_rule_leaves_out_the_groups_of_disabled_components() -> None:
    from tests.chart.helpers import find, render

    def groups(values: dict[str, object]) -> list[str]:
        rule = find(render({"monitoring.prometheusRule": "true", **values}), "PrometheusRule")
        return [g["name"] for g in rule["spec"]["groups"]]

    everything = [g["name"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"]]
    assert groups({}) == everything
    assert "rayleigh.gateway" not in groups(
        {
            "gateway.enabled": False,
            "operator.endpoint": "http://gw.example/v1",
            "operator.externalGateway.routesConfigMap": "other-gateway-routes",
        }
    )
    assert groups({"operator.enabled": False}) == ["rayleigh.gateway"]


def test_metric_extraction_finds_every_selector() -> None:
    expr = 'sum(rate(a_total{x="1"}[5m])) / on() group_left b or histogram_quantile(0.9, rate(c_bucket[5m]))'
    assert metric_names(expr) == {"a_total", "b", "c_bucket"}


def test_checked_in_dashboards_match_the_code() -> None:
    assert [p.name for p in DASHBOARD_FILES] == sorted(dashboards_build.render_all())
    for filename, text in dashboards_build.render_all().items():
        assert (ROOT / "dashboards" / filename).read_text() == text, f"dashboards/{filename} is stale"
        chart_copy = CHART / "files" / "dashboards" / filename
        assert chart_copy.read_text() == text, f"{chart_copy} is stale: run python charts/sync.py"


def test_chart_rbac_rules_file_matches_the_operator() -> None:
    sync = helpers.charts_sync()
    assert (CHART / "files" / "operator-rules.yaml").read_text() == sync.operator_rules_text()


def test_dashboards_have_unique_panel_ids_and_the_required_titles() -> None:
    titles = {}
    for path in DASHBOARD_FILES:
        data = json.loads(path.read_text())
        ids = [p["id"] for p in data["panels"]]
        assert len(ids) == len(set(ids)), path.name
        titles[data["title"]] = {p["title"] for p in data["panels"] if p["type"] != "row"}
    assert set(titles) == {"Rayleigh / Models", "Rayleigh / Gateway", "Rayleigh / Operator"}
    assert {
        "Requests/s",
        "Time to first token p50 / p99",
        "Inter-token latency p50 / p99",
        "End-to-end latency p50 / p99",
        "Tokens/s",
        "Running / waiting requests",
        "KV-cache usage",
        "Replicas",
    } <= titles["Rayleigh / Models"]
    assert {
        "Requests by status code",
        "Added overhead p50 / p99",
        "Rate-limit rejections",
        "Auth failures by reason",
        "Upstream errors",
        "Redis errors",
        "In flight",
    } <= titles["Rayleigh / Gateway"]
    assert {"Reconciles/s by result", "Reconcile duration p50 / p99", "Serve deploys by result"} <= titles[
        "Rayleigh / Operator"
    ]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower-case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, flags=re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return out


def test_every_alert_has_severity_summary_and_a_runbook_anchor_that_exists() -> None:
    anchors = _anchors((ROOT / "docs" / "RUNBOOKS.md").read_text())
    prefix = "https://github.com/rayleigh-llm/rayleigh/blob/main/docs/RUNBOOKS.md#"
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(prefix), rule["alert"]
        assert url.removeprefix(prefix) in anchors, f"{rule['alert']}: no heading for {url} in docs/RUNBOOKS.md"

"""The alerts and dashboards in a real Prometheus, on a real gateway's metrics.

A real `rayleigh gateway` (routes to a closed loopback port) answers a few requests: 502 from an
unreachable backend and 401 without a key. A real Prometheus (/usr/bin/prometheus) scrapes it
every second with the chart's alert rules loaded. Then: every rule group loads and evaluates
without error, every dashboard, alert and prometheus-adapter expression runs in Prometheus' query
engine, and the gateway
panels show the traffic that was sent (requests by code, auth failures, upstream errors).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import RULES_FILE
from tests.plugins.common import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait(predicate: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("prometheus")
    closed_port = free_port()  # nothing listens there: the backend is unreachable
    gw_port, metrics_port, prom_port = free_port(), free_port(), free_port()
    (tmp / "gateway.yaml").write_text(
        yaml.safe_dump(
            {
                "routes": [
                    {
                        "name": "open",
                        "backend": f"http://127.0.0.1:{closed_port}",
                        "models": ["open-model"],
                        "public": True,
                    },
                    {"name": "locked", "backend": f"http://127.0.0.1:{closed_port}", "models": ["locked-model"]},
                ]
            }
        )
    )
    (tmp / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES_FILE)],
                "scrape_configs": [
                    {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
                ],
            }
        )
    )
    rayleigh = str(Path(sys.executable).with_name("rayleigh"))
    gateway = _start(
        [
            rayleigh,
            "gateway",
            "--config",
            str(tmp / "gateway.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--metrics-port",  # /metrics is on its own port, not the API's
            str(metrics_port),
        ],
        tmp / "gateway.log",
    )
    prometheus = _start(
        [
            "/usr/bin/prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp / "prometheus.log",
    )
    try:
        base_gw = f"http://127.0.0.1:{gw_port}"
        _wait(lambda: _get(f"{base_gw}/healthz")["status"] == "ok", "the gateway")
        for model in ("open-model", "open-model", "locked-model"):
            req = urllib.request.Request(
                f"{base_gw}/v1/chat/completions",
                data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
                headers={"content-type": "application/json"},
            )
            try:
                urllib.request.urlopen(req, timeout=10)
            except urllib.error.HTTPError as exc:
                assert exc.code in (401, 502), exc.code
        prom = f"http://127.0.0.1:{prom_port}"

        def query(expr: str) -> dict[str, Any]:
            return _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))

        # Two scrapes after the traffic, so that rate() has two points.
        _wait(lambda: len(query("rayleigh_gateway_requests_total")["data"]["result"]) == 2, "the first scrape")
        time.sleep(2.5)
        yield {"prom": prom, "query": query, "tmp": tmp}
    finally:
        _stop(prometheus)
        _stop(gateway)


def test_every_alert_group_loads_and_evaluates_without_error(stack: dict[str, Any]) -> None:
    groups = _get(f"{stack['prom']}/api/v1/rules")["data"]["groups"]
    assert {g["name"] for g in groups} == {g["name"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"]}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown"), f"{rule['name']}: {rule.get('lastError')}"
    _wait(
        lambda: all(
            r["health"] == "ok" for g in _get(f"{stack['prom']}/api/v1/rules")["data"]["groups"] for r in g["rules"]
        ),
        "every rule evaluated",
        seconds=10,
    )


def test_every_dashboard_and_adapter_expression_runs_in_the_query_engine(stack: dict[str, Any]) -> None:
    from tests.chart.test_monitoring import all_expressions

    ran = 0
    for where, expr in all_expressions():
        answer = stack["query"](expr)
        assert answer["status"] == "success", f"{where}: {answer}"
        ran += 1
    assert ran > 50


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum by (code) (rayleigh_gateway_requests_total{route=~".*"})', {"502": 2.0, "401": 1.0}),
        ('sum by (reason) (rayleigh_gateway_auth_failures_total{route=~".*"})', {"missing_api_key": 1.0}),
        ("sum by (route) (rayleigh_gateway_upstream_errors_total)", {"default/open": 2.0}),
    ],
    ids=["requests-by-code", "auth-failures-by-reason", "upstream-errors-by-route"],
)
def test_gateway_panels_see_the_traffic_that_was_sent(
    stack: dict[str, Any], expr: str, expected: dict[str, float]
) -> None:
    """The labels the gateway dashboard groups by carry the real values (instant sums of the counters)."""
    result = stack["query"](expr)["data"]["result"]
    got = {next(iter(r["metric"].values()), ""): float(r["value"][1]) for r in result}
    assert got == expected

"""`rayleigh bench load` end to end against the dev upstream: results.json, its schema, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from rayleigh_api.cli import main as rayleigh
from rayleigh_loadtest.cli import bench
from tests.plugins.common import REPO_ROOT

STEP_KEYS = {
    "mode", "concurrency", "rate", "label", "interrupted", "late_arrivals", "duration_s", "requests", "completed",
    "failed", "cancelled", "errors", "output_tokens", "output_tokens_source", "prompt_tokens_mean",
    "output_tokens_per_s", "requests_per_s", "goodput", "goodput_requests_per_s", "tpot_undefined",
    *(f"{m}_{s}_ms" for m in ("ttft", "itl", "tpot", "e2e") for s in ("p50", "p90", "p99", "mean")),
}  # fmt: skip
TOP_KEYS = {
    "schema_version", "tool", "label", "created", "endpoint", "workload", "options", "limits", "slo", "mode",
    "interrupted", "client", "notes", "steps",
}  # fmt: skip


def test_load_writes_results_with_the_documented_schema(devupstream: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "bench", "load", "--base-url", devupstream, "--model", "dev", "--concurrency", "1,3", "--requests", "9",
        "--output-tokens", "6", "--extra-body", '{"rayleigh_test": {"chunks": 6}}', "--slo-ttft", "10s",
        "--slo-itl", "5s", "--api-key", "sk-secret-value", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(rayleigh, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "results.json").read_text())
    assert set(doc) == TOP_KEYS
    assert doc["schema_version"] == 1 and doc["mode"] == "concurrency" and not doc["interrupted"]
    assert doc["slo"] == {"ttft_ms": 10000.0, "itl_ms": 5000.0, "e2e_ms": None}
    assert doc["workload"]["prompt_tokens_exact"] is False
    assert any("approximate" in n for n in doc["notes"])
    assert [s["concurrency"] for s in doc["steps"]] == [1, 3]
    for s in doc["steps"]:
        assert set(s) == STEP_KEYS
        assert s["requests"] == s["completed"] == 9 and s["output_tokens"] == 54
        assert s["goodput"] == 1.0
    assert "sk-secret-value" not in (out / "results.json").read_text()
    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == 18 and json.loads(lines[0])["output_tokens"] == 6
    assert {p.name for p in out.glob("*.png")} == {"throughput.png", "ttft.png", "itl.png", "latency_cdf.png"}
    assert "c=3" in result.output  # the summary table


def test_model_defaults_to_the_first_listed_and_rate_steps(devupstream: str, tmp_path: Path) -> None:
    args = ["load", "--base-url", devupstream + "/v1", "--rate", "50", "--requests", "5", "--no-plots", "-q"]
    result = CliRunner().invoke(bench, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["endpoint"]["model"] == "dev" and doc["mode"] == "rate"
    assert doc["steps"][0]["rate"] == 50.0 and doc["steps"][0]["concurrency"] is None
    assert not list(tmp_path.glob("*.png"))


def test_all_requests_failing_is_a_failed_command(devupstream: str, tmp_path: Path) -> None:
    args = ["load", "--base-url", devupstream, "--model", "dev", "--requests", "3", "--no-plots", "-q"]
    args += ["--extra-body", '{"rayleigh_test": {"status": 429}}', "--out", str(tmp_path)]
    result = CliRunner().invoke(bench, args)
    assert result.exit_code == 1 and "429" in result.output
    assert json.loads((tmp_path / "results.json").read_text())["steps"][0]["errors"] == {"429": 3}


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    base = ["load", "--base-url", "http://127.0.0.1:9", "--model", "m", "--out", str(tmp_path)]
    for extra, words in (
        (["--concurrency", "1", "--rate", "2"], "not both"),
        (["--duration", "soon"], "not a duration"),
        (["--concurrency", "0"], "positive"),
        (["--extra-body", "[1]"], "JSON object"),
    ):
        result = CliRunner().invoke(bench, base + extra)
        assert result.exit_code == 2, result.output
        assert words in result.output


def _requests_seen(url: str) -> int:
    return int(json.loads(urllib.request.urlopen(f"{url}/stats", timeout=5).read())["requests"])


def test_ctrl_c_stops_and_still_writes_what_was_measured(devupstream: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "rayleigh_loadtest", "load", "--base-url", devupstream, "--model", "dev",
        "--concurrency", "2,8", "--duration", "60s", "--extra-body", '{"rayleigh_test": {"chunks": 3, "delay": 0.02}}',
        "--out", str(out),
    ]  # fmt: skip
    before = _requests_seen(devupstream)
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"}
    )
    try:
        deadline = time.monotonic() + 60
        while _requests_seen(devupstream) < before + 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode()
    assert proc.returncode == 130, text
    assert "stopping" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True and len(doc["steps"]) == 1
    step = doc["steps"][0]
    assert step["interrupted"] and step["completed"] >= 10 and step["errors"] == {}
    assert any("interrupted" in n for n in doc["notes"])
    assert (out / "throughput.png").is_file()

"""tests/e2e/kind.sh: the kind end-to-end test, and the workflow that runs exactly it.

No Docker engine or kubelet runs here, so the script itself runs only in GitHub Actions
(.github/workflows/e2e-kind.yml); here it is linted with shellcheck (from the `dev` extra, as in
test_workflows.py) and read for the steps the e2e must take. Its resource requests are summed in
test_kind_budget.py.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.chart.helpers import ROOT
from tests.chart.test_workflows import run, tool

pytestmark = pytest.mark.timeout(120)

SCRIPT = ROOT / "tests" / "e2e" / "kind.sh"
WORKFLOW = ROOT / ".github" / "workflows" / "e2e-kind.yml"
IMAGES = ROOT / "images"


def script() -> str:
    return SCRIPT.read_text()


def test_script_exists_is_executable_and_strict() -> None:
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK), "tests/e2e/kind.sh must be executable"
    text = script()
    assert text.startswith("#!/usr/bin/env bash\n")
    # -E: the ERR trap (the dump) also fires for failures inside functions.
    assert re.search(r"^set -E?euo pipefail$", text, flags=re.M)
    assert re.search(r"^trap 'dump \"\$LINENO\"' ERR$", text, flags=re.M)


def test_script_is_shellcheck_clean() -> None:
    result = run(tool("shellcheck"), "--severity=style", str(SCRIPT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_runs_exactly_the_script() -> None:
    data = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in data["jobs"].values() for s in job["steps"]]
    runs = [s["run"].strip() for s in steps if "run" in s]
    assert runs == ["tests/e2e/kind.sh"], runs
    kind = [s for s in steps if s.get("uses", "").startswith("helm/kind-action@")]
    assert kind and kind[0]["with"]["install_only"] is True, "the script creates the cluster itself"


def test_script_builds_and_loads_every_image() -> None:
    text = script()
    assert {p.name for p in IMAGES.iterdir() if (p / "Dockerfile").exists()} == {"slim", "replica", "replica-cuda"}
    assert "for extra in operator gateway" in text
    assert 'docker build -q -f images/slim/Dockerfile --build-arg "EXTRA=$extra"' in text
    assert "docker build -q -f images/replica/Dockerfile" in text
    assert "for image in operator gateway replica" in text and "kind load docker-image" in text


def test_script_installs_deploys_and_checks_the_gateway() -> None:
    text = script()
    for needle in (
        'helm upgrade --install rayleigh charts/rayleigh --namespace "$NS" -f "$VALUES" --wait',
        'kubectl -n "$MD_NS" apply -f "$MODEL"',
        'kubectl -n "$MD_NS" wait --for=condition=Ready md/tiny --timeout=',
        'kubectl -n "$NS" port-forward svc/rayleigh-gateway',
        'chat "$KEY" true',  # streamed
        "text/event-stream",
        "data: \\[DONE\\]",
        '[ "$code" = 401 ]',
        "--rpm 3",
        "*429*",
        "retry-after",
        'kubectl -n "$MD_NS" scale md/tiny --replicas=2',
        "helm test rayleigh",
        'kubectl -n "$MD_NS" delete md tiny',
        "until_ok 300 children_gone",
        "until_ok 120 route_gone",
    ):
        assert needle in text, needle


def test_failure_dump_describes_and_collects_events_and_logs() -> None:
    text = script()
    dump = text[text.index("dump() {") : text.index("\n}\n", text.index("dump() {"))]
    for needle in ("kubectl describe md", "describe pods", "get events", "logs deploy/rayleigh-operator", "--previous"):
        assert needle in dump, needle


def test_no_hub_download_the_model_is_baked_into_the_replica_image() -> None:
    model = yaml.safe_load((ROOT / "manifests" / "examples" / "tiny-kind.yaml").read_text())
    assert model["spec"]["model"]["source"] == "file://.cache/models/tiny-qwen"
    values = yaml.safe_load((ROOT / "tests" / "e2e" / "values-kind.yaml").read_text())
    assert values["operator"]["localModelBase"] == "/opt/rayleigh"
    dockerfile = (IMAGES / "replica" / "Dockerfile").read_text()
    assert "rayleigh make-tiny-model --out /opt/rayleigh/.cache/models/tiny-qwen" in dockerfile

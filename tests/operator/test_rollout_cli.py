"""`rayleigh rollout status|promote|abort|undo md/NAME` against the emulated Kubernetes API (no
kube-apiserver runs here), with the real operator taking the commands in.

The Serve side of a rollout is covered by tests/operator/test_rollout_ray.py; here the status
a rollout writes is set by the test (as the operator would) to check what the command prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayleigh_operator.rollout_state import COMMAND_ANNOTATION, PREVIOUS_SPEC_ANNOTATION, STABLE_SPEC_ANNOTATION
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

NS = "rollcli"


def rayleigh(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(Path(sys.executable).parent / "rayleigh"),
        "rollout",
        *args,
        "-n",
        NS,
        "--kubeconfig",
        str(kube.kubeconfig),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def create(kube: Kube, name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    d: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    d["metadata"] = {"name": name, "namespace": NS, "annotations": annotations or {}}
    d["spec"].update(spec)
    kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(d))
    return d


def md(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get("md", name, namespace=NS) or {}


def test_status_prints_the_step_the_weight_and_the_analysis(kube: Kube) -> None:
    create(kube, "shown")
    rollout = {
        "phase": "RolledBack",
        "step": 1,
        "steps": 2,
        "oldReplicas": 2,
        "newReplicas": 0,
        "oldRevision": "aaa",
        "newRevision": "bbb",
        "reason": "AnalysisFailed",
        "message": "error rate 100.0% on the new version vs 0.0% on the old one",
        "analysis": {"result": "Failed", "message": "error rate 100.0%", "checkedAt": "2026-01-01T00:00:00Z"},
    }
    patch = json.dumps({"status": {"phase": "Ready", "rollout": rollout}})
    kube.kubectl("patch", "md", "shown", "-n", NS, "--subresource=status", "--type=merge", "-p", patch)
    out = rayleigh(kube, "status", "md/shown")
    assert out.returncode == 1, out  # rolled back: a script can tell
    assert "rollout RolledBack, step 1/2" in out.stdout
    assert "reason: AnalysisFailed: error rate 100.0%" in out.stdout
    assert "analysis: Failed" in out.stdout


def test_status_of_a_missing_object_says_so(kube: Kube) -> None:
    out = rayleigh(kube, "status", "md/nope")
    assert out.returncode == 1 and "not found" in out.stderr


def test_a_target_of_another_kind_is_refused(kube: Kube) -> None:
    out = rayleigh(kube, "status", "deployment/x")
    assert out.returncode == 2 and "expected md/NAME" in out.stderr


@pytest.mark.parametrize("command", ["promote", "abort"])
def test_promote_and_abort_reach_the_operator(
    kube: Kube, operator_factory: Callable[..., OperatorProcess], command: str
) -> None:
    name = f"steer-{command}"
    create(kube, name)
    op = operator_factory(
        "--dashboard-url", "http://127.0.0.1:9", "--local-base", str(REPO_ROOT), "--poll-seconds", "0.3",
        "--resync-seconds", "1",
    )  # fmt: skip
    wait_for(lambda: md(kube, name).get("status"), 30, what="the operator's first status")
    out = rayleigh(kube, command, f"md/{name}")
    assert out.returncode == 0, out.stderr
    assert f"rollout {command}d" in out.stdout
    # The operator takes the command in and removes the annotation.
    wait_for(
        lambda: COMMAND_ANNOTATION not in (md(kube, name)["metadata"].get("annotations") or {}),
        30,
        what="the command taken in",
    )
    assert f"rollout {command}" in op.log()


def test_undo_puts_back_the_previous_spec_and_keeps_the_replica_count(kube: Kube) -> None:
    old = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())["spec"]
    old.pop("replicas")
    create(
        kube,
        "undone",
        annotations={PREVIOUS_SPEC_ANNOTATION: json.dumps(old), STABLE_SPEC_ANNOTATION: "{}"},
        replicas=3,
        engine={"gpuMemoryUtilization": 0.2, "maxNumSeqs": 8},
    )
    out = rayleigh(kube, "undo", "md/undone")
    assert out.returncode == 0, out.stderr
    spec = md(kube, "undone")["spec"]
    assert "maxNumSeqs" not in spec["engine"] and spec["engine"]["gpuMemoryUtilization"] == 0.2  # defaults added
    assert spec["replicas"] == 3


def test_undo_without_history_says_what_is_missing(kube: Kube) -> None:
    create(kube, "fresh")
    out = rayleigh(kube, "undo", "md/fresh")
    assert out.returncode == 1 and PREVIOUS_SPEC_ANNOTATION in out.stderr

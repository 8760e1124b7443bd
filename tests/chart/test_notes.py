"""NOTES.txt's first steps, run as printed against the Kubernetes API emulator with the real kubectl.

The chart is installed into the emulator the way `helm install` would create its objects
(`helm template --skip-tests | kubectl apply --server-side`: the emulator speaks JSON only, and
Helm stores releases as protobuf). Then the shell commands of NOTES steps 1 and 2 run in bash
exactly as printed, with the real `rayleigh` and `kubectl` on PATH: step 1 must add a key to the
key store Secret the chart created (no AlreadyExists), and step 2 must create a ModelDeployment
whose model source the operator accepts with the chart's own `operator.localModelBase`.

What the emulator cannot show: the operator reconciling the model into Ray pods and the kubelet
running them (the kind workflow does); the `kubectl wait` line is checked, not run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayleigh_api.loading import load_model_deployment
from rayleigh_gateway.keys import KeyStore
from rayleigh_serving.config import ServeConfigError, build_serve_config
from tests.chart.helpers import CHART, HELM, ROOT, helm, template_args
from tests.plugins.kube import KUBECTL, Kube

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NAMESPACE = "notes-test"


def notes(values: dict[str, Any]) -> str:
    args = ["install", "rayleigh", str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    out = helm(*args).stdout
    return out.split("NOTES:", 1)[1]


def step(text: str, number: int) -> str:
    """The shell commands of NOTES step `number`: its lines indented by five spaces, dedented."""
    match = re.search(rf"^{number}\. .*?(?=^\d\. |\Z)", text, flags=re.S | re.M)
    assert match, f"no step {number} in NOTES:\n{text}"
    lines = [line[5:] for line in match.group(0).splitlines() if line.startswith("     ")]
    assert lines, f"step {number} has no commands"
    return "\n".join(lines) + "\n"


def install(kube: Kube, values: dict[str, Any]) -> None:
    rendered = helm(*template_args(values, "--namespace", NAMESPACE, "--skip-tests")).stdout
    kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=rendered)


def run_commands(kube: Kube, script: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run NOTES commands in bash with kubectl, rayleigh and helm on PATH (the URL of the example in
    the repository is served from this checkout)."""
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in (HELM, Path(sys.executable).with_name("rayleigh")):
        link = bindir / tool.name
        if not link.exists():
            link.symlink_to(tool)
    # The emulator serves no OpenAPI document, so client-side validation must be off for applies
    # (the only change to the commands as printed).
    kubectl = bindir / "kubectl"
    kubectl.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do [ "$a" = apply ] && exec ' + f'"{KUBECTL}"' + ' "$@" --validate=false; done\n'
        f'exec "{KUBECTL}" "$@"\n'
    )
    kubectl.chmod(0o755)
    script = script.replace("https://raw.githubusercontent.com/rayleigh-llm/rayleigh/main/", f"{ROOT}/")
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig), "PATH": f"{bindir}:{os.environ['PATH']}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )


def without_waits(script: str) -> tuple[str, list[str]]:
    """The script less its `kubectl wait` lines (nothing reconciles in the emulator), and those lines."""
    waits = [line for line in script.splitlines() if " wait " in line]
    return "\n".join(line for line in script.splitlines() if " wait " not in line) + "\n", waits


@pytest.mark.parametrize(
    "values",
    [{}, {"operator.localModelBase": "/opt/rayleigh", "operator.watchNamespaces": ["ml"]}],
    ids=["defaults", "local-model-base"],
)
def test_notes_first_steps_work_on_a_fresh_install(kube: Kube, tmp_path: Path, values: dict[str, Any]) -> None:
    install(kube, values)
    text = notes(values)
    secret_name = "rayleigh-api-keys"
    created = kube.get("secret", secret_name, NAMESPACE)
    assert created is not None, "the chart did not create the key store Secret"
    salt = KeyStore.from_dict(yaml.safe_load(base64.b64decode(created["data"]["keys.yaml"]))).salt

    # Step 1: add a key to the chart's key store.
    result = run_commands(kube, step(text, 1).replace("export RAYLEIGH_API_KEY=rk_...", ":"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (key,) = re.findall(r"^key: (rk_\S+)$", result.stdout, flags=re.M)
    secret = kube.get("secret", secret_name, NAMESPACE)
    assert secret is not None
    store = KeyStore.from_dict(yaml.safe_load(base64.b64decode(secret["data"]["keys.yaml"])))
    assert store.salt == salt, "step 1 replaced the key store instead of adding to it"
    assert store.lookup(key) is not None, "the key step 1 printed is not in the Secret"
    assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == "rayleigh", "step 1 dropped Helm's labels"

    # Step 2: the model, into the namespace the operator watches.
    script, waits = without_waits(step(text, 2))
    result = run_commands(kube, script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    model_ns = (values.get("operator.watchNamespaces") or ["default"])[0]
    assert waits == [f"kubectl -n {model_ns} wait md/tiny --for=jsonpath='{{.status.phase}}'=Ready --timeout=15m"]
    applied = kube.get("md", "tiny", model_ns)
    assert applied is not None, result.stdout + result.stderr
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({k: applied[k] for k in ("apiVersion", "kind", "metadata", "spec")}))
    md = load_model_deployment(path)
    # What the operator does with the chart's --local-base (absent by default): the source resolves.
    base = values.get("operator.localModelBase")
    config = build_serve_config(md, local_base=Path(base) if base else None)
    (app,) = config["applications"]
    source = app["args"]["llm_config"]["model_loading_config"]["model_source"]
    assert source == "/opt/rayleigh/.cache/models/tiny-qwen"
    assert md.served_model_name() == "tiny-qwen"
    kube.kubectl("delete", "md", "tiny", "-n", model_ns)

    # Step 3 calls the model the way step 2 named it.
    assert '"model": "tiny-qwen"' in step(text, 3)


def test_the_repository_example_alone_is_what_the_default_operator_rejects() -> None:
    """Why step 2 does not apply manifests/examples/tiny.yaml on a default install."""
    md = load_model_deployment(ROOT / "manifests" / "examples" / "tiny.yaml")
    with pytest.raises(ServeConfigError, match="relative file://"):
        build_serve_config(md, local_base=None)


def test_notes_with_an_existing_key_secret_create_or_update_it(kube: Kube, tmp_path: Path) -> None:
    values = {"gateway.apiKeys.existingSecret": "team-keys", "gateway.apiKeys.secretKey": "keys.json"}
    install(kube, values)
    assert kube.get("secret", "team-keys", NAMESPACE) is None
    for _ in range(2):  # creates it, then updates it: neither fails
        script = step(notes(values), 1).replace("export RAYLEIGH_API_KEY=rk_...", ":")
        result = run_commands(kube, script, tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    secret = kube.get("secret", "team-keys", NAMESPACE)
    assert secret is not None
    store = KeyStore.from_dict(yaml.safe_load(base64.b64decode(secret["data"]["keys.json"])))
    assert len(store.records) == 2

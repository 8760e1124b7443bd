"""The kind end-to-end test fits a 4-vCPU / 16 GB GitHub runner: every CPU and memory request it installs.

tests/e2e/kind.sh installs the chart with tests/e2e/values-kind.yaml, applies
manifests/examples/tiny-kind.yaml and scales it to two replicas. The scheduler admits a pod only
while the node's allocatable covers the sum of requests, so the sum is what must fit: here it is
counted from what is really rendered (`helm template` with the e2e values, `rayleigh render` of the
ModelDeployment at its peak replica count, the `helm test` pod included) plus kind's own system pods.
The budget leaves room on the runner for Docker, containerd, the kubelet and the test's own tools:
3.4 CPU and 12 GiB of requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayleigh_operator.render_cli import render as render_cmd
from tests.chart.helpers import ROOT, render

pytestmark = pytest.mark.timeout(120)

KIND_SCRIPT = ROOT / "tests" / "e2e" / "kind.sh"
VALUES = ROOT / "tests" / "e2e" / "values-kind.yaml"
MODEL = ROOT / "manifests" / "examples" / "tiny-kind.yaml"
PEAK_REPLICAS = 2  # kind.sh scales md/tiny to this
CPU_BUDGET = 3.4
MEMORY_BUDGET = 12 * 2**30

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class SystemPod:
    name: str
    count: int
    cpu: str
    memory: str
    source: str


# What a one-node kind cluster runs before anything is installed, with the requests its manifests
# set (a pod without requests counts as 0 to the scheduler). kind builds the control plane with
# kubeadm (static pods and addons from kubernetes/kubernetes cmd/kubeadm) and adds its own CNI
# (kindnet, which also enforces NetworkPolicies) and storage manifests to the node image
# (kubernetes-sigs/kind pkg/build/nodeimage). Checked against kind v0.32.0 and its main branch of
# August 2026, and kubeadm's sources; the workflow's node image is kindest/node:v1.34.0.
KIND_SYSTEM_PODS = [
    SystemPod(
        "kube-apiserver",
        1,
        "250m",
        "0",
        "kubeadm cmd/kubeadm/app/phases/controlplane/manifests.go: ComponentResources(250m)",
    ),
    SystemPod(
        "kube-controller-manager",
        1,
        "200m",
        "0",
        "kubeadm cmd/kubeadm/app/phases/controlplane/manifests.go: ComponentResources(200m)",
    ),
    SystemPod(
        "kube-scheduler",
        1,
        "100m",
        "0",
        "kubeadm cmd/kubeadm/app/phases/controlplane/manifests.go: ComponentResources(100m)",
    ),
    SystemPod("etcd", 1, "100m", "100Mi", "kubeadm cmd/kubeadm/app/phases/etcd/local.go: GetEtcdPodSpec requests"),
    SystemPod(
        "coredns",
        2,
        "100m",
        "70Mi",
        "kubeadm cmd/kubeadm/app/phases/addons/dns/manifests.go: 2 replicas, requests 100m / 70Mi (limit 170Mi)",
    ),
    SystemPod("kube-proxy", 1, "0", "0", "kubeadm cmd/kubeadm/app/phases/addons/proxy/manifests.go: no resources"),
    SystemPod("kindnet", 1, "100m", "50Mi", "kind pkg/build/nodeimage/const_cni.go: kindnet-cni requests 100m / 50Mi"),
    SystemPod("local-path-provisioner", 1, "0", "0", "kind pkg/build/nodeimage/const_storage.go: no resources"),
]

_MEMORY_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def cpu(quantity: str | int | float | None) -> float:
    """A CPU quantity in cores ('250m' -> 0.25, '2' -> 2.0)."""
    if quantity is None:
        return 0.0
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory(quantity: str | int | None) -> int:
    """A memory quantity in bytes ('70Mi', '3Gi', '1G', '1048576')."""
    if quantity is None:
        return 0
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    number, suffix = match.groups()
    return int(float(number) * _MEMORY_SUFFIXES.get(suffix, 1) if suffix else float(number))


def pod_requests(spec: dict[str, Any]) -> tuple[float, int]:
    """The scheduler's view of a pod: max(sum over containers, largest init container)."""

    def of(container: dict[str, Any]) -> tuple[float, int]:
        requests = (container.get("resources") or {}).get("requests") or {}
        return cpu(requests.get("cpu")), memory(requests.get("memory"))

    main = [of(c) for c in spec.get("containers") or []]
    init = [of(c) for c in spec.get("initContainers") or []]
    return (
        max([sum(c for c, _ in main), *(c for c, _ in init)]),
        max([sum(m for _, m in main), *(m for _, m in init)]),
    )


def workloads(docs: list[dict[str, Any]]) -> list[tuple[str, int, float, int]]:
    """(kind/name, pods, cpu per pod, memory per pod) for every object that makes pods on one node."""
    out = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            count = doc["spec"].get("replicas", 1)
            spec = doc["spec"]["template"]["spec"]
        elif kind == "DaemonSet":
            count, spec = 1, doc["spec"]["template"]["spec"]
        elif kind == "Job":
            count, spec = doc["spec"].get("parallelism", 1), doc["spec"]["template"]["spec"]
        elif kind == "Pod":
            count, spec = 1, doc["spec"]
        else:
            continue
        out.append((f"{kind}/{name}", count, *pod_requests(spec)))
    return out


def chart_docs() -> list[dict[str, Any]]:
    return render(None, "-f", str(VALUES))


def model_docs(tmp_path: Path) -> list[dict[str, Any]]:
    md = yaml.safe_load(MODEL.read_text())
    md["spec"]["replicas"] = PEAK_REPLICAS
    path = tmp_path / "tiny-kind.yaml"
    path.write_text(yaml.safe_dump(md))
    result = CliRunner().invoke(render_cmd, ["-f", str(path)])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.output) if d]


def budget_table(tmp_path: Path) -> list[tuple[str, int, float, int]]:
    rows = [(f"kind/{p.name}", p.count, cpu(p.cpu), memory(p.memory)) for p in KIND_SYSTEM_PODS]
    return rows + workloads(chart_docs()) + workloads(model_docs(tmp_path))


def test_everything_the_kind_e2e_installs_fits_the_runner(tmp_path: Path) -> None:
    rows = budget_table(tmp_path)
    total_cpu = sum(n * c for _, n, c, _ in rows)
    total_memory = sum(n * m for _, n, _, m in rows)
    table = "\n".join(f"{name:55} x{n}  {c * 1000:6.0f}m  {m / MIB:7.0f}Mi" for name, n, c, m in rows)
    report = f"{table}\ntotal: {total_cpu:.2f} CPU, {total_memory / GIB:.2f} GiB"
    assert total_cpu <= CPU_BUDGET, f"CPU requests above {CPU_BUDGET}:\n{report}"
    assert total_memory <= MEMORY_BUDGET, f"memory requests above {MEMORY_BUDGET / GIB:.0f} GiB:\n{report}"


def test_the_budget_counts_every_pod_the_e2e_creates(tmp_path: Path) -> None:
    names = {name for name, *_ in budget_table(tmp_path)}
    assert {
        "Deployment/rayleigh-operator",
        "Deployment/rayleigh-gateway",
        "Deployment/rayleigh-redis",
        "Pod/rayleigh-test-gateway",
        "Deployment/tiny-head",
        "Deployment/tiny-workers",
    } <= names, names
    workers = next(d for d in model_docs(tmp_path) if d["metadata"]["name"] == "tiny-workers")
    assert workers["spec"]["replicas"] == PEAK_REPLICAS


def test_kind_script_uses_the_budgeted_values_model_and_peak_replicas() -> None:
    script = KIND_SCRIPT.read_text()
    assert str(VALUES.relative_to(ROOT)) in script
    assert str(MODEL.relative_to(ROOT)) in script
    assert f"--replicas={PEAK_REPLICAS}" in script
    # The scale-up is the peak: nothing scales further.
    assert max(int(n) for n in re.findall(r"--replicas=(\d+)", script)) == PEAK_REPLICAS


def test_gateway_runs_one_pod_and_every_container_requests_cpu_and_memory() -> None:
    docs = chart_docs()
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rayleigh-gateway")
    assert gateway["spec"]["replicas"] == 1
    for name, _, c, m in workloads(docs):
        assert c > 0 and m > 0, f"{name} requests no CPU or memory: the budget would not see it"


def test_quantities() -> None:
    assert cpu("250m") == 0.25 and cpu("2") == 2.0 and cpu(None) == 0.0
    assert memory("70Mi") == 70 * MIB and memory("3Gi") == 3 * GIB and memory("1G") == 10**9
    assert memory("0") == 0 and memory(None) == 0
    pod = {
        "containers": [{"resources": {"requests": {"cpu": "100m", "memory": "1Gi"}}}, {"resources": {}}],
        "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}],
    }
    assert pod_requests(pod) == (1.0, GIB)

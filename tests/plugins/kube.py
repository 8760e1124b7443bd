"""The emulated Kubernetes API for tests, the real kubectl against it, and the operator process.

`kube` (session): tests/kube_emulator.py (kmock's KubernetesEmulator, fixed where it falls
short) in its own process on a free loopback port, a kubeconfig for it, and the
ModelDeployment CRD registered with the real kubectl (`kubectl apply --server-side`).
`KUBECTL` is the real kubectl 1.35 binary from .tools/bin; the emulator serves no OpenAPI, so
applies use `--validate=false`.

What the emulator cannot show (tests that stop short of it say so): CRD schema and CEL
enforcement, defaulting, admission; real server-side-apply field ownership; RBAC; controllers
(no Deployment -> Pod, no kubelet, no scheduler: worker and head readiness are simulated by
the test patching Deployment status). Garbage collection by ownerReferences is emulated in
background propagation only. The kind end-to-end workflow covers the real thing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.common import REPO_ROOT, free_port

KUBECTL = REPO_ROOT / ".tools" / "bin" / "kubectl"
CRD_FILE = REPO_ROOT / "manifests" / "crds" / "serving.rayleigh.dev_modeldeployments.yaml"


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Kube:
    url: str
    kubeconfig: Path
    workdir: Path
    process: subprocess.Popen[bytes]

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(
            [str(KUBECTL), *args], env=env, capture_output=True, text=True, input=input, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if proc.returncode == 0 else proc.stderr

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        try:
            doc: dict[str, Any] = json.loads(out)
        except ValueError:
            return None
        return doc

    def list(self, kind: str, namespace: str = "default", selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-n", namespace, "-o", "json"]
        if selector:
            args += ["-l", selector]
        items: list[dict[str, Any]] = json.loads(self.kubectl(*args))["items"]
        return items

    def set_deployment_ready(
        self, name: str, ready: int, replicas: int | None = None, namespace: str = "default"
    ) -> None:
        """Stand-in for the kubelet and the Deployment controller: report `ready` pods ready."""
        replicas = ready if replicas is None else replicas
        status = {
            "status": {
                "replicas": replicas,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "updatedReplicas": replicas,
                "observedGeneration": 1,
            }
        }
        self.kubectl(
            "patch",
            "deployment",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )

    def api(self, path: str) -> Any:
        """GET an API path directly (faster than kubectl for polling); None on 404."""
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def serve_custom_metrics(self, *names: str) -> None:
        """Declare pod metrics in custom.metrics.k8s.io discovery (prometheus-adapter's role)."""
        import urllib.request

        req = urllib.request.Request(
            f"{self.url}/_emulator/custom-metrics",
            data=json.dumps(list(names)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).close()

    def requests_log(self) -> list[dict[str, str]]:
        """Every request the emulator served so far: method, path, user agent (for RBAC checks)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_emulator/requests", timeout=10) as resp:
            data: list[dict[str, str]] = json.loads(resp.read())
        return data


@dataclass
class OperatorProcess:
    """`rayleigh operator` as a real subprocess (its own process group) against the emulator."""

    kube: Kube
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> OperatorProcess:
        cmd = [
            str(Path(sys.executable).parent / "rayleigh"),
            "operator",
            "--kubeconfig",
            str(self.kube.kubeconfig),
            "--metrics-port",
            "0",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when the node or the container dies."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)

    def stop(self, timeout: float = 10) -> None:
        if self.process is not None:
            _stop(self.process, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    workdir = tmp_path_factory.mktemp("kube")
    ready = workdir / "url"
    port = free_port()
    log = (workdir / "emulator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.kube_emulator", "--port", str(port), "--ready-file", str(ready)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, what="the kube emulator to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"kube emulator exited: {(workdir / 'emulator.log').read_text()}")
        url = ready.read_text().strip()
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
            "users: [{name: tester, user: {}}]\n"
            "contexts: [{name: emulator, context: {cluster: emulator, user: tester, namespace: default}}]\n"
            "current-context: emulator\n"
        )
        k = Kube(url=url, kubeconfig=kubeconfig, workdir=workdir, process=proc)
        k.kubectl("apply", "--server-side", "--validate=false", "-f", str(CRD_FILE))
        yield k
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def operator_factory(kube: Kube, tmp_path: Path) -> Iterator[Any]:
    """Start `rayleigh operator` processes; every one is killed at the end of the test."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        op = OperatorProcess(kube, list(args), tmp_path / f"operator-{len(started)}.log", env=env or {})
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop(timeout=2)  # then SIGKILL: these tests do not need a graceful kopf shutdown

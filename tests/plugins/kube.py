"""The emulated Kubernetes API for tests, the real kubectl against it, and the operator process.

`kube` (session): tests/kube_emulator.py (kmock's KubernetesEmulator, fixed where it falls
short) in its own process on a free loopback port, a kubeconfig for it, and the
ModelDeployment CRD registered with the real kubectl (`kubectl apply --server-side`).
`start_emulator` and `stop_process` are the one way to start and stop the emulator: the fixture
and bench/operator_scale.py both use them.
`KUBECTL` is the real kubectl 1.35 binary from .tools/bin; the emulator serves no OpenAPI, so
applies use `--validate=false`.

The emulator holds clients to the API server's rules: CRD admission (schema, defaulting, CEL,
422 with field paths; tests/emulator_admission.py) and, for service-account tokens, RBAC
(tests/emulator_rbac.py). The tests' kubectl has no token (an administrator); `rayleigh operator`
processes from `operator_factory` run as the chart's operator ServiceAccount with a token from the
TokenRequest API (tests/emulator_identity.py), so every request they make must be granted by the
chart-rendered roles. `Kube.without_admission()` stores what a real API server would refuse (to test
the operator's own checks); `Kube.denials()` lists the requests the emulator refused (401/403).

What the emulator cannot show (tests that stop short of it say so): real server-side-apply field
ownership; admission webhooks and schema validation of built-in kinds; controllers (no Deployment
-> Pod, no kubelet, no scheduler: worker and head readiness are simulated by the test patching
Deployment status). Garbage collection by ownerReferences is emulated in background propagation
only. The kind end-to-end workflow covers the real thing.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal a process started with start_new_session=True (its whole group); SIGKILL after `timeout`."""
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


def kubeconfig_for(url: str) -> str:
    """A kubeconfig for the emulator at `url`: no credentials (it authenticates nobody), namespace default."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: tester, user: {}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: tester, namespace: default}}]\n"
        "current-context: emulator\n"
    )


def start_emulator(
    workdir: Path,
    *,
    port: int = 0,
    crds: Sequence[Path] = (),
    log: Path | None = None,
    prefix: Sequence[str] = (),
    timeout: float = 30,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start tests/kube_emulator.py in its own process group, wait until it listens, and write a
    kubeconfig for it: (process, URL, kubeconfig path). Used by the `kube` fixture and by
    bench/operator_scale.py.

    `port` 0 lets the emulator choose; `crds` are registered at start; `log` receives its output
    (default: discarded); `prefix` goes before the command (e.g. `taskset -c 0`).
    """
    suffix = time.monotonic_ns()
    ready = workdir / f"emulator-url-{suffix}"
    cmd = [*prefix, sys.executable, "-m", "tests.kube_emulator", "--ready-file", str(ready)]
    if port:
        cmd += ["--port", str(port)]
    for crd in crds:
        cmd += ["--crd", str(crd)]
    with log.open("ab") if log is not None else open(os.devnull, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout, interval=0.05, what="the kube emulator")
        if proc.poll() is not None:
            detail = log.read_text(errors="replace") if log is not None else f"exit status {proc.returncode}"
            raise RuntimeError(f"kube emulator exited: {detail}")
    except BaseException:
        stop_process(proc)
        raise
    url = ready.read_text().strip()
    kubeconfig = workdir / f"kubeconfig-{suffix}"
    kubeconfig.write_text(kubeconfig_for(url))
    return proc, url, kubeconfig


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

    def requests_log(self) -> builtins.list[dict[str, str]]:  # `list` here is the method above
        """Every request the emulator served so far: method, path, user agent (for RBAC checks)."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_emulator/requests", timeout=10) as resp:
            data: builtins.list[dict[str, str]] = json.loads(resp.read())
        return data

    def denials(self) -> builtins.list[dict[str, Any]]:
        """Every request the emulator refused: 401 (token) and 403 (RBAC) with user, verb, resource."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_emulator/denials", timeout=10) as resp:
            data: builtins.list[dict[str, Any]] = json.loads(resp.read())
        return data

    @contextlib.contextmanager
    def without_admission(self) -> Iterator[None]:
        """Store what a real API server's CRD admission would refuse (to test the operator's own checks)."""
        import urllib.request

        def switch(enabled: bool) -> None:
            req = urllib.request.Request(
                f"{self.url}/_emulator/admission",
                data=json.dumps({"enabled": enabled}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            urllib.request.urlopen(req, timeout=10).close()

        switch(False)
        try:
            yield
        finally:
            switch(True)


def shared_head_operator_args(
    dashboard_url: str, *, resync_seconds: float = 2, port: int | str | None = None
) -> list[str]:
    """The operator's flags for driving the serving tests' shared local Ray head (`serving_stack`)
    instead of Ray pods: each ModelDeployment becomes the Serve application `NAME-op` on `/NAME-op`
    (beside the head's own tiny app), polled every 0.5 s; with `port` (the head's Serve port), its
    status endpoint is that local address."""
    args = ["--dashboard-url", dashboard_url, "--external-ray", "--app-name", "{name}-op"]
    args += ["--route-prefix", "/{name}-op", "--local-base", str(REPO_ROOT)]
    args += ["--poll-seconds", "0.5", "--resync-seconds", str(resync_seconds)]
    if port is not None:
        args += ["--endpoint", f"http://127.0.0.1:{port}{{route_prefix}}/v1"]
    return args


@dataclass
class OperatorProcess:
    """`rayleigh operator` as a real subprocess (its own process group) against the emulator."""

    kube: Kube
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    kubeconfig: Path | None = None  # default: the administrator's (no token)

    def start(self) -> OperatorProcess:
        cmd = [
            str(Path(sys.executable).parent / "rayleigh"),
            "operator",
            "--kubeconfig",
            str(self.kubeconfig or self.kube.kubeconfig),
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
            stop_process(self.process, signal.SIGKILL)

    def stop(self, timeout: float = 10) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    workdir = tmp_path_factory.mktemp("kube")
    proc, url, kubeconfig = start_emulator(workdir, port=free_port(), log=workdir / "emulator.log")
    try:
        k = Kube(url=url, kubeconfig=kubeconfig, workdir=workdir, process=proc)
        k.kubectl("apply", "--server-side", "--validate=false", "-f", str(CRD_FILE))
        yield k
    finally:
        stop_process(proc)


@pytest.fixture
def operator_factory(kube: Kube, tmp_path: Path) -> Iterator[Any]:
    """Start `rayleigh operator` processes; every one is killed at the end of the test.

    They authenticate as the chart's operator ServiceAccount (tests/emulator_identity.py): the
    emulator authorizes each request against the chart-rendered roles. `kubeconfig` overrides it."""
    from tests.emulator_identity import operator_identity

    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, kubeconfig: Path | None = None) -> OperatorProcess:
        op = OperatorProcess(
            kube,
            list(args),
            tmp_path / f"operator-{len(started)}.log",
            env=env or {},
            kubeconfig=kubeconfig or operator_identity(kube).kubeconfig,
        )
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop(timeout=2)  # then SIGKILL: these tests do not need a graceful kopf shutdown

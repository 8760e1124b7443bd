"""Local mode: a private Ray head on loopback and a Serve application deployed to it over REST.

The same path the operator takes in a cluster (`PUT /api/serve/applications/` on the dashboard),
so `rayleigh up`, the tests and the cluster all run one code path. Used by `rayleigh up`, the
`serving_stack` test fixture and the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayleigh_serving.ingress import default_ingress, local_haproxy_env, ray_env
from rayleigh_serving.reaper import Reaper, kill_groups, kill_marked, reap

RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "VLLM_TARGET_DEVICE": "cpu",
}
# What Rayleigh sets on its Ray nodes (the control loop interval, the Serve ingress): rayleigh_serving.ingress,
# shared with the operator's Ray pods and the benchmark. `tuned=False` leaves Ray's defaults (stock Ray Serve).


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command was not found: install rayleigh[serving]")
    return found


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0, api_key: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


@dataclass
class LocalRay:
    """A Ray head started as our own process group, on free loopback ports, in a short temp dir."""

    num_cpus: int = 4
    http_port: int = field(default_factory=free_port)
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    tuned: bool = True
    # The Serve ingress (rayleigh_serving.ingress; with tuned=True): "haproxy" or "proxy".
    ingress: str = field(default_factory=default_ingress)
    # Leave out the head processes a one-machine Serve app never uses: the autoscaler monitor (no
    # nodes to add) and the log monitor (it streams worker logs to drivers; there is none, the logs
    # stay in files). Local mode only: the operator's head pods are rendered elsewhere.
    lean: bool = True
    temp_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    # The watchdog that kills this head's processes if our process dies without calling stop().
    reaper: Reaper | None = None
    _own_temp: bool = False
    _own_reaper: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 120.0) -> None:
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Run `ray start` and return at once (`rayleigh up` starts its gateway meanwhile)."""
        if self.temp_dir is None:
            # Ray's socket paths must stay under 107 bytes: a short dir under /tmp.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
            self._own_temp = True
        tuned = ray_env(self.ingress) if self.tuned else {}
        env = {**os.environ, **RAY_ENV, **tuned, **self.env, "RAY_TMPDIR": str(self.temp_dir)}
        if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            env = {**local_haproxy_env(self.temp_dir), **env}
        # Every port is on loopback. With RAY_AUTH_MODE unset, Ray 2.60 turns token auth on when it
        # finds ~/.ray/auth_token (any earlier `ray.init()` on the machine writes one), and the
        # dashboard then answers 401 to these REST calls: choose the mode, unless the user did.
        env.setdefault("RAY_AUTH_MODE", "disabled")
        cmd = [
            _ray_bin(),
            "start",
            "--head",
            "--block",
            f"--num-cpus={self.num_cpus}",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={self.metrics_port}",
            f"--ray-client-server-port={free_port()}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--include-dashboard=true",
        ]
        if self.lean:
            cmd += ["--no-monitor", "--include-log-monitor=false"]
        if self.reaper is None:
            self.reaper = Reaper.start()
            self._own_reaper = True
        self.reaper.marker(self.temp_dir)
        if self._own_temp:
            self.reaper.rmtree(self.temp_dir)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(self.temp_dir)
        )
        self.reaper.group(self.proc.pid)

    def wait_started(self, timeout: float = 120.0) -> None:
        """Wait until the dashboard's Serve REST API answers."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited with {self.proc.returncode}; see {self.log}")
            try:
                http_json("GET", f"{self.dashboard_url}/api/serve/applications/", timeout=2)
                return
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.5)
        raise TimeoutError(f"Ray dashboard did not answer on {self.dashboard_url} within {timeout:.0f} s")

    def deploy(self, serve_config: dict[str, Any]) -> None:
        """PUT a Serve config (declarative: applications not in it are removed)."""
        cfg = json.loads(json.dumps(serve_config))
        cfg.setdefault("http_options", {})
        cfg["http_options"]["host"] = "127.0.0.1"
        cfg["http_options"]["port"] = self.http_port
        http_json("PUT", f"{self.dashboard_url}/api/serve/applications/", cfg, timeout=60)

    def applications(self) -> dict[str, Any]:
        data = http_json("GET", f"{self.dashboard_url}/api/serve/applications/", timeout=10) or {}
        apps: dict[str, Any] = data.get("applications") or {}
        return apps

    def wait_running(
        self,
        app: str,
        timeout: float = 600.0,
        progress: Callable[[str, str, float], None] | None = None,
    ) -> None:
        """Wait until `app` is RUNNING; raise with Serve's message if it fails to deploy."""
        start = time.monotonic()
        last = ""
        while True:
            elapsed = time.monotonic() - start
            try:
                info = self.applications().get(app) or {}
            except (urllib.error.URLError, OSError, ValueError):
                info = {}
            status = str(info.get("status", "NOT_STARTED"))
            message = str(info.get("message", ""))
            if progress is not None:
                progress(status, _deployment_summary(info), elapsed)
            if status == "RUNNING":
                return
            if status == "DEPLOY_FAILED" or status == "UNHEALTHY":
                raise RuntimeError(f"Serve application {app!r} is {status}: {message or last}")
            last = message or last
            if elapsed > timeout:
                raise TimeoutError(f"Serve application {app!r} not RUNNING after {timeout:.0f} s: {status} {last}")
            time.sleep(0.5)

    def stop(self, grace: float = 2.0) -> None:
        """Stop every process this head started, within about `grace` seconds.

        SIGTERM at once to Ray's process group and to every process of this head outside it (the
        workers and the vLLM engine processes, found by the private temp dir in their environment),
        so they shut down side by side; SIGKILL whatever is left after `grace` seconds.
        """
        groups = [self.proc.pid] if self.proc is not None else []
        markers = [str(self.temp_dir)] if self.temp_dir is not None else []
        kill_groups(groups, signal.SIGTERM)
        kill_marked(markers, signal.SIGTERM)
        deadline = time.monotonic() + grace
        ray_start = self.proc.pid if self.proc is not None else None
        while time.monotonic() < deadline and _still_stopping(markers, ray_start):
            time.sleep(0.1)
        reap(groups, markers, [str(self.temp_dir)] if self._own_temp and self.temp_dir is not None else [])
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.proc = None
        if self.reaper is not None and self._own_reaper:
            self.reaper.clear()
            self.reaper.close()
            self.reaper = None


def _still_stopping(markers: list[str], ray_start: int | None) -> bool:
    """Whether a process of the head is still shutting down after SIGTERM. `ray start --block` and
    the GCS wait for each other after SIGTERM (seconds, measured) with nothing left to flush: not counted."""
    for pid in kill_marked(markers, 0):
        if pid == ray_start:
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "gcs_server":
            return True
    return False


def _deployment_summary(info: dict[str, Any]) -> str:
    parts = []
    for name, dep in (info.get("deployments") or {}).items():
        counts: dict[str, int] = {}
        for replica in dep.get("replicas") or []:
            state = str(replica.get("state", "?")).lower()
            counts[state] = counts.get(state, 0) + 1
        replicas = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no replicas yet"
        parts.append(f"{name}: {dep.get('status', '?')} ({replicas})")
    return "; ".join(parts)


def wait_for_answer(base_url: str, model: str, timeout: float = 120.0, api_key: str | None = None) -> float:
    """Poll until a 1-token chat completion succeeds; returns the seconds waited."""
    start = time.monotonic()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    while True:
        try:
            http_json("POST", f"{base_url}/v1/chat/completions", body, timeout=30, api_key=api_key)
            return time.monotonic() - start
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() - start > timeout:
                raise
            time.sleep(0.5)

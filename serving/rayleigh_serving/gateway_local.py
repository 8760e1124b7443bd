"""Local mode's gateway: `rayleigh gateway` in front of the local Serve app, with a generated API key.

The route config is what the operator would render for the ModelDeployment's `spec.gateway`
(API keys, allowed CIDRs, rate limits), pointed at the local Ray Serve port. The key file stores
only the key's hash; the plaintext key is printed once by `rayleigh up`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rayleigh_gateway.routes import route_for
from rayleigh_serving.local import free_port
from rayleigh_serving.reaper import Reaper


class LocalGateway:
    def __init__(
        self, command: list[str], *, md: Any, upstream: str, port: int, state_dir: Path, reaper: Reaper | None = None
    ) -> None:
        self.command = command
        self.reaper = reaper
        self.md = md
        self.upstream = upstream
        self.port = port or free_port()
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepts_api_keys(self) -> bool:
        """The route takes keys from the key store unless `spec.gateway.auth.apiKeys` is false."""
        auth = self.md.spec.gateway.auth
        return auth is None or bool(auth.api_keys)

    def how_to_call(self) -> str:
        """One line for `rayleigh up` to print: what a caller must send, from the route's auth settings."""
        if self.api_key is not None:
            return f"API key (local, generated): {self.api_key}"
        gw = self.md.spec.gateway
        jwt = gw.auth.jwt if gw.auth is not None else None
        if jwt is not None:
            return (
                f"API keys are off for this model: send a JWT from issuer {jwt.issuer} "
                f"(audience {jwt.audience}) as the Bearer token"
            )
        if gw.public:
            return "public model: no credentials needed"
        return "API keys and JWT are both off and the model is not public: the gateway refuses every caller"

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def write_routes(self, md: Any) -> Path:
        """Write the route file for `md` (the gateway re-reads it every second: `rayleigh up`'s reload)."""
        self.md = md
        config_path = self.state_dir / "gateway-routes.json"
        tmp = config_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"routes": [route_for(md, self.upstream).model_dump(mode="json", by_alias=True)]}, indent=2)
        )
        tmp.replace(config_path)
        return config_path

    def launch(self) -> None:
        """Start the gateway process and return at once (`rayleigh up` starts it while the engine loads)."""
        from rayleigh_gateway.keys import load_or_new, save_keys

        config_path = self.write_routes(self.md)
        keys_path = self.state_dir / "gateway-keys.json"
        store = load_or_new(str(keys_path))
        if self.accepts_api_keys:
            key, _record = store.create("rayleigh-up", [], None, None, None)
            self.api_key = key
        save_keys(store, str(keys_path))
        cmd = [
            *self.command,
            "--config",
            str(config_path),
            "--keys",
            str(keys_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",  # its /metrics (a free port: 9090 may be a local Prometheus)
            str(free_port()),
            "--no-audit",
            "--log-level",
            "warning",
        ]
        with open(self.state_dir / "gateway.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.reaper is not None:
            self.reaper.group(self.proc.pid)

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.proc.returncode}; see {self.state_dir}/gateway.log")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"the gateway did not become ready on {self.base_url}")

    def terminate(self) -> None:
        """SIGTERM without waiting (`stop()` waits), so the gateway and Ray shut down side by side."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, grace: float = 3.0) -> None:
        if self.proc is None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

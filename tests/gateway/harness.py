"""Helpers for the gateway tests: run the real gateway and a test upstream on loopback ports.

The upstream is `bench.devupstream`, an OpenAI-shaped HTTP server standing in for a
model server (the end-to-end tests use the real Ray Serve + vLLM stack instead). It is a test
upstream, not a mock of the gateway: everything the gateway does runs for real.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bench.devupstream import make_app
from rayleigh_gateway.app import Gateway, Settings
from rayleigh_gateway.keys import KeyStore, save_keys
from rayleigh_gateway.server import GatewayHttpProtocol, MetricsServer
from tests.plugins.common import REPO_ROOT, free_port


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s: {last}")


class AiohttpThread:
    """An aiohttp application served from its own event loop in a daemon thread."""

    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None = None) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.port = free_port()
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context).start()

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Upstream(AiohttpThread):
    def __init__(
        self,
        extra_routes: Callable[[web.Application], object] | None = None,
        latency: float = 0.0,
        concurrency: int = 0,
    ) -> None:
        app = make_app(True, latency, concurrency)
        if extra_routes is not None:
            extra_routes(app)
        super().__init__(app)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.url + "/stats").json()
        return result


class GatewayThread:
    """The real gateway app under uvicorn (uvloop, the gateway's httptools protocol) in a thread of
    this process, so tests can also read its state (e.g. call `check_reload()` instead of waiting
    for the poll); its metrics on their own port, `metrics_url`, as `rayleigh gateway` serves them."""

    def __init__(self, settings: Settings) -> None:
        self.gateway = Gateway(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics: MetricsServer | None = None
        config = uvicorn.Config(
            self.gateway,
            host="127.0.0.1",
            port=self.port,
            loop="uvloop",
            http=GatewayHttpProtocol,
            ws="websockets-sansio",
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def metrics_url(self) -> str:
        assert self.metrics is not None, "start() first"
        return f"http://127.0.0.1:{self.metrics.port}/metrics"

    def start(self) -> None:
        self.metrics = MetricsServer("127.0.0.1", 0)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.metrics is not None:
            self.metrics.stop()


class GatewayProcess:
    """`python -m rayleigh_gateway gateway ...` as a separate process (own process group)."""

    def __init__(
        self,
        config: Path,
        keys: Path | None,
        redis_url: str | None,
        log: Path,
        workers: int = 1,
        extra_args: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        args = [
            sys.executable,
            "-m",
            "rayleigh_gateway",
            "gateway",
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--drain-seconds",
            "2",
            "--no-audit",
            "--metrics-port",
            str(self.metrics_port),
            *(extra_args or []),
        ]
        if keys is not None:
            args += ["--keys", str(keys)]
        if redis_url:
            args += ["--redis-url", redis_url]
        self.log = log.open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": ":".join(str(REPO_ROOT / d) for d in (".", "api", "gateway", "serving", "operator")),
        }
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway not ready within {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()


def write_yaml(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
    return path


class KeyFile:
    """A key file on disk plus the plaintext keys the test created (only tests know those)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = KeyStore.new()
        save_keys(self.store, path)

    def create(self, owner: str = "test", **kwargs: Any) -> str:
        key, _ = self.store.create(owner, **kwargs)
        save_keys(self.store, self.path)
        return key

    def revoke(self, key: str) -> None:
        self.store.revoke(key.split("_")[1])
        save_keys(self.store, self.path)


def rsa_keypair() -> tuple[Any, str]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, pem


def ec_keypair() -> tuple[Any, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, pem


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

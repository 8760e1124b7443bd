"""`rayleigh gateway` as real processes: graceful shutdown drains streams; several workers share
one /metrics view (prometheus multiprocess mode)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.harness import GatewayProcess, KeyFile, Upstream, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def _setup(d: Path, upstream: Upstream) -> tuple[Path, KeyFile, str]:
    config = write_yaml(d / "routes.yaml", {"routes": [{"name": "p", "backend": upstream.url, "models": ["p-model"]}]})
    keys = KeyFile(d / "keys.yaml")
    return config, keys, keys.create(owner="proc")


def test_sigterm_drains_an_in_flight_stream(tmp_path: Path, gw_upstream: Upstream) -> None:
    config, keys, key = _setup(tmp_path, gw_upstream)
    gateway = GatewayProcess(config, keys.path, None, tmp_path / "gw.log")
    try:
        gateway.wait_ready()
        body = {
            "model": "p-model",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "rayleigh_test": {"chunks": 8, "delay": 0.15},
        }
        received: list[bytes] = []

        def read() -> None:
            with httpx.stream(
                "POST",
                gateway.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            ) as resp:
                received.extend(resp.iter_raw())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.4)  # the stream is running
        os.killpg(gateway.proc.pid, signal.SIGTERM)
        reader.join(20)
        assert b"".join(received).endswith(b"data: [DONE]\n\n")
        assert gateway.proc.wait(timeout=20) is not None
    finally:
        gateway.stop()


def test_two_workers_report_one_metrics_view(tmp_path: Path, gw_upstream: Upstream, redis_server: Any) -> None:
    config, keys, key = _setup(tmp_path, gw_upstream)
    gateway = GatewayProcess(config, keys.path, redis_server.url, tmp_path / "gw.log", workers=2)
    try:
        gateway.wait_ready()
        body = {"model": "p-model", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):  # new connections, spread over both workers by the kernel
            resp = httpx.post(
                gateway.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            assert resp.status_code == 200
        text = httpx.get(gateway.metrics_url).text
        line = next(x for x in text.splitlines() if x.startswith("rayleigh_gateway_requests_total{"))
        assert line.endswith(" 20.0"), line
    finally:
        gateway.stop()

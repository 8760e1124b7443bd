"""Fixtures for the load generator's tests: the dev upstream as its own process, helpers to build runs.

The dev upstream (`bench/devupstream.py`) stands in for a model server: it answers in microseconds,
reports `usage` (completion_tokens = the number of chunks it streamed) and obeys the body controls
`{"rayleigh_test": {"chunks": N, "delay": s, "status": code, "fail_after": K}}`. It runs as a
subprocess so that its CPU is not the load generator's. The real serving stack is used by the
integration tests (test_integration.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from rayleigh_loadtest.client import Endpoint, RequestOptions
from rayleigh_loadtest.load import LoadSpec, run_load
from rayleigh_loadtest.progress import Display
from rayleigh_loadtest.runner import Limits, Step, StepResult
from rayleigh_loadtest.stats import Slo
from rayleigh_loadtest.workload import synthetic
from tests.plugins.common import REPO_ROOT, free_port


def start_devupstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.devupstream", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dev upstream exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=1).read()
            return proc, url
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError("the dev upstream did not answer within 30 s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def devupstream() -> Iterator[str]:
    """Base URL of a dev upstream process (shared by the session's load generator tests)."""
    proc, url = start_devupstream()
    try:
        yield url
    finally:
        stop_process(proc)


def make_spec(
    url: str,
    *,
    control: dict[str, Any] | None = None,
    steps: list[Step] | None = None,
    duration_s: float = 10.0,
    max_requests: int = 20,
    stream: bool = True,
    api: str = "chat",
    slo: Slo | None = None,
    output_tokens: int = 8,
    extra_body: dict[str, Any] | None = None,
    drain_s: float = 10.0,
    warmup: int = 0,
) -> LoadSpec:
    body = dict(extra_body or {})
    if control is not None:
        body["rayleigh_test"] = control
    return LoadSpec(
        endpoint=Endpoint(url, "dev", None, api, "dev"),
        options=RequestOptions(stream=stream, extra_body=body, timeout_s=30),
        workload=synthetic(16, output_tokens, count=8),
        steps=steps or [Step("concurrency", 2)],
        limits=Limits(duration_s, max_requests, drain_s, 64),
        slo=slo or Slo(),
        warmup=warmup,
    )


async def measure(spec: LoadSpec, stop: asyncio.Event | None = None) -> list[StepResult]:
    return await run_load(spec, stop=stop or asyncio.Event(), display=Display(quiet=True))

"""The chart's `helm test` script, run by sh and the real curl against a real `rayleigh gateway`.

In the cluster the script runs in the test Pod against the gateway Service; here the same rendered
script talks to a gateway on loopback (only the base URL and the scratch file are rewritten).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import find, render
from tests.plugins.common import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SERVICE_URL = "http://rayleigh-gateway.rayleigh-system.svc:80"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed")
    tmp = tmp_path_factory.mktemp("helm-test")
    rayleigh = str(Path(sys.executable).with_name("rayleigh"))
    created = subprocess.run(
        [rayleigh, "keys", "create", "--file", str(tmp / "keys.yaml"), "--owner", "helm-test", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    key = json.loads(created.stdout)["key"]
    locked = {"name": "locked", "backend": "http://127.0.0.1:9", "models": ["locked-model"]}
    (tmp / "gateway.yaml").write_text(yaml.safe_dump({"routes": [locked]}))
    port = free_port()
    files = ["--config", str(tmp / "gateway.yaml"), "--keys", str(tmp / "keys.yaml")]
    listen = ["--host", "127.0.0.1", "--port", str(port), "--reload-interval", "0.2"]
    with (tmp / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [rayleigh, "gateway", *files, *listen],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp / "gateway.log").read_text()
                time.sleep(0.2)
        yield {"base": base, "key": key, "tmp": tmp, "locked": locked}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def run_hook(gw: dict[str, Any], api_key: str | None) -> subprocess.CompletedProcess[str]:
    pod = find(render({"tests.apiKeySecret": "k"} if api_key else {}), "Pod", "-test-gateway")
    container = pod["spec"]["containers"][0]
    script = container["args"][0]
    assert SERVICE_URL in script
    script = script.replace(SERVICE_URL, gw["base"]).replace("/tmp/body", str(gw["tmp"] / "body"))
    env = {"PATH": os.environ["PATH"], **({"API_KEY": api_key} if api_key else {})}
    return subprocess.run([*container["command"], script], env=env, capture_output=True, text=True, timeout=30)


def test_hook_with_the_test_key_lists_models(gateway: dict[str, Any]) -> None:
    result = run_hook(gateway, gateway["key"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"locked-model"' in result.stdout and "gateway test passed" in result.stdout


def test_hook_fails_with_a_wrong_key(gateway: dict[str, Any]) -> None:
    result = run_hook(gateway, "rk_wrong_key")
    assert result.returncode != 0
    assert "gateway test passed" not in result.stdout


def test_hook_without_key_accepts_401_when_no_model_is_public(gateway: dict[str, Any]) -> None:
    result = run_hook(gateway, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "missing_api_key" in result.stdout


def test_hook_without_key_lists_public_models(gateway: dict[str, Any]) -> None:
    public = {"name": "open", "backend": "http://127.0.0.1:9", "models": ["open-model"], "public": True}
    (gateway["tmp"] / "gateway.yaml").write_text(yaml.safe_dump({"routes": [gateway["locked"], public]}))
    deadline = time.monotonic() + 10
    while True:
        result = run_hook(gateway, None)
        if '"open-model"' in result.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # the gateway reloads its config file every 0.2 s
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"open-model"' in result.stdout

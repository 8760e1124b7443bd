"""A real Ray head, started the way the rendered head pod starts it, works locked down.

The installed Ray runs with the rendered container's token-auth environment (`RAY_AUTH_MODE`,
`RAY_AUTH_TOKEN` as its secretKeyRef would resolve, `HOME`) on a read-only root filesystem with
writable tmpfs only where the rendered pod mounts emptyDirs (/tmp, $HOME, /dev/shm): a private mount
namespace (`unshare -m`, needs root; skipped otherwise) remounts / read-only for the head's
processes. The operator's Serve client then reaches the dashboard with the token, and is refused
without it, while the probes' health path stays open.

Not shown: vLLM under a read-only root (a model load takes minutes here; the kind workflow runs one),
and the ports: this head uses free loopback ports, not the pod's fixed ones, to run beside other tests.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayleigh_operator import render as r
from rayleigh_operator import serve_client
from rayleigh_serving.local import free_port
from tests.plugins.common import EXAMPLES_DIR
from tests.plugins.kube import stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

TOKEN = "5a" * 32


def rendered_head() -> dict[str, Any]:
    from rayleigh_api.validation import validate_document

    md = validate_document(yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text()))
    head = r.render_head(md, r.RenderOptions())[0]
    container: dict[str, Any] = head["spec"]["template"]["spec"]["containers"][0]
    return container


def can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not can_unshare():
        pytest.skip("needs root and unshare -m for a read-only root filesystem")
    container = rendered_head()
    env = {"PATH": os.environ.get("PATH", ""), "RAY_USAGE_STATS_ENABLED": "0"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["name"] == "RAY_AUTH_TOKEN":  # the secretKeyRef, resolved as the kubelet would
            env["RAY_AUTH_TOKEN"] = TOKEN
    assert env["RAY_AUTH_MODE"] == "token"
    writable = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] in ("/tmp", env["HOME"])]
    assert sorted(writable) == sorted(["/tmp", env["HOME"]])
    dashboard = free_port()
    ray = str(Path(sys.executable).with_name("ray"))
    start = (
        f"{shlex.quote(ray)} start --head --block --node-ip-address=127.0.0.1 --port={free_port()} "
        f"--dashboard-host=127.0.0.1 --dashboard-port={dashboard} --metrics-export-port={free_port()} "
        f"--ray-client-server-port={free_port()} --dashboard-agent-listen-port={free_port()} "
        "--num-cpus=1 --num-gpus=0 --disable-usage-stats --include-dashboard=true"
    )
    home_parent = str(Path(env["HOME"]).parent)
    script = "\n".join(
        [
            "set -e",
            "mount --make-rprivate /",
            "mount --rbind / /",
            "mount -o remount,bind,ro /",
            "! touch /.rayleigh-rw-check 2>/dev/null",  # the root filesystem is read-only now
            "mount -t tmpfs tmpfs /tmp",
            f"mount -t tmpfs tmpfs {shlex.quote(home_parent)}",
            f"mkdir -p {shlex.quote(env['HOME'])}",
            f"cd {shlex.quote(env['HOME'])}",
            f"exec {start}",
        ]
    )
    log = tmp_path_factory.mktemp("ray-ro") / "ray.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own process group: stopped by killpg, never `ray stop`
        )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"ray start exited {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"{url}/api/gcs_healthz", timeout=2) as resp:
                    if b"success" in resp.read():
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no dashboard: {log.read_text()[-2000:]}"
            time.sleep(0.5)
        yield url
    finally:
        # `ray start --block` and the GCS wait for each other for about 30 s after SIGTERM with
        # nothing to flush (rayleigh_serving.local._still_stopping): SIGKILL the group after 3 s.
        stop_process(proc, timeout=3)


async def test_read_only_ray_head_serves_the_operator_with_its_token_only(head: str) -> None:
    client = serve_client.ServeClient()
    try:
        details = await client.get(head, token=TOKEN)
        assert details.get("applications") == {}
        with pytest.raises(serve_client.ServeError) as err:
            await client.get(head)
        assert err.value.status == 401
        with pytest.raises(serve_client.ServeError) as err:
            await client.get(head, token="0" * 64)
        assert err.value.status == 403
    finally:
        await client.close()
    # The probes' path needs no token.
    with urllib.request.urlopen(f"{head}/api/gcs_healthz", timeout=5) as resp:
        assert b"success" in resp.read()

"""Local mode: the gateway route `rayleigh up` writes, and `rayleigh up` itself (what `make demo` runs)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import jwt
import openai
import psutil
import pytest
import yaml
from aiohttp import web

from rayleigh_api.loading import load_model_deployment
from rayleigh_gateway.routes import parse_config, route_for
from rayleigh_serving.reaper import kill_marked
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT, free_port


def test_gateway_route_for_tiny_example_is_a_valid_gateway_route() -> None:
    md = load_model_deployment(EXAMPLES_DIR / "tiny.yaml")
    config = parse_config({"routes": [route_for(md, "http://127.0.0.1:9").model_dump(mode="json", by_alias=True)]})
    route = config.routes[0]
    assert (route.backend, route.models, route.public) == ("http://127.0.0.1:9", ["tiny-qwen"], False)


def test_gateway_route_lists_adapters_as_models() -> None:
    md = load_model_deployment(EXAMPLES_DIR / "qwen-lora.yaml")
    assert route_for(md, "http://x:1").models == [
        "qwen-1.8b",
        "sql-assistant",
        "support-tone",
        "legal-summary",
        "de-translate",
    ]


def read_until(lines: queue.Queue[str | None], marker: str, timeout: float) -> str:
    """Everything printed up to the line holding `marker` (`lines` is fed by `pump`)."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        out.append(line)
        if marker in line:
            return "".join(out)
    raise AssertionError(f"no {marker!r} within {timeout:.0f} s; printed:\n{''.join(out)}")


def pump(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines of `stream` as they come, read on a thread (None at end of stream)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def run() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=run, daemon=True).start()
    return lines


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_rayleigh_up_serves_the_tiny_model_through_the_gateway_until_ctrl_c(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`make demo` runs `rayleigh up -f manifests/examples/tiny.yaml`: it must print a working
    endpoint, key, where start-up went and start-to-first-answer time, and on Ctrl-C stop every
    process it started (Ray's, the engine's, the gateway). HOME holds a Ray token (any earlier
    `ray.init()` leaves one), which must not switch local mode's Ray to token auth."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef0123456789abcdef")
    port = free_port()
    env = {**os.environ, "HOME": str(home), "RAYLEIGH_STATE_DIR": str(tmp_path / "state")}
    env.pop("RAY_AUTH_MODE", None)
    rayleigh = Path(sys.executable).with_name("rayleigh")
    stderr = tmp_path / "up.stderr"
    proc = subprocess.Popen(
        [str(rayleigh), "up", "-f", str(EXAMPLES_DIR / "tiny.yaml"), "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr.open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        try:
            printed = read_until(pump(proc.stdout), "Press Ctrl-C to stop.", timeout=600)
        except AssertionError as e:
            raise AssertionError(f"{e}\nstderr:\n{stderr.read_text()}") from None
        assert re.search(r"Ready: first answer \d+\.\d s after start", printed)
        assert re.search(
            r"Start-up \(seconds since start\): Ray started [\d.]+ s, .*engine loaded .*first answer [\d.]+ s", printed
        ), printed
        assert f"OpenAI endpoint: http://127.0.0.1:{port}/v1" in printed
        key = re.search(r"API key \(local, generated\): (\S+)", printed)
        assert key, printed
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0)
        r = client.chat.completions.create(
            model="tiny-qwen", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4
        )
        assert r.usage is not None and r.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
        tree = process_tree(proc.pid)
        assert {"raylet", "gcs_server"} <= {p.name() for p in tree}, tree
        assert any("LLMServer" in cmdline(p) for p in tree), tree
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        # The goal is 5 s on an idle laptop (docs/SERVING.md); 30 s leaves room for a busy CI machine.
        _gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running {time.monotonic() - sent:.1f} s after Ctrl-C: {alive}"
        print(f"everything stopped {time.monotonic() - sent:.1f} s after Ctrl-C ({len(tree)} processes)")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0).models.list()


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


REAPER_PARENT = """
import os, subprocess, sys, time
from rayleigh_serving.reaper import Reaper
temp_dir = sys.argv[1]
reaper = Reaper.start()
grouped = subprocess.Popen(["sleep", "600"], start_new_session=True)
marked = subprocess.Popen(["sleep", "601"], env={**os.environ, "RAY_TMPDIR": temp_dir}, start_new_session=True)
reaper.group(grouped.pid)
reaper.marker(temp_dir)
reaper.rmtree(temp_dir)
print(grouped.pid, marked.pid, flush=True)
time.sleep(600)
"""


def test_reaper_kills_what_it_was_told_about_when_its_parent_is_sigkilled(tmp_path: Path) -> None:
    """The watchdog alone (no Ray): a process group and a process marked by RAY_TMPDIR, in sessions of
    their own, die with the parent; the temp dir goes too."""
    temp_dir = tmp_path / "rl-x"
    temp_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", REAPER_PARENT, str(temp_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        children = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
        assert len(children) == 2
        parent.kill()
        parent.wait()
        _gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive
        deadline = time.monotonic() + 10
        while temp_dir.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not temp_dir.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_rayleigh_up_killed_with_sigkill_leaves_no_ray_process_behind(tiny_model_dir: Path, tmp_path: Path) -> None:
    """SIGKILL gives `rayleigh up` no chance to clean up: its watchdog must. Killed once the Serve
    controller took the application (before the engine loads: no engine start in this test)."""
    env = {**os.environ, "RAYLEIGH_STATE_DIR": str(tmp_path / "state")}
    rayleigh = Path(sys.executable).with_name("rayleigh")
    proc = subprocess.Popen(
        [str(rayleigh), "up", "-f", str(EXAMPLES_DIR / "tiny.yaml"), "--port", str(free_port())],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        read_until(pump(proc.stdout), "Serve controller up, application submitted", timeout=240)
        tree = process_tree(proc.pid)
        names = {p.name() for p in tree}
        assert {"raylet", "gcs_server"} <= names, names
        assert any(" gateway " in cmdline(p) for p in tree), names
        temp_dir = next(m.group(1) for p in tree if (m := re.search(r"--temp-dir=(\S+)", cmdline(p))))
        proc.kill()
        proc.wait()
        _gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running after SIGKILL: {alive}"
        # Also those started after the snapshot (workers, the engine): none names the head's temp dir.
        deadline = time.monotonic() + 30
        while (left := kill_marked([temp_dir], 0)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"still running after SIGKILL, pids: {left}"
        deadline = time.monotonic() + 10
        while Path(temp_dir).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(temp_dir).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class UpProcess:
    """`rayleigh up -f FILE --upstream URL`: the gateway that `make demo` runs, in front of a running server."""

    def __init__(self, md_file: Path, upstream: str, tmp_path: Path, ca_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The gateway fetches the issuer's JWKS over HTTPS and trusts the test CA through OpenSSL's SSL_CERT_FILE.
        env = {**os.environ, "RAYLEIGH_STATE_DIR": str(tmp_path / "state"), "SSL_CERT_FILE": str(ca_file)}
        rayleigh = Path(sys.executable).with_name("rayleigh")
        self.proc = subprocess.Popen(
            [str(rayleigh), "up", "-f", str(md_file), "--port", str(self.port), "--upstream", upstream],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.printed = read_until(pump(self.proc.stdout), "Press Ctrl-C to stop.", timeout=120)

    def chat(self, bearer: str) -> int:
        body = {"model": "tiny-qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        r = httpx.post(
            self.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=30
        )
        return r.status_code

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            assert self.proc.wait(timeout=60) == 0
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@dataclass
class Issuer:
    """An identity provider: its signing key and its JWKS over HTTPS (jwksUrl must be https)."""

    key: Any
    jwks_url: str
    ca_file: Path


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The dev upstream stands in for the model server: these tests are about the gateway `rayleigh up` runs."""
    from tests.gateway.harness import Upstream

    server = Upstream()
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    from tests.gateway.harness import AiohttpThread
    from tests.gateway.redis_servers import make_tls_files

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "RS256", "use": "sig"}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    tls = make_tls_files(tmp_path_factory.mktemp("idp-tls"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    server = AiohttpThread(app, ssl_context=context)
    server.start()
    yield Issuer(key, f"https://127.0.0.1:{server.port}/jwks.json", tls.ca)
    server.stop()


def tiny_with_gateway(tmp_path: Path, gateway: dict[str, Any]) -> Path:
    doc = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    doc["spec"]["gateway"] = gateway
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def token(key: Any) -> str:
    now = int(time.time())
    claims = {"iss": "https://idp.test", "aud": "rayleigh", "sub": "alice", "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def test_rayleigh_up_with_default_auth_prints_a_key_that_works_and_refuses_jwts(
    upstream: str, issuer: Issuer, tmp_path: Path
) -> None:
    up = UpProcess(tiny_with_gateway(tmp_path, {}), upstream, tmp_path, issuer.ca_file)
    try:
        api_key = re.search(r"API key \(local, generated\): (\S+)", up.printed)
        assert api_key, up.printed
        assert up.chat(api_key.group(1)) == 200
        assert up.chat(token(issuer.key)) == 401
    finally:
        up.stop()


def test_rayleigh_up_honours_a_jwt_only_route_from_the_spec(upstream: str, issuer: Issuer, tmp_path: Path) -> None:
    """`spec.gateway.auth: {apiKeys: false, jwt: ...}` reaches local mode: no key is made, JWTs are checked."""
    jwt_auth = {"issuer": "https://idp.test", "audience": "rayleigh", "jwksUrl": issuer.jwks_url}
    md = tiny_with_gateway(tmp_path, {"auth": {"apiKeys": False, "jwt": jwt_auth}})
    up = UpProcess(md, upstream, tmp_path, issuer.ca_file)
    try:
        assert "API key (local" not in up.printed
        assert "send a JWT from issuer https://idp.test" in up.printed
        assert up.chat(token(issuer.key)) == 200
        assert up.chat("rk-not-a-key") == 401
        assert up.chat(token(rsa_key())) == 401
    finally:
        up.stop()


def rsa_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)

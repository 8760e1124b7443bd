"""Real Redis servers of the shapes the gateway meets in production, on free loopback ports:
TLS (a CA, server and client certificates made here with `cryptography`), an ACL user, a master
with a replica and a Sentinel, a cluster node. And the gateway as a process with any flags.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.plugins.common import REPO_ROOT, free_port

REDIS_SERVER = shutil.which("redis-server", path="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", ""))
REDIS_SENTINEL = shutil.which("redis-sentinel", path="/usr/bin:/usr/local/bin:" + os.environ.get("PATH", ""))


def wait_until(check: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll `check` until it is truthy (exceptions count as not yet); bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the condition is not met yet
            last = exc
        time.sleep(every)
    raise AssertionError(f"{what} not reached within {timeout}s (last error: {last})")


# ---------------------------------------------------------------- certificates


@dataclass
class TLSFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verifying with it must fail


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital_signature, key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_tls_files(d: Path) -> TLSFiles:
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("rayleigh test CA")
    _, other = _ca("some other CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "redis", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "rayleigh-gateway", server=False)
    files = TLSFiles(
        d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key", d / "other-ca.pem"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files.server_key)
    _write_key(client_key, files.client_key)
    return files


# ---------------------------------------------------------------- servers


class RedisProc:
    """redis-server (or redis-sentinel) with the given config lines, in its own process group."""

    def __init__(self, workdir: Path, name: str, lines: list[str], sentinel: bool = False) -> None:
        assert REDIS_SERVER, "redis-server not found (Debian package redis-server)"
        self.port = free_port()
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "redis.conf"
        base = [
            "bind 127.0.0.1",
            "save ''",
            "appendonly no",
            "loglevel notice",
            f"dir {self.dir}",
            f"logfile {self.dir / 'redis.log'}",
        ]
        has_port = any(line.startswith("port ") for line in lines)
        self.conf.write_text("\n".join(([] if has_port else [f"port {self.port}"]) + base + lines) + "\n")
        for line in lines:
            if line.startswith(("port ", "tls-port ")) and line.split()[1] != "0":
                self.port = int(line.split()[1])
        if sentinel:
            self.argv = (
                [REDIS_SENTINEL, str(self.conf)] if REDIS_SENTINEL else [REDIS_SERVER, str(self.conf), "--sentinel"]
            )
        else:
            self.argv = [REDIS_SERVER, str(self.conf)]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 15.0) -> RedisProc:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}: {self.log[-2000:]}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if listening():
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis on port {self.port} did not listen within {timeout}s: {self.log[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def tls_lines(port: int, files: TLSFiles, auth_clients: str) -> list[str]:
    return [
        "port 0",
        f"tls-port {port}",
        f"tls-cert-file {files.server_cert}",
        f"tls-key-file {files.server_key}",
        f"tls-ca-cert-file {files.ca}",
        f"tls-auth-clients {auth_clients}",
    ]


# The least an ACL user of the gateway needs (docs/GATEWAY.md says the same).
GATEWAY_ACL = (
    "~rayleigh:* resetchannels -@all +ping +info +select +role +evalsha +eval +script|load +time "
    "+hmget +hset +hget +hincrby +pexpire +expire +scan +hgetall"
)


# ---------------------------------------------------------------- the gateway as a process


class GatewayCLI:
    """`python -m rayleigh_gateway gateway ...` with any extra flags, its output in a log file."""

    def __init__(self, config: Path, keys: Path | None, log: Path, extra: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
            "--drain-seconds",
            "2",
            "--no-audit",
            *(["--keys", str(keys)] if keys else []),
            *extra,
        ]
        self.log_path = log
        self.log = log.open("wb")
        full_env = {
            **os.environ,
            "PYTHONPATH": ":".join(str(REPO_ROOT / d) for d in (".", "api", "gateway", "serving", "operator")),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=full_env
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> GatewayCLI:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.output()[-3000:]}")
            return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway not ready within {timeout}s: {self.output()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.log.close()

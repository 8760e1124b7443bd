"""spec.routing under Ray's HAProxy ingress: the balance directives `ray_env` gives Ray, rendered by
Ray's own HAProxy config generator (ray.serve._private.haproxy) and run by the haproxy binary Ray
uses, in front of two small HTTP servers standing in for replicas (no engine: what is checked is
HAProxy's choice of server). The engines' side is tests/serving/test_prefix_routing.py."""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from rayleigh_api.routing import AFFINITY_HEADER, Routing
from rayleigh_serving.ingress import haproxy_balance, ray_env
from rayleigh_serving.local import free_port


def test_each_strategy_maps_to_its_haproxy_balance() -> None:
    assert haproxy_balance(Routing(strategy="least-loaded")) == "leastconn"
    assert haproxy_balance(Routing(strategy="round-robin")) == "roundrobin"
    lines = haproxy_balance(Routing(balance_factor=1.5)).split("\n")
    assert [line.strip() for line in lines] == [
        f"hdr({AFFINITY_HEADER})",
        "hash-type consistent",
        "hash-balance-factor 150",
    ]


def test_the_default_routing_is_prefix_aware_on_every_haproxy_head() -> None:
    assert ray_env("haproxy")["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] == haproxy_balance(Routing())
    assert "RAY_SERVE_HAPROXY_BALANCE_ALGORITHM" not in ray_env("proxy", Routing())


@dataclass
class Replica:
    """A stand-in for a replica's HTTP server: answers its name; holds requests while `hold` is clear."""

    name: str
    port: int = field(default_factory=free_port)
    hold: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self) -> http.server.ThreadingHTTPServer:
        replica = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _answer(self) -> None:
                body = replica.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a health check that did not wait for the body
                    self.wfile.write(body)

            def do_GET(self) -> None:  # HAProxy's health checks
                self._answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with replica.lock:
                    replica.in_flight += 1
                try:
                    replica.hold.wait(30)
                finally:
                    with replica.lock:
                        replica.in_flight -= 1
                self._answer()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


@dataclass
class Ingress:
    url: str
    replicas: list[Replica]


def _haproxy(tmp_path: Path, routing: Routing, replicas: list[Replica]) -> Iterator[Ingress]:
    from ray.serve._private.haproxy import (
        BackendConfig,
        HAProxyApi,
        HAProxyConfig,
        ServerConfig,
        get_haproxy_binary,
    )
    from ray.serve.config import HTTPOptions

    port = free_port()
    cfg = HAProxyConfig(
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "state"),
        stats_port=free_port(),
        metrics_port=free_port(),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
        metrics_enabled=False,
        http_options=HTTPOptions(host="127.0.0.1", port=port),
        balance_algorithm=ray_env("haproxy", routing)["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"],
    )
    servers = [ServerConfig(name=r.name, host="127.0.0.1", port=r.port) for r in replicas]
    backend = BackendConfig(name="app", path_prefix="/app", servers=servers, timeout_server_s=60)
    config_file = tmp_path / "haproxy.cfg"
    HAProxyApi(cfg, {"app": backend}, config_file_path=str(config_file))._generate_config_file_internal()
    check = subprocess.run([get_haproxy_binary(), "-c", "-f", str(config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    http_servers = [r.serve() for r in replicas]
    for r in replicas:
        r.hold.set()
    proc = subprocess.Popen([get_haproxy_binary(), "-db", "-f", str(config_file)], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # both servers UP (HAProxy's health checks passed)
            try:
                if {httpx.post(url + "/app/x", timeout=5).text for _ in range(8)} == {r.name for r in replicas}:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "HAProxy did not send to both servers within 60 s"
            time.sleep(0.2)
        yield Ingress(url, replicas)
    finally:
        for r in replicas:
            r.hold.set()
        proc.terminate()
        proc.wait(10)
        for s in http_servers:
            s.shutdown()
            s.server_close()


@pytest.fixture
def prefix_aware(tmp_path: Path) -> Iterator[Ingress]:
    yield from _haproxy(tmp_path, Routing(), [Replica("a"), Replica("b")])


def _served(ingress: Ingress, key: str, n: int) -> Counter[str]:
    with httpx.Client(timeout=30) as client:
        return Counter(
            client.post(ingress.url + "/app/v1/chat/completions", headers={AFFINITY_HEADER: key}).text for _ in range(n)
        )


def test_every_request_of_one_affinity_key_goes_to_one_replica(prefix_aware: Ingress) -> None:
    for key in ("0f3a9c1d2e4b5a6c", "77aa01bc9de34f10", "c0ffee0000000001"):
        assert len(_served(prefix_aware, key, 12)) == 1, key


def test_different_affinity_keys_spread_over_the_replicas(prefix_aware: Ingress) -> None:
    first = Counter(next(iter(_served(prefix_aware, f"{i:016x}", 1))) for i in range(40))
    assert set(first) == {"a", "b"} and min(first.values()) >= 5, first


def test_a_loaded_replica_spills_its_keys_requests_to_the_other(prefix_aware: Ingress) -> None:
    key = "5eed5eed5eed5eed"
    (home,) = _served(prefix_aware, key, 3)
    for r in prefix_aware.replicas:
        r.hold.clear()
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_served, prefix_aware, key, 1) for _ in range(6)]
        deadline = time.monotonic() + 30
        while sum(r.in_flight for r in prefix_aware.replicas) < 6:
            assert time.monotonic() < deadline, [r.in_flight for r in prefix_aware.replicas]
            time.sleep(0.05)
        # Bounded load (hash-balance-factor 125): the key's replica takes at most ceil(1.25 x 6 / 2) = 4.
        in_flight = {r.name: r.in_flight for r in prefix_aware.replicas}
        for r in prefix_aware.replicas:
            r.hold.set()
        served = sum((f.result() for f in futures), Counter())
    assert 0 < in_flight[home] <= 4 and sum(in_flight.values()) == 6, in_flight
    assert served[home] == in_flight[home], (served, in_flight)


def test_without_a_key_requests_are_spread_over_the_replicas(prefix_aware: Ingress) -> None:
    with httpx.Client(timeout=30) as client:  # HAProxy's fallback for a missing header: round robin
        names = Counter(client.post(prefix_aware.url + "/app/v1/completions").text for _ in range(20))
    assert min(names["a"], names["b"]) >= 6, names

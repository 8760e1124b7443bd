"""The gateway's deadlines and concurrency limits, against the real gateway.

As a process (`rayleigh gateway`, its real flags and uvicorn protocol): 300 slow uploads (raw
sockets sending headers and a trickle of body) get 408 at the body deadline while a normal request
is answered; heads that are too large or too many get 431; a head that never ends gets 408.
In a thread (two gateways, own configs): a backend whose streams have slow readers does not take the
connections of another backend; a client that stops reading is cut and its backend connection
released; a caller's concurrent streams are capped (429). And /metrics lives on its own port.

Every load loop here is bounded in count and time; only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from rayleigh_gateway.app import Settings
from tests.gateway.conftest import GW
from tests.gateway.harness import AiohttpThread, GatewayProcess, GatewayThread, KeyFile, Upstream, write_yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HTTP = httpx.Client(timeout=30)
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # a slow reader: keep what the kernel takes for it small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def post_head(path: str, body_len: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_len}\r\n{extra}\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, seconds: float = 20.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    data = b""
    deadline = time.monotonic() + seconds
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the gateway did not close the connection; got {data[:200]!r}")


# ---------------------------------------------------------------- as a process: head and body


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory, gw_upstream: Upstream) -> Iterator[GatewayProcess]:
    d = tmp_path_factory.mktemp("limits-proc")
    config = {
        "limits": {"bodyTimeoutSeconds": 8},
        "routes": [{"name": "p", "backend": gw_upstream.url, "models": ["p-model"], "public": True}],
    }
    gateway = GatewayProcess(
        write_yaml(d / "routes.yaml", config),
        None,
        None,
        d / "gw.log",
        extra_args=["--header-timeout", "2", "--max-headers", "50", "--max-header-bytes", "8192"],
    )
    gateway.wait_ready()
    yield gateway
    gateway.stop()


def test_slow_uploads_get_408_and_others_are_answered_meanwhile(proc: GatewayProcess) -> None:
    n = 300
    body = orjson.dumps({"model": "p-model", **CHAT, "pad": "x" * 4000})
    socks = []
    try:
        for _ in range(n):
            sock = connect(proc.port)
            sock.sendall(post_head("/v1/chat/completions", len(body)) + body[:10])
            sock.setblocking(False)
            socks.append(sock)
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, i)
        answers: dict[int, bytes] = {i: b"" for i in range(n)}
        closed: set[int] = set()

        def poll(timeout: float) -> None:
            for key, _ in selector.select(timeout):
                i = key.data
                try:
                    chunk = socks[i].recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    chunk = b""
                answers[i] += chunk
                if not chunk:
                    closed.add(i)
                    selector.unregister(socks[i])

        poll(0)
        assert not closed and not any(answers.values())  # all 300 uploads are still open ...
        resp = HTTP.post(proc.url + "/v1/chat/completions", json={"model": "p-model", **CHAT})
        assert resp.status_code == 200  # ... and a normal request is answered meanwhile
        poll(0)
        assert not any(answers.values())
        # They trickle on (a byte each, every half second) until the body deadline cuts them.
        sent = 10
        deadline = time.monotonic() + 60
        while len(closed) < n and time.monotonic() < deadline:
            if sent < len(body) - 1:
                for i, sock in enumerate(socks):
                    if i not in closed:
                        with contextlib.suppress(OSError):
                            sock.send(body[sent : sent + 1])
                sent += 1
            poll(0.5)
        assert len(closed) == n, f"{n - len(closed)} slow uploads were never cut"
        for i in range(n):
            assert answers[i].startswith(b"HTTP/1.1 408 "), answers[i][:100]
            assert b'"code":"request_timeout"' in answers[i]
        # And the gateway still answers.
        assert HTTP.post(proc.url + "/v1/chat/completions", json={"model": "p-model", **CHAT}).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_too_many_headers_get_431(proc: GatewayProcess) -> None:
    sock = connect(proc.port)
    try:
        extra = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(200))
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"request_headers_too_large" in answer


def test_huge_header_gets_431_before_it_is_all_sent(proc: GatewayProcess) -> None:
    sock = connect(proc.port)
    answer = b""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        with contextlib.suppress(OSError):  # the gateway hangs up mid-way
            for _ in range(1024):  # up to 16 MiB, never finished
                sock.sendall(b"a" * 16384)
                sent += 16384
        answer = read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert sent < 1024 * 16384


def test_head_that_never_ends_gets_408(proc: GatewayProcess) -> None:
    idle = connect(proc.port)  # sends nothing at all
    slow = connect(proc.port)
    try:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        answer = read_until_closed(slow)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert read_until_closed(idle).startswith(b"HTTP/1.1 408 ")
        assert httpx.get(proc.url + "/healthz").status_code == 200
    finally:
        idle.close()
        slow.close()


def test_metrics_are_on_their_own_port_only(proc: GatewayProcess) -> None:
    assert httpx.get(proc.url + "/metrics").status_code == 404
    resp = httpx.get(proc.metrics_url)
    assert resp.status_code == 200
    assert "rayleigh_gateway_requests_total" in resp.text


# ---------------------------------------------------------------- in a thread: streams


class StreamBackend:
    """A backend whose chat streams are endless (64 KiB events, as fast as they are taken) or held
    open (a heartbeat every 50 ms); counts streams started and cut by the other side."""

    def __init__(self) -> None:
        self.started = 0
        self.cut = 0
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.server = AiohttpThread(app)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = (body.get("rayleigh_test") or {}).get("mode", "endless")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.started += 1
        event = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": "x" * 65000}}]}) + b"\n\n"
        deadline = time.monotonic() + 90
        try:
            for _ in range(20_000):  # bounded: ~1.3 GB or 90 s
                if time.monotonic() > deadline:
                    break
                if mode == "endless":
                    await resp.write(event)
                else:
                    await resp.write(b": held\n\n")
                    await asyncio.sleep(0.05)
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            self.cut += 1
        return resp


@pytest.fixture(scope="module")
def backend() -> Iterator[StreamBackend]:
    b = StreamBackend()
    b.server.start()
    yield b
    b.server.stop()


@dataclass
class Gw:
    thread: GatewayThread
    keys: KeyFile

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def port(self) -> int:
        return self.thread.port


def start_gateway(d: Path, backend: StreamBackend, other: Upstream, limits: dict[str, Any]) -> Gw:
    def route(name: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": "lim", "backend": url, "models": [f"{name}-model"], **extra}

    config = {
        "limits": limits,
        "websocketAllowedOrigins": ["https://chat.example"],
        "routes": [
            route("slow", backend.server.url, public=True),
            route("keyed", backend.server.url),
            route("other", other.url, public=True),
        ],
    }
    keys = KeyFile(d / "keys.yaml")
    thread = GatewayThread(
        Settings(config_path=str(write_yaml(d / "routes.yaml", config)), keys_path=str(keys.path), audit=False)
    )
    thread.start()
    return Gw(thread, keys)


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory, backend: StreamBackend, gw_upstream: Upstream) -> Iterator[Gw]:
    """Two connections per backend, a long send timeout: slow readers hold their backend's pool."""
    gw = start_gateway(
        tmp_path_factory.mktemp("pools"),
        backend,
        gw_upstream,
        {"upstreamConnections": 2, "sendTimeoutSeconds": 120, "maxConcurrentStreams": 50},
    )
    yield gw
    gw.thread.stop()


@pytest.fixture(scope="module")
def cutter(tmp_path_factory: pytest.TempPathFactory, backend: StreamBackend, gw_upstream: Upstream) -> Iterator[Gw]:
    """A one-second send timeout; the default pool and stream cap."""
    gw = start_gateway(tmp_path_factory.mktemp("cutter"), backend, gw_upstream, {"sendTimeoutSeconds": 1})
    yield gw
    gw.thread.stop()


def open_stream(port: int, model: str, mode: str, key: str | None = None, read_head: bool = False) -> socket.socket:
    """A streaming chat request on a raw socket whose answer is not read (a slow reader)."""
    body = orjson.dumps({"model": model, **CHAT, "stream": True, "rayleigh_test": {"mode": mode}})
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock = connect(port, rcvbuf=4096)
    sock.sendall(post_head("/v1/chat/completions", len(body), auth) + body)
    if read_head:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    return sock


def test_slow_readers_of_one_backend_do_not_block_another_backend(pools: Gw, backend: StreamBackend) -> None:
    started, cut = backend.started, backend.cut
    socks = [open_stream(pools.port, "slow-model", "endless") for _ in range(4)]
    try:
        # The backend's two connections are taken by streams nobody reads (the others queue).
        wait_for(lambda: backend.started - started == 2, "two streams to start")
        resp = HTTP.post(pools.url + "/v1/chat/completions", json={"model": "other-model", **CHAT})
        assert resp.status_code == 200
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: backend.cut - cut >= 2, "the streams to be cancelled at the backend")


def test_client_that_stops_reading_is_cut_and_its_backend_released(cutter: Gw, backend: StreamBackend) -> None:
    cut = backend.cut
    sock = open_stream(cutter.port, "slow-model", "endless")
    try:
        wait_for(lambda: backend.cut > cut, "the backend connection to be released", seconds=60)
        read_until_closed(sock, seconds=60)  # and the client's connection is closed
    finally:
        sock.close()
    assert httpx.get(cutter.url + "/healthz").status_code == 200


def test_concurrent_streams_per_key_are_capped(cutter: Gw) -> None:
    pools = cutter  # its own backend pool (the other gateway's has two connections)
    key = pools.keys.create(owner="streamer", max_concurrent_streams=2)
    other = pools.keys.create(owner="other")
    pools.thread.gateway.check_reload()
    held = [open_stream(pools.port, "keyed-model", "held", key, read_head=True) for _ in range(2)]
    body = {"model": "keyed-model", **CHAT, "stream": True, "rayleigh_test": {"mode": "held"}}
    try:
        with HTTP.stream(
            "POST", pools.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            assert resp.status_code == 429
            assert orjson.loads(resp.read())["error"]["code"] == "too_many_streams"
            assert resp.headers["retry-after"] == "1"
        # Another key is not affected (the gateway-wide default is 64).
        extra = open_stream(pools.port, "keyed-model", "held", other, read_head=True)
        extra.close()
        # When one stream ends, the key may open another.
        held.pop().close()

        def admitted() -> bool:
            sock = None
            try:
                sock = open_stream(pools.port, "keyed-model", "held", key, read_head=True)
                return True
            except AssertionError:
                return False
            finally:
                if sock is not None:
                    sock.close()

        wait_for(admitted, "a stream slot to free up")
    finally:
        for sock in held:
            sock.close()


async def test_websocket_origin_allow_list(pools: Gw) -> None:
    import aiohttp

    url = pools.url.replace("http", "ws") + "/v1/ws/chat"
    message = {"model": "other-model", **CHAT}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, origin="https://evil.example")
        assert refused.value.status == 403
        for origin in ("https://chat.example", None):  # allowed, and a non-browser client
            async with session.ws_connect(url, origin=origin) as ws:
                await ws.send_str(orjson.dumps(message).decode())
                kinds = []
                for _ in range(100):
                    msg = await asyncio.wait_for(ws.receive_json(), 20)
                    kinds.append(msg["type"])
                    if msg["type"] in ("done", "error"):
                        break
                assert kinds[-1] == "done", kinds


def test_metrics_are_not_on_the_api_port(gw: GW) -> None:
    assert HTTP.get(gw.url + "/metrics").status_code == 404
    assert "rayleigh_gateway_requests_total" in HTTP.get(gw.metrics_url).text

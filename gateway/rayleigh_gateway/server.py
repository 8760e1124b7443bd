"""The gateway's server edges around uvicorn: the HTTP protocol (uvicorn's httptools one, fenced for
the open internet) and the Prometheus metrics server on its own port.

`GatewayHttpProtocol` adds what uvicorn's httptools protocol lacks: a deadline on the request head
(from connection or first byte to the end of the headers; slowloris), caps on the head's size and
number of headers (431, before httptools buffers more), and a `rayleigh.abort` scope entry with
which the app drops a connection whose client stopped reading (proxy.py's send timeout) without
uvicorn logging an error. Its limits come from the environment (`rayleigh gateway` sets them from
its flags before the workers start).

`start_metrics_server` serves `/metrics` on another port than the API, so key ids, subjects,
client addresses and route names are not shown to the API's callers; with several uvicorn workers
it runs in the supervisor process and aggregates the workers' PROMETHEUS_MULTIPROC_DIR files.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any
from wsgiref.simple_server import WSGIServer

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .errors import error_body

ENV_MAX_HEADER_BYTES = "RAYLEIGH_GATEWAY_MAX_HEADER_BYTES"
ENV_MAX_HEADERS = "RAYLEIGH_GATEWAY_MAX_HEADERS"
ENV_HEADER_TIMEOUT = "RAYLEIGH_GATEWAY_HEADER_TIMEOUT"
ABORT = "rayleigh.abort"  # scope key: a callable that drops the connection of this request


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_bytes: int = 32 * 1024  # request line + headers
    max_count: int = 100  # headers
    timeout: float = 10.0  # seconds from the connection (or a keep-alive request's first byte) to the end of the head


@cache
def head_limits() -> HeadLimits:
    env = os.environ
    default = HeadLimits()
    return HeadLimits(
        int(env.get(ENV_MAX_HEADER_BYTES) or default.max_bytes),
        int(env.get(ENV_MAX_HEADERS) or default.max_count),
        float(env.get(ENV_HEADER_TIMEOUT) or default.timeout),
    )


class _HeadRejected(Exception):
    """Raised from a parser callback to stop parsing a head that is over a limit."""


def _error_response(status: int, message: str, code: str) -> bytes:
    body = error_body(message, "invalid_request_error", code)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\nconnection: close\r\n\r\n",
            body,
        ]
    )


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head deadline, head caps and the `rayleigh.abort` hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = head_limits()
        self.reading_head = True
        self.head_raw = 0  # bytes received while the head is incomplete
        self.head_size = 0  # url + header names and values of the current head
        self.head_count = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.refused = False

    # -- head deadline

    def _arm_head_timer(self) -> None:
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head.timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timed_out(self) -> None:
        self.head_timer = None
        if self.reading_head:
            self._refuse(408, "Request headers not received in time", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer `status` and close, unless a response is under way (then just close)."""
        if self.refused or self.transport is None or self.transport.is_closing():
            return
        self.refused = True
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_error_response(status, message, code))
        self.transport.close()

    # -- protocol callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except _HeadRejected:  # pragma: no cover - httptools wraps callback errors (below)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self.refused:
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        if self.reading_head and not self.refused:
            # Still inside a head after this chunk: bound what httptools holds for it.
            self.head_raw += len(data)
            if self.head_raw > self.head.max_bytes:
                self._too_large()

    def _too_large(self) -> None:
        self._refuse(
            431,
            f"Request headers too large: at most {self.head.max_bytes} bytes and {self.head.max_count} headers",
            "request_headers_too_large",
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.head_raw = self.head_size = self.head_count = 0
        self._arm_head_timer()
        self.scope[ABORT] = self._abort  # type: ignore[literal-required]

    def on_url(self, url: bytes) -> None:
        self.head_size += len(url)
        if self.head_size > self.head.max_bytes:
            self._too_large()
            raise _HeadRejected
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_count += 1
        self.head_size += len(name) + len(value) + 4
        if self.head_count > self.head.max_count or self.head_size > self.head.max_bytes:
            self._too_large()
            raise _HeadRejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def _abort(self) -> None:
        """Drop this connection now (a client that does not read its answer): the request's
        cycle counts as disconnected, so uvicorn neither writes nor logs anything more."""
        cycle = self.cycle
        if cycle is not None:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


# ---------------------------------------------------------------- metrics port


class MetricsServer:
    """Prometheus text on `http://host:port/metrics`, served from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        from prometheus_client import REGISTRY, CollectorRegistry, start_wsgi_server

        registry: Any = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        server, thread = start_wsgi_server(port, host, registry)
        self.server: WSGIServer = server
        self.thread: threading.Thread = thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- running it


def serve(
    host: str,
    port: int,
    workers: int,
    *,
    drain_seconds: float,
    log_level: str,
    limit_concurrency: int,
    metrics_host: str,
    metrics_port: int,
    warn: Callable[[str], None],
) -> None:
    """Run the gateway under uvicorn (the app from the environment `rayleigh gateway` set) and its
    metrics server, until shutdown; `warn` tells the user of a problem that does not stop it."""
    import uvicorn

    metrics: MetricsServer | None = None
    if metrics_port:
        # In this process: the only one with several workers (uvicorn's supervisor), which reads
        # every worker's PROMETHEUS_MULTIPROC_DIR files; with one worker, the app's own registry.
        try:
            metrics = MetricsServer(metrics_host, metrics_port)
        except OSError as exc:  # the API still serves; Prometheus sees the target down
            warn(f"no /metrics: cannot listen on port {metrics_port}: {exc}")
    try:
        uvicorn.run(
            "rayleigh_gateway.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="rayleigh_gateway.server:GatewayHttpProtocol",  # httptools + head deadline and caps
            ws="websockets-sansio",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # the gateway reads X-Forwarded-For itself, from trusted proxies only
            server_header=False,
            date_header=False,
            limit_concurrency=limit_concurrency or None,
            timeout_graceful_shutdown=int(drain_seconds),
            timeout_keep_alive=75,
            log_config=log_config(log_level),
        )
    finally:
        if metrics is not None:
            metrics.stop()


def log_config(level: str) -> dict[str, object]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper()},
            "rayleigh.gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }

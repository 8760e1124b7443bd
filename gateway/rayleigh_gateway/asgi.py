"""ASGI types and the small response writers shared by the gateway's handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import GatewayError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# A handler in the gateway's dispatch table (also the shape of `Gateway.proxy`).
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    hdrs = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs += headers
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: GatewayError, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = err.headers + (extra or [])
    await send_json(send, err.status, error_body(err.message, err.type, err.code, err.param), headers)

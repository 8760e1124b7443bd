"""WebSocket chat for browser clients: `/v1/ws/chat`.

Browsers cannot set headers on a WebSocket, so the credentials may come in the first message's
`api_key` field (or the usual headers). Each text message is a chat completion request; the
gateway runs it through exactly the same HTTP path (allow-list, auth, rate limits, metrics,
audit) as a streaming request, through `Gateway.proxy` (passed in as `proxy`, so this module
does not import app.py), and sends each SSE event's JSON as one message, then
`{"type": "done"}`. Errors come as `{"type": "error", "status": N, "error": {...}}`.

Browsers send an `Origin` header with every WebSocket handshake, and a WebSocket is not subject
to CORS: without a check, any web page could drive a visitor's browser against the gateway. The
handshake is refused (HTTP 403) when `Origin` is not in the config's `websocketAllowedOrigins`
(`*`: any origin; empty: no browser origin). A client that sends no `Origin` (not a browser) is
accepted: it must present its credentials like any HTTP client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from .asgi import Handler, Message, Receive, Scope, Send

log = logging.getLogger("rayleigh.gateway")

WS_PATH = "/v1/ws/chat"
MAX_MESSAGE = 1 << 20


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    """`origin` (scheme://host[:port], as browsers send it) is one of `allowed` ('*': any)."""
    origin = origin.strip().rstrip("/").lower()
    return any(a == "*" or a.strip().rstrip("/").lower() == origin for a in allowed)


async def handle_websocket(
    proxy: Handler, scope: Scope, receive: Receive, send: Send, allowed_origins: Sequence[str] = ()
) -> None:
    """Serve one WebSocket connection; each chat message goes through `proxy` (`Gateway.proxy`).
    A browser handshake from an origin outside `allowed_origins` is refused (403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != WS_PATH:
        await send({"type": "websocket.close", "code": 1008, "reason": f"no websocket at {scope['path']}"})
        return
    origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
    if origin is not None and not origin_allowed(origin, allowed_origins):
        log.info("websocket refused: origin %r is not in websocketAllowedOrigins", origin[:200])
        await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
        return
    await send({"type": "websocket.accept"})
    headers = [(k, v) for k, v in scope["headers"] if k in (b"authorization", b"x-api-key", b"x-forwarded-for")]
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        raw = text.encode() if text is not None else message.get("bytes") or b""
        if len(raw) > MAX_MESSAGE:
            await _send_json(send, {"type": "error", "status": 413, "error": {"message": "message too large"}})
            continue
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _send_json(
                send,
                {"type": "error", "status": 400, "error": {"message": "message is not JSON", "code": "invalid_json"}},
            )
            continue
        if isinstance(payload, dict) and isinstance(payload.get("api_key"), str):
            key = payload.pop("api_key")
            headers = [h for h in headers if h[0] not in (b"authorization", b"x-api-key")]
            headers.append((b"authorization", b"Bearer " + key.encode()))
        if isinstance(payload, dict):
            payload["stream"] = True
        body = orjson.dumps(payload)
        http_scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
            "client": scope.get("client"),
            "query_string": b"",
        }
        await proxy(http_scope, _body_receiver(body, receive), _Relay(send))


def _body_receiver(body: bytes, ws_receive: Receive) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message = await ws_receive()
        if message["type"] == "websocket.disconnect":
            return {"type": "http.disconnect"}
        # A new chat message while a stream runs is not supported: wait for the disconnect.
        return await receive()

    return receive


class _Relay:
    """An ASGI `send` that turns the HTTP response into WebSocket messages."""

    def __init__(self, ws_send: Send) -> None:
        self.ws_send = ws_send
        self.status = 0
        self.buffer = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            return
        self.buffer += message.get("body", b"")
        more = message.get("more_body", False)
        if self.status != 200:
            if not more:
                try:
                    err: Any = orjson.loads(self.buffer).get("error")
                except (orjson.JSONDecodeError, AttributeError):
                    err = {"message": self.buffer.decode(errors="replace")}
                await _send_json(self.ws_send, {"type": "error", "status": self.status, "error": err})
            return
        events, _, self.buffer = self.buffer.rpartition(b"\n\n")
        for event in events.split(b"\n\n"):
            line = event.strip()
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                continue
            obj = orjson.loads(data)
            if isinstance(obj, dict) and "error" in obj and "choices" not in obj:
                await _send_json(self.ws_send, {"type": "error", "status": 502, "error": obj["error"]})
            else:
                await _send_json(self.ws_send, {"type": "chunk", "data": obj})
        if not more:
            await _send_json(self.ws_send, {"type": "done"})


async def _send_json(send: Send, obj: Any) -> None:
    await send({"type": "websocket.send", "text": orjson.dumps(obj).decode()})

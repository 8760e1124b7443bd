"""Errors answered to clients: `GatewayError` and its OpenAI-style JSON body.

Every other gateway module may import this one; it imports nothing of the gateway.
"""

from __future__ import annotations

import orjson

MISSING_CREDENTIALS = "Missing credentials: send 'Authorization: Bearer <API key or JWT>' or 'x-api-key: <API key>'"


class GatewayError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or []
        self.param = param  # the request field at fault, if one is


def retry_after(seconds: int | str) -> tuple[bytes, bytes]:
    """The `Retry-After` header (whole seconds, RFC 9110 section 10.2.3) every refusal that may pass sends."""
    return (b"retry-after", str(seconds).encode())


def error_body(message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": code, "param": param}})


def method_not_allowed(path: str, method: str) -> GatewayError:
    return GatewayError(
        405,
        f"{path} accepts {method} only",
        "invalid_request_error",
        "method_not_allowed",
        [(b"allow", method.encode())],
    )


def not_found(path: str) -> GatewayError:
    return GatewayError(404, f"no such endpoint: {path}", "invalid_request_error", "not_found")


def missing_credentials() -> GatewayError:
    return GatewayError(401, MISSING_CREDENTIALS, "authentication_error", "missing_api_key")

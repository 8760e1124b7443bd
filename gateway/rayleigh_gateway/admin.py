"""The gateway's own endpoints: `GET /v1/models` (the models the caller may use), `/healthz` and
`/readyz`, and `/openapi.json`. The dispatch table in app.py routes them. `/metrics` is not here:
it shows key ids, subjects, client addresses and route names, so it is served on its own port
(server.py's `MetricsServer`, `rayleigh gateway --metrics-port`), never on the API's.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from . import metrics as m
from .admission import client_of, read_headers
from .asgi import Receive, Scope, Send, send_error, send_json
from .auth import API_KEY_PREFIX, valid_key
from .compiled import Compiled
from .errors import GatewayError, missing_credentials
from .jwt_auth import JWTRejected
from .keys import KeyRecord, KeyStore
from .openapi import OPENAPI_JSON
from .policy import address_allowed

HEALTH_BODY = b'{"status":"ok"}'


async def list_models(scope: Scope, send: Send, compiled: Compiled, keys: KeyStore) -> None:
    """`GET /v1/models`: the models of every route the caller may use (public ones included)."""
    cred, xff, _, _ = read_headers(scope)
    client = client_of(scope, xff, compiled)
    record: KeyRecord | None = None
    if cred and cred.startswith(API_KEY_PREFIX):
        try:
            record = valid_key(keys, cred, time.time())
        except GatewayError as err:
            m.auth_failures_c("", err.code).inc()
            await send_error(send, err)
            return
    data: list[dict[str, Any]] = []
    jwt_ok = False
    for cr in compiled.routes:
        if not address_allowed(client, cr.networks):
            continue
        allowed: list[str] = []
        if record is not None and cr.route.auth.api_keys:
            allowed = [name for name in cr.route.models if record.allows(name)]
        elif cred and record is None and cr.jwt is not None:
            try:
                await cr.jwt.verify(cred)
                jwt_ok = True
                allowed = list(cr.route.models)
            except JWTRejected:
                allowed = []
        if cr.route.public and not allowed:
            allowed = list(cr.route.models)
        data += [{"id": name, "object": "model", "created": 0, "owned_by": cr.key} for name in allowed]
    if cred and record is None and not jwt_ok:
        m.auth_failures_c("", "invalid_credentials").inc()
        await send_error(send, GatewayError(401, "Invalid API key or token", "authentication_error", "invalid_api_key"))
        return
    if not cred and not data:
        m.auth_failures_c("", "missing_api_key").inc()
        await send_error(send, missing_credentials())
        return
    await send_json(send, 200, orjson.dumps({"object": "list", "data": data}))


async def health(scope: Scope, receive: Receive, send: Send) -> None:
    """`GET /healthz`, `GET /readyz`."""
    await send_json(send, 200, HEALTH_BODY)


async def openapi(scope: Scope, receive: Receive, send: Send) -> None:
    """`GET /openapi.json`."""
    await send_json(send, 200, OPENAPI_JSON)

"""Admission of a proxied request, in order: the request headers, the body (size-limited), one
JSON parse to read `model`, the model name's shape, the credentials (auth.py), the route, the IP
allow-list, what the request may generate (limits.py) and the rate limits (ratelimit.py: one
Redis round trip). It fills in the `RequestContext` or raises the `GatewayError` to answer.

Nothing of the request reaches a metric label, a log line or a cache before it is checked: a
model name must have the served-name shape (else 400), and a name no route serves is counted
under `metrics.UNKNOWN_MODEL`. Callers are authenticated before the gateway says whether a
model exists, so an unauthenticated caller gets the same 401 for every non-public model, known
or not.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson

from rayleigh_api import MODEL_NAME_PATTERN
from rayleigh_api.routing import payload_key

from . import metrics as m
from .asgi import Receive, Scope
from .auth import (
    HIDDEN_REASONS,
    Caller,
    authenticate,
    authenticate_unknown,
    jwt_not_accepted,
    verify_any_jwt,
    verify_jwt,
)
from .compiled import PROXIED_PATHS, Compiled, CompiledRoute
from .context import RequestContext
from .errors import GatewayError
from .fairqueue import ENGINE_PRIORITY
from .keys import KeyStore
from .limits import bucket_costs, invalid_param, limit_hit, rejection, request_charge
from .policy import address_allowed, client_address
from .ratelimit import Decision, RateLimiter

MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
MAX_MODEL_NAME = 128


def read_headers(scope: Scope) -> tuple[str | None, str | None, int | None, str | None]:
    """(credential, X-Forwarded-For, Content-Length, X-Request-Id) in one pass over the headers.
    The credential is None when none was sent and "" for a non-Bearer Authorization header;
    Content-Length is -1 when unparseable."""
    cred = xff = rid = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            v = value.decode("latin-1")
            if v[:7].lower() == "bearer ":
                cred = v[7:].strip()
            elif cred is None:
                cred = ""
        elif name == b"x-api-key":
            cred = value.decode("latin-1").strip()
        elif name == b"x-forwarded-for":
            xff = value.decode("latin-1") if xff is None else f"{xff},{value.decode('latin-1')}"
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = -1
        elif name == b"x-request-id":
            rid = value.decode("latin-1")[:128]
    return cred, xff, length, rid


def client_of(scope: Scope, xff: str | None, compiled: Compiled) -> str:
    client = scope.get("client")
    peer = client[0] if client else ""
    return client_address(peer, xff, compiled.trusted)


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"Request body too large: at most {limit} bytes", "invalid_request_error", "request_too_large"
    )


async def read_body(receive: Receive, length: int | None, limit: int) -> bytes:
    if length is not None and (length > limit or length < 0):
        raise too_large(limit)
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # type: ignore[no-any-return]
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def take(limiter: RateLimiter, cr: CompiledRoute, caller: Caller, estimate: int, model: str) -> Decision:
    """Take from the caller's buckets on route `cr`; raise the 429 when they say no."""
    buckets = cr.buckets(caller.ident, caller.record)
    if not buckets:
        return Decision(True, 0, (), (), "none")
    costs = bucket_costs(buckets, estimate)
    decision = await limiter.take(buckets, costs)
    if decision is None:
        # Redis unreachable. failMode closed (the default): keep limiting, per replica, with the
        # in-memory limiter; failMode open: admit without limits until Redis returns.
        mode = cr.route.rate_limits.fail_mode
        m.fallback_c(cr.key, mode).inc()
        if mode == "open":
            return Decision(True, 0, (), (), "none")
        decision = limiter.take_fallback(buckets, costs)
    if decision.admitted:
        return decision
    hit = limit_hit(buckets, decision, costs)
    m.rate_limited_c(cr.key, model, "tokens" if hit.tokens else "requests").inc()
    raise rejection(hit, decision, estimate)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model}' does not exist or you do not have access to it",
        "invalid_request_error",
        "model_not_found",
        param="model",
    )


def checked_model(payload: dict[str, Any]) -> str:
    """The request's model name, if it has the shape of a served name (else the 400)."""
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(
            400, "'model' is required (a string)", "invalid_request_error", "missing_model", param="model"
        )
    if len(model) > MAX_MODEL_NAME or MODEL_NAME.fullmatch(model) is None:
        raise invalid_param(
            "model",
            "Invalid 'model': expected a model name of letters, digits and . _ : / - (at most 128 characters)",
            "invalid_model",
        )
    return model


async def unknown_model(
    ctx: RequestContext, model: str, compiled: Compiled, keys: KeyStore, cred: str | None
) -> GatewayError:
    """The answer for a model no route serves: the 401 a non-public model would give to a caller
    without a valid credential, the 404 to one with."""
    try:
        caller = authenticate_unknown(bool(compiled.verifiers), keys, cred, time.time())
        if caller is None:
            assert cred is not None
            caller = await verify_any_jwt(compiled.verifiers, cred)
    except GatewayError as err:
        m.auth_failures_c("", err.code).inc()
        return err
    ctx.caller = caller
    return model_not_found(model)


def forwarded_body(body: bytes, payload: dict[str, Any], writes: dict[str, Any]) -> bytes:
    """The body to send upstream: `body` itself, or with `writes` applied. New fields are spliced
    in before the closing brace (no re-serialization of a large prompt); changed ones re-serialize
    the payload once."""
    if not writes:
        return body
    if not any(name in payload for name in writes):
        end = body.rindex(b"}")  # the object's closing brace: only whitespace may follow it
        extra = b"".join(b',"%s":%s' % (name.encode(), orjson.dumps(value)) for name, value in writes.items())
        return body[:end] + extra + body[end:]
    payload.update(writes)
    return orjson.dumps(payload)


async def admit(
    ctx: RequestContext,
    compiled: Compiled,
    keys: KeyStore,
    limiter: RateLimiter,
    cred: str | None,
    length: int | None,
) -> None:
    """Run the checks of a proxied request and fill in `ctx`; raise the GatewayError to answer."""
    limits = compiled.config.limits
    body = await read_body(ctx.receive, length, limits.max_body_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GatewayError(400, "Request body is not valid JSON", "invalid_request_error", "invalid_json") from None
    if not isinstance(payload, dict):
        raise GatewayError(400, "Request body must be a JSON object", "invalid_request_error", "invalid_json")
    model = checked_model(payload)
    cr = compiled.by_model.get(model)
    if cr is None:
        ctx.model = m.UNKNOWN_MODEL  # the metric label and audit field of every unserved name
        raise await unknown_model(ctx, model, compiled, keys, cred)
    ctx.model = model
    ctx.route = cr
    client = ctx.client
    try:
        caller = authenticate(cr, keys, cred, client, model, time.time())
        if caller is None:
            assert cred is not None
            if cr.jwt is not None:
                caller = await verify_jwt(cr, cred)
            else:
                # The same 401 as for an unknown model when no route accepts the token.
                await verify_any_jwt(compiled.verifiers, cred)
                raise jwt_not_accepted(model)
    except GatewayError as err:
        m.auth_failures_c(cr.key, err.code).inc()
        if err.code in HIDDEN_REASONS and not cr.route.public:
            raise model_not_found(model) from None
        raise
    ctx.caller = caller
    if cr.networks and not address_allowed(client, cr.networks):
        m.auth_failures_c(cr.key, "ip_not_allowed").inc()
        raise GatewayError(
            403,
            f"Requests from {client} are not allowed for model {model!r} (IP allow-list)",
            "permission_error",
            "ip_not_allowed",
        )
    charge = request_charge(payload, len(body), PROXIED_PATHS[ctx.path], limits.default_max_tokens, cr.cap)
    ctx.estimate = charge.tokens
    ctx.decision = await take(limiter, cr, caller, charge.tokens, model)
    writes = charge.writes
    fair = cr.route.fairness
    if fair is not None and fair.engine_priority:
        writes["priority"] = ENGINE_PRIORITY[caller.priority]  # vLLM --scheduling-policy priority
    if charge.stream:
        ctx.stream = True
        opts = payload.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage") is True):
            writes["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            ctx.injected = True
    ctx.body = forwarded_body(body, payload, writes)
    ctx.affinity = payload_key(payload)
    if compiled.config.log_prompts:
        ctx.prompt = payload

"""Admission of a proxied request, in order: the request headers, the body (size-limited), one
JSON parse to read `model`, the route, the IP allow-list, the credentials (auth.py), and the
rate limits (limits.py: what is charged; ratelimit.py: one Redis round trip). It fills in the
`RequestContext` or raises the `GatewayError` to answer.
"""

from __future__ import annotations

import asyncio
import time

import orjson

from . import metrics as m
from .asgi import Receive, Scope
from .auth import Caller, authenticate, verify_jwt
from .compiled import PROXIED_PATHS, Compiled, CompiledRoute
from .context import RequestContext
from .errors import GatewayError
from .keys import KeyStore
from .limits import bucket_costs, limit_hit, rejection, request_estimate
from .policy import address_allowed, client_address
from .ratelimit import Decision, RateLimiter


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
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, "'model' is required (a string)", "invalid_request_error", "missing_model")
    ctx.model = model
    cr = compiled.by_model.get(model)
    if cr is None:
        raise GatewayError(
            404,
            f"The model '{model}' does not exist or you do not have access to it",
            "invalid_request_error",
            "model_not_found",
        )
    ctx.route = cr
    client = ctx.client
    if cr.networks and not address_allowed(client, cr.networks):
        m.auth_failures_c(cr.key, "ip_not_allowed").inc()
        raise GatewayError(
            403,
            f"Requests from {client} are not allowed for model {model!r} (IP allow-list)",
            "permission_error",
            "ip_not_allowed",
        )
    try:
        caller = authenticate(cr, keys, cred, client, model, time.time())
        if caller is None:
            assert cred is not None
            caller = await verify_jwt(cr, cred)
    except GatewayError as err:
        m.auth_failures_c(cr.key, err.code).inc()
        raise
    ctx.caller = caller
    estimate = request_estimate(payload, len(body), limits.default_max_tokens, PROXIED_PATHS[ctx.path])
    ctx.estimate = estimate
    ctx.decision = await take(limiter, cr, caller, estimate, model)
    if payload.get("stream") is True:
        ctx.stream = True
        opts = payload.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage") is True):
            payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
            body = orjson.dumps(payload)
            ctx.injected = True
    ctx.body = body
    if compiled.config.log_prompts:
        ctx.prompt = payload

"""After the response: usage recording (token metrics, bucket corrections, Redis usage counters)
and the audit line. Both are cheap and synchronous on the request path; the lines and the Redis
writes are batched and written by `flush` every `flush_interval` (see app.py).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, BinaryIO

import orjson

from . import metrics as m
from .context import RequestContext
from .ratelimit import RateLimiter, Settler

log = logging.getLogger("rayleigh.gateway")

MAX_PENDING_LINES = 10_000


class Recorder:
    """Usage corrections (through a `Settler`) and audit lines of finished requests."""

    def __init__(self, limiter: RateLimiter, audit: bool, audit_path: str) -> None:
        self.settler = Settler(limiter)
        self.enabled = audit  # audit lines wanted at all
        self.path = audit_path  # "-": stdout
        self.lines: list[bytes] = []
        self.file: BinaryIO | None = None

    def open(self) -> None:
        if self.enabled:
            self.file = sys.stdout.buffer if self.path == "-" else open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        if self.file is not None and self.file is not sys.stdout.buffer:
            self.file.close()

    async def flush(self) -> None:
        """Write the batched audit lines and Redis usage/corrections (off the request path)."""
        if self.lines and self.file is not None:
            lines, self.lines = self.lines, []
            try:
                self.file.write(b"".join(lines))
                self.file.flush()
            except OSError as exc:
                log.error("cannot write audit lines: %s", exc)
        await self.settler.flush()

    def settle(self, ctx: RequestContext, usage: tuple[int, int] | None, status: int) -> None:
        """Count the tokens used and correct the token buckets by estimate - actual."""
        caller, model, estimate = ctx.caller, ctx.model, ctx.estimate
        assert caller is not None and ctx.decision is not None
        if usage is not None:
            prompt, completion = usage
            route = ctx.route_key  # no per-caller label: per-caller usage is in Redis and the audit line
            m.tokens_c(route, model, "prompt").inc(prompt)
            m.tokens_c(route, model, "completion").inc(completion)
            actual = prompt + completion
        else:
            prompt = completion = 0
            actual = 0 if status != 200 else estimate  # no usage reported: keep the estimate
        usage_fields = [(f"{model}|requests", 1)]
        if usage is not None:
            usage_fields += [(f"{model}|prompt_tokens", prompt), (f"{model}|completion_tokens", completion)]
        self.settler.add(ctx.decision, estimate - actual, caller.ident, usage_fields)

    def audit(
        self,
        ctx: RequestContext,
        status: int,
        usage: tuple[int, int] | None,
        elapsed: float,
        upstream: float,
        error: str | None,
    ) -> None:
        """Queue the audit line of a finished request (with the prompt when ctx.prompt is set)."""
        if self.file is None:
            return
        caller = ctx.caller
        record: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": ctx.rid,
            "key_id": caller.ident if caller else None,
            "auth": caller.kind if caller else None,
            "client": ctx.client,
            "route": ctx.route_key,
            "model": ctx.model,
            "status": status,
            "prompt_tokens": usage[0] if usage else None,
            "completion_tokens": usage[1] if usage else None,
            "latency_ms": round(elapsed * 1000, 3),
            "overhead_ms": round((elapsed - upstream) * 1000, 3),
        }
        if error:
            record["error"] = error
        if ctx.backend:
            record["backend"] = ctx.backend
        prompt = ctx.prompt
        if prompt is not None:
            record["messages"] = prompt.get("messages")
            record["prompt"] = prompt.get("prompt")
        self.lines.append(orjson.dumps(record) + b"\n")
        if len(self.lines) > MAX_PENDING_LINES:  # the writer is stuck: keep memory bounded
            del self.lines[:5_000]

"""`RequestContext`: one proxied request as it goes through the gateway.

Made when the request arrives (ASGI callables, path, request id, client address, start time);
admission fills in the route, model, caller, rate-limit decision and the rest; the upstream call,
usage recording and the audit line read it. One object per request instead of long argument lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .asgi import Receive, Scope, Send
from .auth import Caller
from .compiled import CompiledRoute
from .ratelimit import Decision


@dataclass(slots=True)
class RequestContext:
    scope: Scope
    receive: Receive
    send: Send
    path: str  # one of PROXIED_PATHS
    rid: str  # request id: the client's X-Request-Id, or made up by the gateway
    client: str  # client address (X-Forwarded-For only through trusted proxies)
    t0: float  # time.perf_counter() when the request arrived
    # Set by admission, in this order:
    model: str = ""
    route: CompiledRoute | None = None
    caller: Caller | None = None
    body: bytes = b""  # what is sent upstream (re-serialized when stream_options were added)
    estimate: int = 0  # tokens charged up front
    decision: Decision | None = None
    stream: bool = False
    injected: bool = False  # stream_options.include_usage added by the gateway (strip that event)
    prompt: dict[str, Any] | None = None  # the payload, for the audit line when logPrompts is on
    affinity: str | None = None  # the prefix-affinity key sent to the Serve router (rayleigh_api.routing)
    backend: str = ""  # set by the upstream call on a traffic split: the backend picked (namespace/name)

    @property
    def route_key(self) -> str:
        return self.route.key if self.route is not None else ""

    def overhead_header(self, upstream: float) -> tuple[bytes, bytes]:
        """x-rayleigh-overhead-ms: time so far minus the `upstream` seconds spent waiting upstream."""
        return (b"x-rayleigh-overhead-ms", b"%.3f" % ((time.perf_counter() - self.t0 - upstream) * 1000.0))

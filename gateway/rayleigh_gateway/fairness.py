"""Fair sharing at saturation: one `FairGate` per route with `fairness` set (per gateway process).

Below `maxInFlight` requests in flight on the route, a request passes straight through. At it,
requests wait in a `FairQueue` (fairqueue.py: strict priority classes, weighted fair queuing by
caller inside a class) and are admitted one by one as requests end. A full queue answers 429
(`queue_full`), a request that waited `maxWaitSeconds` 503 (`queue_timeout`), both with
Retry-After. The caller's class and weight come from its API key record (`rayleigh keys create
--priority --weight`) or its JWT's `rayleigh_priority` / `rayleigh_weight` claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from rayleigh_api import Fairness

from . import metrics as m
from .asgi import Receive
from .errors import GatewayError, retry_after
from .fairqueue import DEFAULT_PRIORITY, MAX_WEIGHT, PRIORITY_CLASSES, Entry, FairQueue
from .keys import KeyRecord

PRIORITY_CLAIM = "rayleigh_priority"
WEIGHT_CLAIM = "rayleigh_weight"


def share_of(record: KeyRecord | None, claims: dict[str, Any] | None) -> tuple[str, int]:
    """(priority class, weight) of a caller: from its key record, its JWT claims, else the defaults.
    A claim that is not a known class or a weight in 1..MAX_WEIGHT is ignored."""
    if record is not None:
        return record.priority or DEFAULT_PRIORITY, record.weight or 1
    priority, weight = DEFAULT_PRIORITY, 1
    if claims:
        p = claims.get(PRIORITY_CLAIM)
        if isinstance(p, str) and p in PRIORITY_CLASSES:
            priority = p
        w = claims.get(WEIGHT_CLAIM)
        if isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WEIGHT:
            weight = w
    return priority, weight


def queue_full(limit: int, retry: int) -> GatewayError:
    return GatewayError(
        429,
        f"The model is saturated and its queue is full ({limit} requests waiting); retry later",
        "rate_limit_exceeded",
        "queue_full",
        [retry_after(retry)],
    )


def queue_timeout(seconds: float, retry: int) -> GatewayError:
    return GatewayError(
        503,
        f"The model is saturated: the request waited {seconds:g} s in the gateway's queue without a slot",
        "server_error",
        "queue_timeout",
        [retry_after(retry)],
    )


def client_gone() -> GatewayError:
    return GatewayError(
        499, "The client closed the request while it was queued", "invalid_request_error", "client_gone"
    )


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class FairGate:
    """The in-flight count of one route and its queue of waiting requests."""

    def __init__(self, route: str, config: Fairness) -> None:
        self.route = route
        self.in_flight = 0
        self.config = config
        self.queue: FairQueue[asyncio.Future[None]] = FairQueue(config.max_queue)

    def configure(self, config: Fairness) -> None:
        """A reloaded route config: new limits apply from now on (queued requests stay queued)."""
        self.config = config
        self.queue.max_len = config.max_queue
        self._admit()

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.config.max_wait_seconds))

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        if self.in_flight < self.config.max_in_flight and not len(self.queue):
            self.in_flight += 1
            return True
        return False

    async def wait(self, caller: str, weight: int, priority: str, receive: Receive) -> None:
        """`enter`, and a client that goes away while queued leaves the queue at once (499): its
        place is not kept until its turn. `receive` is the request's, its body already read."""
        if self.try_enter():
            return
        enter = asyncio.ensure_future(self.enter(caller, weight, priority))
        gone = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait((enter, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            gone.cancel()
            enter.cancel()  # enter passes a slot granted meanwhile on
            raise
        if enter.done():
            gone.cancel()
            return enter.result()  # or its 429/503
        enter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await enter
        if enter.done() and not enter.cancelled() and enter.exception() is None:
            self.leave()  # admitted just as the client left
        m.fair_rejections_c(self.route, priority, "client_gone").inc()
        raise client_gone()

    async def enter(self, caller: str, weight: int, priority: str) -> None:
        """Wait for a slot; raise the 429/503 when the queue is full or the wait too long. The
        caller must `leave()` once for every `enter` that returned."""
        if self.try_enter():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = self.queue.push(future, caller, weight, priority)
        if entry is None:
            m.fair_rejections_c(self.route, priority, "queue_full").inc()
            raise queue_full(self.config.max_queue, self.retry_after)
        self._gauge(entry)
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(future, self.config.max_wait_seconds)
        except TimeoutError:
            self._drop(entry)
            m.fair_rejections_c(self.route, entry.priority, "queue_timeout").inc()
            raise queue_timeout(self.config.max_wait_seconds, self.retry_after) from None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.leave()  # granted a slot as the client went away: pass it on
            else:
                self._drop(entry)
            raise
        m.fair_wait_c(self.route, entry.priority).observe(time.perf_counter() - t0)

    def leave(self) -> None:
        self.in_flight -= 1
        self._admit()

    def _admit(self) -> None:
        while self.in_flight < self.config.max_in_flight:
            entry = self.queue.pop()
            if entry is None:
                return
            self._gauge(entry)
            if entry.item.done():
                continue
            entry.item.set_result(None)
            self.in_flight += 1

    def _drop(self, entry: Entry[asyncio.Future[None]]) -> None:
        self.queue.remove(entry)
        self._gauge(entry)

    def _gauge(self, entry: Entry[asyncio.Future[None]]) -> None:
        m.fair_queue_c(self.route, entry.priority).set(self.queue.length(entry.priority))


class FairGates:
    """The gates of the routes with `fairness`, kept across config reloads (by route key)."""

    def __init__(self) -> None:
        self.gates: dict[str, FairGate] = {}

    def get(self, route: str, config: Fairness | None) -> FairGate | None:
        if config is None:
            return None
        gate = self.gates.get(route)
        if gate is None:
            gate = self.gates[route] = FairGate(route, config)
        elif gate.config is not config:
            gate.configure(config)
        return gate

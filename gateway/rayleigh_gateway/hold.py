"""Cold starts: requests held while a model scaled to zero comes back.

While a route is marked `coldStart` (the operator scaled its workers to zero) or its backend refuses
connections, a request waits here instead of failing: one bounded FIFO queue per route
(`limits.coldStartQueue`), a bounded wait (`limits.coldStartWaitSeconds`); past either, a 503 with
`Retry-After` and the code `model_cold_starting`. The first held request of a route starts one
poller, which sends the wake signal (to the operator's wake endpoint, `--wake-url`) and probes the
backend (GET `<base>/v1/models`) with exponential backoff; when the backend answers 200, every held
request is released in arrival order and forwarded.

`Hold` is pure asyncio: the probe and the wake are callables, so tests drive it without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .errors import GatewayError
from .errors import retry_after as retry_after_header

log = logging.getLogger("rayleigh.gateway.hold")

Probe = Callable[[str], Awaitable[bool]]  # backend base URL -> ready?
Wake = Callable[[str], Awaitable[None]]  # route key (namespace/name) -> signal sent


def cold_starting(key: str, why: str, retry_after: int) -> GatewayError:
    return GatewayError(
        503,
        f"Model {key!r} is starting from zero replicas ({why}); retry in {retry_after}s",
        "upstream_error",
        "model_cold_starting",
        [retry_after_header(retry_after)],
    )


@dataclass
class _Queue:
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    poller: asyncio.Task[None] | None = None
    since: float = 0.0


class Hold:
    """Per-route queues of requests waiting for a backend to come up."""

    def __init__(
        self,
        probe: Probe,
        wake: Wake,
        max_queue: int = 64,
        max_wait: float = 300.0,
        backoff: tuple[float, float] = (0.25, 5.0),
        wake_every: float = 30.0,
    ) -> None:
        self.probe = probe
        self.wake = wake
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.backoff = backoff
        self.wake_every = wake_every
        self.queues: dict[str, _Queue] = {}
        self.touched: dict[str, float] = {}
        # Backends a probe found ready lately: a `coldStart` route can stay flagged for a while after
        # the wake (the operator rewrites it, the kubelet syncs the mounted ConfigMap within about a
        # minute); its requests go straight on meanwhile, without a probe or a wake each.
        self.ready_until: dict[str, float] = {}
        self.ready_for = 120.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # between probes (tests record it)

    def touch(self, key: str) -> None:
        """A request goes to `key` (a scale-to-zero model): tell the operator, at most every
        `wake_every` seconds, so that its idle window restarts."""
        now = time.monotonic()
        if now - self.touched.get(key, float("-inf")) < self.wake_every:
            return
        self.touched[key] = now
        task = asyncio.create_task(self._touch(key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _touch(self, key: str) -> None:
        try:
            await self.wake(key)
        except Exception as exc:
            log.warning("activity signal for %s failed: %s", key, exc)

    def held(self, key: str) -> int:
        q = self.queues.get(key)
        return len(q.waiters) if q else 0

    def retry_after(self) -> int:
        return max(1, min(60, round(self.max_wait / 4)))

    def forget_ready(self, key: str) -> None:
        """The backend of `key` refused a connection: the next request holds again."""
        self.ready_until.pop(key, None)

    async def wait(self, key: str, base: str) -> None:
        """Wait until the backend `base` of route `key` is ready; GatewayError 503 when the queue is
        full or the wait runs out."""
        if self.ready_until.get(key, 0.0) > time.monotonic():
            return
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue()
        if len(q.waiters) >= self.max_queue:
            raise cold_starting(key, f"{self.max_queue} requests already wait", self.retry_after())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        q.waiters.append(fut)
        if q.poller is None or q.poller.done():
            q.since = time.monotonic()
            q.poller = asyncio.create_task(self._poll(key, base, q))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.max_wait)
        except TimeoutError:
            raise cold_starting(key, f"not ready after {self.max_wait:g}s", self.retry_after()) from None
        finally:
            if not fut.done():
                fut.cancel()
            with contextlib.suppress(ValueError):
                q.waiters.remove(fut)

    async def _poll(self, key: str, base: str, q: _Queue) -> None:
        delay, cap = self.backoff
        last_wake = float("-inf")
        try:
            while q.waiters:
                now = time.monotonic()
                if now - last_wake >= self.wake_every:
                    last_wake = now
                    try:
                        await self.wake(key)
                    except Exception as exc:  # the probe still runs: the operator may wake it anyway
                        log.warning("wake signal for %s failed: %s", key, exc)
                try:
                    ready = await self.probe(base)
                except Exception:
                    ready = False
                if ready:
                    self.ready_until[key] = time.monotonic() + self.ready_for
                    log.info("%s is up after %.1fs; releasing %d held", key, now - q.since, len(q.waiters))
                    while q.waiters:
                        fut = q.waiters.popleft()
                        if not fut.done():
                            fut.set_result(None)
                    return
                await self.sleep(delay)
                delay = min(cap, delay * 2)
        finally:
            if self.queues.get(key) is q and not q.waiters:
                del self.queues[key]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for q in list(self.queues.values()):
            if q.poller is not None:
                q.poller.cancel()
        self.queues.clear()

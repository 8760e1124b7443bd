"""Rayleigh's Serve request router: `spec.routing` applied where Ray Serve picks a replica.

Ray Serve runs one router per caller of a deployment: in every Serve HTTP proxy (one per node) for
HTTP traffic, and in any deployment that calls another through a handle. Rayleigh's replicas are
their own ASGI ingress, so the router that matters runs in the proxy, and there it sees the
request's ASGI scope and metadata but **not its body**: the proxy hands the replica a pickled scope,
and the replica pulls the body from the proxy afterwards. The prompt is therefore read where it is
already parsed: the gateway hashes the conversation's start into an affinity key and sends it in
the `x-session-id` header, which Ray's proxy copies into `RequestMetadata.session_id`.
Where a caller does pass the parsed request (a handle call with an OpenAI request object, or Ray's
HAProxy `/internal/route` payload), the router computes the same key from it.

The decision itself is `rayleigh_api.routing.choose` (pure, property-tested); this class feeds it
each replica's requests in flight (Serve's queue-length cache, probing replicas it has no fresh
figure for), hands Serve the ranked replicas (a replica that refuses, being full, passes the request
to the next), and counts each decision by reason in `rayleigh_routing_decisions_total`.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from typing import Any

from ray.serve._private.common import ReplicaID
from ray.serve._private.replica_result import ReplicaResult
from ray.serve._private.request_router.common import PendingRequest
from ray.serve._private.request_router.replica_wrapper import RunningReplica
from ray.serve._private.request_router.request_router import RequestRouter

from rayleigh_api.routing import Choice, affinity_key, choose

logger = logging.getLogger("ray.serve")

# Decisions kept until Serve says where the request went (requests cancelled before that are dropped
# oldest-first beyond this many).
MAX_PENDING_DECISIONS = 10_000


def request_key(pending: PendingRequest) -> str | None:
    """The affinity key of a request: the gateway's (session id), else one computed from a parsed
    OpenAI request among the call's arguments; None when there is neither."""
    if pending.metadata.session_id:
        return str(pending.metadata.session_id)
    for arg in pending.args or ():
        if isinstance(arg, bytes | bytearray | str):
            continue  # the proxy's pickled ASGI scope: no body in it
        messages, prompt = getattr(arg, "messages", None), getattr(arg, "prompt", None)
        if messages is not None or prompt is not None:
            return affinity_key(getattr(arg, "model", None), messages, prompt)
    return None


class DecisionMetrics:
    """`rayleigh_routing_decisions_total{app, strategy, reason}`, exported through Ray's metrics agent."""

    def __init__(self, app: str, strategy: str) -> None:
        from ray.util import metrics

        self.tags = {"app": app, "strategy": strategy}
        self.counter = metrics.Counter(
            "rayleigh_routing_decisions",
            description="Replica picks by Rayleigh's Serve request router, by reason: affinity (the replica "
            "that holds the request's prefix), spill (that replica was over the load bound), no_key, "
            "least_loaded, round_robin, replica_full (the pick refused, being full; a later one took it).",
            tag_keys=("app", "strategy", "reason"),
        )

    def count(self, reason: str) -> None:
        self.counter.inc(1, tags={**self.tags, "reason": reason})


class RayleighRouter(RequestRouter):
    """Serve `RequestRouter` for `spec.routing` (`request_router_kwargs`: strategy, balance_factor)."""

    def initialize_state(self, strategy: str = "prefix-aware", balance_factor: float = 1.25, **_: Any) -> None:
        choose(strategy, {"probe": 0})  # raises on an unknown strategy, before any request
        self._strategy = strategy
        self._balance_factor = float(balance_factor)
        self._turn = itertools.count()
        self._decisions: OrderedDict[str, Choice] = OrderedDict()
        app = self._deployment_id.app_name if self._deployment_id is not None else ""
        self._metrics = DecisionMetrics(app, strategy)

    async def _loads(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """Requests in flight per replica id: cached figures, probing the replicas without one."""
        loads: dict[str, int] = {}
        missing: list[RunningReplica] = []
        for r in replicas:
            n = self._replica_queue_len_cache.get(r.replica_id) if self._use_replica_queue_len_cache else None
            if n is None:
                missing.append(r)
            else:
                loads[r.replica_id.unique_id] = n
        if missing:
            for r, n in await self._probe_queue_lens(missing, 0):
                # No answer in time: treat as full, so it is tried last.
                loads[r.replica_id.unique_id] = r.max_ongoing_requests if n is None else n
        return loads

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is None:
            return [candidate_replicas]
        # Back off between passes over the ranks when every replica refused (all full).
        pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = await self._loads(candidate_replicas)
        key = request_key(pending_request) if self._strategy == "prefix-aware" else None
        choice = choose(
            self._strategy,
            loads,
            key=key,
            capacity={rid: r.max_ongoing_requests for rid, r in by_id.items()},
            balance_factor=self._balance_factor,
            turn=next(self._turn),
        )
        rid = pending_request.metadata.internal_request_id
        if rid not in self._decisions:
            self._decisions[rid] = choice
            while len(self._decisions) > MAX_PENDING_DECISIONS:
                self._decisions.popitem(last=False)
        return [[by_id[r]] for r in choice.ranked if r in by_id]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        choice = self._decisions.pop(pending_request.metadata.internal_request_id, None)
        if choice is None:
            return
        self._metrics.count(choice.reason if replica_id.unique_id == choice.replica else "replica_full")

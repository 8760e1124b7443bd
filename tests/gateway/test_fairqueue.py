"""The fair-sharing queue discipline (pure) and the per-route gate (asyncio, no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from rayleigh_api import Fairness, ModelDeployment
from rayleigh_gateway.cli import main
from rayleigh_gateway.errors import GatewayError
from rayleigh_gateway.fairness import FairGate, share_of
from rayleigh_gateway.fairqueue import FairQueue
from rayleigh_gateway.keys import KeyStore, KeyStoreError, load_keys
from rayleigh_gateway.routes import route_for
from tests.plugins.common import REPO_ROOT


def drain(q: FairQueue[str], n: int, refill: dict[str, tuple[int, str]]) -> list[str]:
    """Pop `n` entries; after each pop, push one more for the popped caller (always backlogged)."""
    served = []
    for _ in range(n):
        entry = q.pop()
        assert entry is not None
        served.append(entry.caller)
        weight, priority = refill[entry.caller]
        assert q.push(entry.caller, entry.caller, weight, priority) is not None
    return served


@settings(max_examples=60, deadline=None)
@given(
    heavy=st.integers(1, 8),
    light=st.integers(1, 8),
    backlog=st.integers(1, 30),
    n=st.integers(1, 400),
)
def test_two_backlogged_callers_are_served_by_weight(heavy: int, light: int, backlog: int, n: int) -> None:
    q: FairQueue[str] = FairQueue(1000)
    for _ in range(backlog):
        q.push("a", "a", heavy)
        q.push("b", "b", light)
    served = drain(q, n, {"a": (heavy, "normal"), "b": (light, "normal")})
    a = served.count("a")
    # SFQ: at any prefix, a's service differs from its weighted share by at most one request each way.
    assert abs(a - n * heavy / (heavy + light)) <= 2


def test_three_to_one_converges() -> None:
    q: FairQueue[str] = FairQueue(100)
    for _ in range(10):
        q.push("a", "a", 3)
        q.push("b", "b", 1)
    served = drain(q, 4000, {"a": (3, "normal"), "b": (1, "normal")})
    for prefix in (40, 400, 4000):
        a = served[:prefix].count("a")
        assert abs(a - 3 * (prefix - a)) <= 4, (prefix, a)


@settings(max_examples=60, deadline=None)
@given(heavy_backlog=st.integers(0, 500), served_first=st.integers(0, 200), others=st.integers(0, 5))
def test_light_caller_wait_is_bounded(heavy_backlog: int, served_first: int, others: int) -> None:
    """A light caller arriving at any time waits behind at most one request per other backlogged
    caller (+1), however long their backlogs."""
    q: FairQueue[str] = FairQueue(10_000)
    callers = ["heavy"] + [f"o{i}" for i in range(others)]
    for c in callers:
        for _ in range(heavy_backlog + 1):
            q.push(c, c, 1)
    for _ in range(min(served_first, heavy_backlog)):
        q.pop()
    q.push("light", "light", 1)
    ahead = 0
    while (entry := q.pop()) is not None and entry.caller != "light":
        ahead += 1
    assert ahead <= len(callers) + 1


def test_priority_classes_go_first_and_unknown_is_normal() -> None:
    q: FairQueue[str] = FairQueue(10)
    q.push("n1", "x", 1, "normal")
    q.push("l1", "y", 1, "low")
    q.push("h1", "z", 1, "high")
    q.push("u1", "w", 1, "bogus")
    order = [e.item for e in iter(q.pop, None)]
    assert order[0] == "h1" and order[-1] == "l1" and set(order[1:3]) == {"n1", "u1"}


def test_bounded_length_and_memory() -> None:
    q: FairQueue[int] = FairQueue(3)
    entries = [q.push(i, f"c{i}") for i in range(3)]
    assert q.push(9, "c9") is None and len(q) == 3
    assert entries[1] is not None
    q.remove(entries[1])
    q.remove(entries[1])  # twice: a no-op
    assert len(q) == 2 and q.length("normal") == 2
    assert [e.item for e in iter(q.pop, None)] == [0, 2]
    # Many one-off callers: their finish tags are forgotten once the virtual time passes them.
    big: FairQueue[int] = FairQueue(10)
    for i in range(5000):
        big.push(i, f"caller-{i}")
        big.pop()
    assert big.callers_tracked() < 100


def test_share_of_key_and_claims() -> None:
    store = KeyStore.new()
    _, rec = store.create("t", priority="high", weight=3)
    assert share_of(rec, None) == ("high", 3)
    _, plain = store.create("t")
    assert share_of(plain, None) == ("normal", 1)
    assert share_of(None, {"rayleigh_priority": "low", "rayleigh_weight": 5}) == ("low", 5)
    assert share_of(None, {"rayleigh_priority": "root", "rayleigh_weight": 10**9}) == ("normal", 1)
    # Round trip, and key files without the fields read as before.
    again = KeyStore.from_dict(store.to_dict())
    assert again.records[rec.id].priority == "high" and again.records[rec.id].weight == 3
    assert "priority" not in plain.to_dict() and again.records[plain.id].weight is None
    bad = store.to_dict()
    bad["keys"][0]["priority"] = "urgent"
    with pytest.raises(KeyStoreError, match="priority"):
        KeyStore.from_dict(bad)


def test_gate_admits_by_weight_and_rejects() -> None:
    async def run() -> None:
        gate = FairGate("ns/r", Fairness(max_in_flight=1, max_queue=4, max_wait_seconds=0.2))
        await gate.enter("first", 1, "normal")  # takes the one slot
        order: list[str] = []

        async def one(name: str, prio: str) -> None:
            await gate.enter(name, 1, prio)
            order.append(name)
            gate.leave()

        tasks = [asyncio.create_task(one(n, p)) for n, p in (("a", "low"), ("b", "normal"), ("c", "high"))]
        await asyncio.sleep(0)
        assert len(gate.queue) == 3
        gate.leave()
        await asyncio.gather(*tasks)
        assert order == ["c", "b", "a"] and gate.in_flight == 0
        # Full queue: 429; too long a wait: 503, both with Retry-After.
        await gate.enter("hog", 1, "normal")
        waiters = [asyncio.create_task(gate.enter(f"w{i}", 1, "normal")) for i in range(4)]
        await asyncio.sleep(0)
        with pytest.raises(GatewayError) as full:
            await gate.enter("late", 1, "normal")
        assert full.value.status == 429 and full.value.code == "queue_full"
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, GatewayError) and r.status == 503 for r in results)
        assert len(gate.queue) == 0 and gate.in_flight == 1
        assert (b"retry-after", b"1") in results[0].headers  # type: ignore[union-attr]

    asyncio.run(run())


def test_keys_create_priority_and_weight(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.yaml")
    args = ["keys", "create", "--file", path, "--owner", "t", "--model", "m", "--priority", "high", "--weight", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (record,) = load_keys(path).records.values()
    assert (record.priority, record.weight) == ("high", 3)
    bad = CliRunner().invoke(main, ["keys", "create", "--file", path, "--owner", "t", "--priority", "urgent"])
    assert bad.exit_code != 0


def test_route_for_carries_fairness() -> None:
    doc = yaml.safe_load((REPO_ROOT / "manifests" / "examples" / "tiny.yaml").read_text())
    route = route_for(ModelDeployment.model_validate(doc), "http://b:1")
    assert route.fairness is None and "fairness" not in route.model_dump(mode="json", by_alias=True)
    doc["spec"].setdefault("gateway", {})["fairness"] = {"maxInFlight": 8, "enginePriority": True}
    route = route_for(ModelDeployment.model_validate(doc), "http://b:1")
    assert route.model_dump(mode="json", by_alias=True)["fairness"] == {
        "maxInFlight": 8,
        "maxQueue": 1000,
        "maxWaitSeconds": 30.0,
        "enginePriority": True,
    }
    with pytest.raises(ValidationError):
        Fairness.model_validate({"maxInFlight": 0})


def test_gate_wait_drops_a_client_that_leaves() -> None:
    async def run() -> None:
        gate = FairGate("ns/r", Fairness(max_in_flight=1, max_queue=4, max_wait_seconds=5))
        left = asyncio.Event()

        async def receive() -> dict[str, object]:
            await left.wait()
            return {"type": "http.disconnect"}

        await gate.wait("a", 1, "normal", receive)  # a free slot: no waiting
        waiter = asyncio.create_task(gate.wait("b", 1, "normal", receive))
        stays = asyncio.create_task(gate.wait("c", 1, "normal", asyncio.Event().wait))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert len(gate.queue) == 2
        left.set()
        with pytest.raises(GatewayError) as gone:
            await waiter
        assert gone.value.status == 499 and len(gate.queue) == 1
        gate.leave()
        await stays  # c gets the slot b gave up
        assert gate.in_flight == 1 and len(gate.queue) == 0

    asyncio.run(run())

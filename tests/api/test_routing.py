"""The pure routing decision (rayleigh_api.routing): which replica, and why."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayleigh_api import ModelDeployment
from rayleigh_api.routing import REASONS, affinity_key, choose, load_bound, payload_key, rank

replica_ids = st.text(alphabet="abcdef0123456789", min_size=4, max_size=8)
loads_st = st.dictionaries(replica_ids, st.integers(min_value=0, max_value=64), min_size=1, max_size=8)
keys = st.text(min_size=1, max_size=24)
factors = st.floats(min_value=1.0, max_value=3.0)

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


@settings(max_examples=300, deadline=None)
@given(loads=loads_st, key=keys, factor=factors)
def test_prefix_aware_pick_stays_within_the_load_bound(loads: dict[str, int], key: str, factor: float) -> None:
    choice = choose("prefix-aware", loads, key=key, balance_factor=factor)
    assert loads[choice.replica] + 1 <= math.ceil(factor * (sum(loads.values()) + 1) / len(loads) - 1e-9)
    assert choice.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(loads=loads_st, key=keys, factor=factors)
def test_affinity_replica_is_kept_when_within_bound(loads: dict[str, int], key: str, factor: float) -> None:
    first = rank(key, list(loads))[0]
    choice = choose("prefix-aware", loads, key=key, balance_factor=factor)
    if loads[first] + 1 <= load_bound(loads, factor):
        assert (choice.replica, choice.reason) == (first, "affinity")
    else:
        assert choice.reason == "spill" and choice.replica != first


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(replica_ids, min_size=1, max_size=8, unique=True), key=keys)
def test_same_key_same_replica_when_loads_are_even(ids: list[str], key: str) -> None:
    picks = {choose("prefix-aware", dict.fromkeys(ids, 3), key=key, turn=t).replica for t in range(5)}
    assert len(picks) == 1


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(replica_ids, min_size=3, max_size=8, unique=True), key=keys, data=st.data())
def test_removing_another_replica_keeps_the_affinity(ids: list[str], key: str, data: st.DataObject) -> None:
    first = rank(key, ids)[0]
    gone = data.draw(st.sampled_from([r for r in ids if r != first]))
    assert rank(key, [r for r in ids if r != gone])[0] == first


@settings(max_examples=200, deadline=None)
@given(loads=loads_st, key=keys)
def test_spill_goes_to_the_next_replica_in_the_keys_order(loads: dict[str, int], key: str) -> None:
    order = rank(key, list(loads))
    choice = choose("prefix-aware", loads, key=key)
    bound = load_bound(loads, 1.25)
    assert choice.replica == next(r for r in order if loads[r] + 1 <= bound)
    assert list(choice.ranked) == [choice.replica, *[r for r in order if r != choice.replica]]


def test_busy_affinity_replica_spills_to_the_other() -> None:
    key = "conversation-1"
    first, second = rank(key, ["r1", "r2"])
    choice = choose("prefix-aware", {first: 6, second: 1}, key=key)
    assert (choice.replica, choice.reason) == (second, "spill")
    assert choose("prefix-aware", {first: 2, second: 1}, key=key).reason == "affinity"


def test_full_replicas_are_tried_last() -> None:
    key = "k"
    first, second = rank(key, ["r1", "r2"])
    choice = choose("prefix-aware", {first: 4, second: 4}, key=key, capacity={first: 4, second: 8})
    assert choice.replica == second


def test_no_key_goes_to_the_least_loaded() -> None:
    choice = choose("prefix-aware", {"a": 3, "b": 1, "c": 2}, key=None)
    assert (choice.replica, choice.reason) == ("b", "no_key")
    assert choice.ranked == ("b", "c", "a")


@settings(max_examples=200, deadline=None)
@given(loads=loads_st, turn=st.integers(min_value=0, max_value=1000))
def test_least_loaded_picks_a_minimum(loads: dict[str, int], turn: int) -> None:
    choice = choose("least-loaded", loads, turn=turn)
    assert loads[choice.replica] == min(loads.values()) and choice.reason == "least_loaded"


def test_round_robin_visits_every_replica_in_turn() -> None:
    loads = {"a": 0, "b": 5, "c": 1}
    picks = [choose("round-robin", loads, turn=t).replica for t in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy 'random'"):
        choose("random", {"a": 0})


def test_every_turn_of_a_chat_has_the_same_key() -> None:
    turn1 = [SYSTEM, {"role": "user", "content": "Plan a trip to Lisbon."}]
    turn3 = [*turn1, {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "And Porto?"}]
    assert affinity_key("m", turn1) == affinity_key("m", turn3) is not None


def test_different_first_questions_have_different_keys() -> None:
    a = affinity_key("m", [SYSTEM, {"role": "user", "content": "Plan a trip to Lisbon."}])
    b = affinity_key("m", [SYSTEM, {"role": "user", "content": "Write a haiku."}])
    assert a != b


def test_lora_adapter_name_is_part_of_the_key() -> None:
    messages = [SYSTEM, {"role": "user", "content": "Hello"}]
    assert affinity_key("base-model", messages) != affinity_key("my-lora", messages)


def test_text_parts_and_plain_content_give_one_key() -> None:
    plain = [{"role": "user", "content": "Hello there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    assert affinity_key("m", plain) == affinity_key("m", parts)


def test_completion_prompt_key_covers_its_start_only() -> None:
    base = "x" * 600
    assert payload_key({"model": "m", "prompt": base + "one"}) == payload_key({"model": "m", "prompt": base + "two"})
    assert payload_key({"model": "m", "prompt": "short one"}) != payload_key({"model": "m", "prompt": "short two"})
    assert payload_key({"model": "m", "prompt": [1, 2, 3]}) == payload_key({"model": "m", "prompt": [[1, 2, 3]]})


def test_request_without_prompt_has_no_key() -> None:
    assert payload_key({"model": "m"}) is None
    assert payload_key({"model": "m", "messages": []}) is None


def test_spec_routing_defaults_to_prefix_aware() -> None:
    md = ModelDeployment.model_validate({"metadata": {"name": "x"}, "spec": {"model": {"source": "hf://a/b"}}})
    assert md.spec.routing.strategy == "prefix-aware" and md.spec.routing.balance_factor == 1.25


def test_spec_routing_rejects_an_unknown_strategy() -> None:
    doc = {"metadata": {"name": "x"}, "spec": {"model": {"source": "hf://a/b"}, "routing": {"strategy": "random"}}}
    with pytest.raises(ValueError, match=r"routing\.strategy"):
        ModelDeployment.model_validate(doc)

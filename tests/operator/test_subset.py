"""`subset`: the one comparison behind drift detection and Serve's "needs a push"."""

from __future__ import annotations

from rayleigh_operator.drift import drifted
from rayleigh_operator.serve_client import AppState, needs_push
from rayleigh_operator.subset import subset


def test_extra_keys_around_what_we_set_are_fine() -> None:
    assert subset({"a": 1, "b": {"c": "x"}}, {"a": 1, "b": {"c": "x", "d": 2}, "e": None})


def test_a_missing_key_or_a_changed_value_is_not_a_subset() -> None:
    assert not subset({"a": 1, "b": 2}, {"a": 1})
    assert not subset({"a": {"c": "x"}}, {"a": {"c": "y"}})
    assert not subset({"a": {"c": "x"}}, {"a": "x"})


def test_lists_match_item_by_item_and_in_length() -> None:
    want = [{"port": 8000}, {"port": 8265}]
    assert subset(want, [{"port": 8000, "protocol": "TCP"}, {"port": 8265, "protocol": "TCP"}])
    assert not subset(want, [{"port": 8265}, {"port": 8000}])
    assert not subset(want, [{"port": 8000}, {"port": 8265}, {"port": 9000}])
    assert not subset(want, {"port": 8000})


def test_numbers_compare_by_value() -> None:
    assert subset({"target": 1}, {"target": 1.0})
    assert subset({"target": 0.5}, {"target": 0.5})
    assert not subset({"target": 1}, {"target": 2})


def test_a_value_that_only_prints_the_same_is_a_change() -> None:
    assert not subset({"replicas": 1}, {"replicas": "1"})
    assert not subset({"maxUnavailable": "1"}, {"maxUnavailable": 1})
    assert not subset({"flag": True}, {"flag": "True"})
    assert not subset({"value": None}, {"value": "None"})


def test_drift_and_serve_use_the_same_rule() -> None:
    child = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"n": "1"}}
    assert not drifted(child, {"metadata": {"name": "a", "uid": "u"}, "data": {"n": "1"}})
    assert drifted(child, {"metadata": {"name": "a"}, "data": {"n": 1}})
    app = {"name": "m", "args": {"n": 1}}
    assert not needs_push(app, AppState("RUNNING", deployed_config={"name": "m", "args": {"n": 1.0}, "x": 0}))
    assert needs_push(app, AppState("RUNNING", deployed_config={"name": "m", "args": {"n": "1"}}))

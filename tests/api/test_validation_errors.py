"""A CEL rule that cannot be evaluated rejects the object, as kube-apiserver does.

apiextensions-apiserver pkg/apiserver/schema/cel/validation.go `validateExpressions`: an evaluation
error (no such key, division by zero, a type mismatch) becomes `field.Invalid(<the rule's node>,
"<err> evaluating rule: <rule>")`, never a pass. `rayleigh validate` (rayleigh_api.validation)
reports it with the rule and the field; transition rules (`oldSelf`) run on updates only.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from click.testing import CliRunner

from rayleigh_api import crd, validation
from rayleigh_api.cli import main
from tests.api.helpers import tiny

DIVIDE = {"rule": "self.replicas / 0 >= 0", "message": "replicas must be divisible"}


@pytest.fixture
def erring_rule(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The CRD's schema with one more rule on spec, which always fails to evaluate."""
    schema = copy.deepcopy(crd.cached_openapi_schema())
    schema["properties"]["spec"].setdefault("x-kubernetes-validations", []).append(DIVIDE)
    monkeypatch.setattr(crd, "cached_openapi_schema", lambda: schema)
    return schema


def test_a_rule_that_errors_is_a_rejection_naming_the_rule_and_the_field(erring_rule: dict[str, Any]) -> None:
    found = validation.problems(tiny())
    hits = [p for p in found if "replicas must be divisible" in p.message]
    assert len(hits) == 1, found
    (problem,) = hits
    assert problem.path == "spec"
    assert problem.message.startswith("division by zero evaluating rule: replicas must be divisible")
    assert "self.replicas / 0 >= 0" in problem.message
    with pytest.raises(validation.SpecError):
        validation.validate_document(tiny())


def test_rayleigh_validate_fails_on_it(erring_rule: dict[str, Any], tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    result = CliRunner().invoke(main, ["validate", "-f", str(path)])
    assert result.exit_code == 1, result.output
    assert "- spec: division by zero evaluating rule: replicas must be divisible" in result.output


def test_an_evaluation_error_is_not_listed_again_when_the_schema_already_refused(erring_rule: dict[str, Any]) -> None:
    doc = tiny()
    doc["spec"]["replicas"] = "many"
    found = validation.problems(doc)
    assert any(p.path == "spec.replicas" for p in found)
    assert not any("evaluating rule" in p.message for p in found), found


def test_a_missing_field_without_a_default_is_an_evaluation_error() -> None:
    schema = {"type": "object", "properties": {"items": {"type": "array"}}}
    schema["x-kubernetes-validations"] = [{"rule": "self.items.all(i, i > 0)", "message": "items must be positive"}]
    (failure,) = validation.cel_failures(schema, {}, "spec")
    assert failure.error == "no such key: items"
    assert failure.path == "spec" and failure.node_type == "object"
    assert failure.message.startswith("no such key: items evaluating rule: items must be positive")
    assert validation.cel_failures(schema, {"items": [1]}, "spec") == []
    assert validation.evaluate_rule("self.items.all(i, i > 0)", {}) is None  # the old helper: unknown


def test_transition_rules_need_an_old_value_and_correlate_map_lists_by_key() -> None:
    immutable = {"rule": "self.x == oldSelf.x", "message": "immutable", "fieldPath": ".x"}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "x": {"type": "integer"},
            "ports": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable"}],
                },
            },
        },
        "x-kubernetes-validations": [immutable],
    }
    assert validation.cel_failures(schema, {"x": 1}, "spec") == []  # create: no old value
    (failure,) = validation.cel_failures(schema, {"x": 1}, "spec", {"x": 2})
    assert (failure.path, failure.message, failure.transition) == ("spec.x", "immutable", True)
    old = {"x": 1, "ports": [{"name": "a", "port": 1}, {"name": "b", "port": 2}]}
    new = {"x": 1, "ports": [{"name": "b", "port": 2}, {"name": "a", "port": 1}, {"name": "c", "port": 3}]}
    assert validation.cel_failures(schema, new, "spec", old) == []
    new["ports"][0]["port"] = 9
    (failure,) = validation.cel_failures(schema, new, "spec", old)
    assert (failure.path, failure.message) == ("spec.ports[0]", "port is immutable")


def test_message_expression_and_reason_are_reported() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-validations": [
            {
                "rule": "self.n < 3",
                "messageExpression": "'n is ' + string(self.n) + ', at most 2'",
                "reason": "FieldValueForbidden",
                "fieldPath": ".n",
            }
        ],
    }
    (failure,) = validation.cel_failures(schema, {"n": 5}, "spec")
    assert (failure.path, failure.message, failure.reason) == ("spec.n", "n is 5, at most 2", "FieldValueForbidden")

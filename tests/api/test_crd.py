"""The CRD is generated from the pydantic model, checked in, and a valid apiextensions/v1 object."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

import rayleigh_api as api
from rayleigh_api import crd
from rayleigh_api.cli import main
from rayleigh_api.validation import evaluate_rule

from .helpers import CRD_FILES


def _version() -> dict[str, Any]:
    versions = crd.crd()["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.parent.parent.name))
def test_checked_in_crd_equals_rayleigh_crd_output(path: Any) -> None:
    result = CliRunner().invoke(main, ["crd"])
    assert result.exit_code == 0, result.output
    assert path.read_text() == result.output, f"{path} drifted from the API model: run `make crd`"


def test_crd_passes_kubernetes_validate_for_apiextensions_v1() -> None:
    kubernetes_validate.validate(crd.crd(), "1.34.0", strict=True)


def test_crd_has_status_and_scale_subresources() -> None:
    sub = _version()["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_crd_printer_columns_show_model_ready_phase_endpoint_age() -> None:
    names = [c["name"] for c in _version()["additionalPrinterColumns"]]
    for wanted in ("Model", "Ready", "Phase", "Endpoint", "Age"):
        assert wanted in names


def test_crd_names_have_short_name_md_and_category_rayleigh() -> None:
    names = crd.crd()["spec"]["names"]
    assert names["shortNames"] == ["md"]
    assert names["categories"] == ["rayleigh"]
    assert names["kind"] == "ModelDeployment"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out.extend(_walk(sub, f"{path}.{name}"))
    if isinstance(schema.get("items"), dict):
        out.extend(_walk(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        out.extend(_walk(schema["additionalProperties"], f"{path}{{}}"))
    return out


def test_schema_is_structural_every_node_has_a_type() -> None:
    """The API server rejects non-structural schemas: every node needs a type (or an x- escape)."""
    for path, node in _walk(crd.openapi_schema()):
        escapes = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or escapes, f"{path} has no type"
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "title", "const"):
            assert banned not in node, f"{path} uses {banned}"
        if "properties" in node:
            assert "additionalProperties" not in node, f"{path}: properties and additionalProperties together"


def test_every_spec_field_has_a_description_for_kubectl_explain() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    missing = [path for path, node in _walk(spec, "spec")[1:] if not node.get("description") and "[]" not in path]
    missing = [p for p in missing if not p.endswith("{}")]
    assert missing == []


def test_every_list_under_a_cel_rule_is_bounded() -> None:
    """The API server's CEL cost estimator rejects rules over unbounded lists."""
    for path, node in _walk(crd.openapi_schema()):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path} has no maxItems"


def test_every_cel_rule_compiles_and_has_a_message() -> None:
    rules = [r for _, node in _walk(crd.openapi_schema()) for r in node.get("x-kubernetes-validations", [])]
    assert len(rules) >= 15
    for rule in rules:
        assert rule["message"]
        # Compiles: evaluating against an empty object yields a result or a type error, never a parse error.
        from rayleigh_api.validation import _program

        _program(rule["rule"])


def test_defaults_are_in_the_schema() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == 1
    assert spec["engine"]["default"] == {}
    assert spec["engine"]["properties"]["gpuMemoryUtilization"]["default"] == 0.9
    assert spec["model"]["properties"]["quantization"]["enum"] == ["none", "awq", "gptq", "fp8", "bitsandbytes"]
    assert spec["gateway"]["properties"]["public"]["default"] is False


def test_crd_yaml_round_trips() -> None:
    assert yaml.safe_load(crd.crd_yaml()) == crd.crd()
    assert crd.crd()["metadata"]["name"] == f"{api.PLURAL}.{api.GROUP}"


def test_cel_evaluator_agrees_with_a_hand_written_case() -> None:
    assert evaluate_rule("self.minReplicas <= self.maxReplicas", {"minReplicas": 1, "maxReplicas": 2}) is True
    assert evaluate_rule("self.minReplicas <= self.maxReplicas", {"minReplicas": 3, "maxReplicas": 2}) is False

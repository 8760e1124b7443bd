"""`rayleigh explain` and docs/API.md describe fields from the same schema as `kubectl explain`."""

from __future__ import annotations

from click.testing import CliRunner

from rayleigh_api import reference
from rayleigh_api.cli import main

from .helpers import REPO


def test_docs_api_md_is_up_to_date() -> None:
    assert (REPO / "docs" / "API.md").read_text() == reference.markdown(), "docs/API.md drifted: run `make docs`"


def test_explain_prints_description_constraints_and_subfields() -> None:
    result = CliRunner().invoke(main, ["explain", "spec.model"])
    assert result.exit_code == 0, result.output
    assert "FIELD: spec.model <object>" in result.output
    assert "source\t<string> -required-" in result.output
    assert "RULE: quantization awq/gptq" in result.output


def test_explain_walks_into_list_items() -> None:
    result = CliRunner().invoke(main, ["explain", "spec.adapters.name"])
    assert result.exit_code == 0, result.output
    assert "Model name clients use to reach this adapter." in result.output


def test_explain_unknown_field_lists_the_fields_that_exist() -> None:
    result = CliRunner().invoke(main, ["explain", "spec.modle"])
    assert result.exit_code == 1
    assert "field 'modle' does not exist in spec" in result.output
    assert "model, engine" in result.output

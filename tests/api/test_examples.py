"""Every example in manifests/examples/ is a valid ModelDeployment, by every check we have offline."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from rayleigh_api import crd
from rayleigh_api.cli import main
from rayleigh_api.validation import validate_document

from .helpers import EXAMPLES, load

EXPECTED = {
    "tiny",
    "qwen7b-awq",
    "qwen-lora",
    "qwen7b-tp2-autoscale",
    "locked-down",
    "tiny-scale-to-zero",
    "tiny-fair-sharing",
}


def test_the_documented_examples_exist() -> None:
    assert {p.stem for p in EXAMPLES} >= EXPECTED


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_passes_rayleigh_validate(path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert "is valid" in result.output


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_matches_the_crd_openapi_schema(path: Path) -> None:
    jsonschema.Draft4Validator(crd.openapi_schema()).validate(load(path))


def test_lora_example_serves_base_and_adapter_names() -> None:
    md = validate_document(load(Path("manifests/examples/qwen-lora.yaml")))
    assert md.served_models() == ["qwen-1.8b", "sql-assistant", "support-tone", "legal-summary", "de-translate"]


def test_validate_reads_several_documents_from_standard_input() -> None:
    text = "\n---\n".join(p.read_text() for p in EXAMPLES)
    result = CliRunner().invoke(main, ["validate", "-f", "-"], input=text)
    assert result.exit_code == 0, result.output
    assert result.output.count("is valid") == len(EXAMPLES)

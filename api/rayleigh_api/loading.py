"""Reading ModelDeployments from YAML files, fully validated."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from rayleigh_api.resource import ModelDeployment
from rayleigh_api.validation import SpecError, validate_document


def load_yaml_documents(path: str | Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file (`-` reads standard input)."""
    text = sys.stdin.read() if str(path) == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def load_model_deployment(path: str | Path) -> ModelDeployment:
    """Load and fully validate one ModelDeployment (raises SpecError listing every problem)."""
    docs = load_yaml_documents(path)
    if len(docs) != 1:
        raise SpecError([("", f"{path}: expected exactly one YAML document, found {len(docs)}")])
    return validate_document(docs[0])

"""Shared helpers for the API tests: the example documents and the generated CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from rayleigh_api import crd

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
CRD_FILES = [
    REPO / "manifests" / "crds" / "serving.rayleigh.dev_modeldeployments.yaml",
    REPO / "charts" / "rayleigh" / "crds" / "serving.rayleigh.dev_modeldeployments.yaml",
]


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def tiny() -> dict[str, Any]:
    return copy.deepcopy(load(REPO / "manifests" / "examples" / "tiny.yaml"))


def gpu_model() -> dict[str, Any]:
    return copy.deepcopy(load(REPO / "manifests" / "examples" / "qwen7b-awq.yaml"))


def spec_schema() -> dict[str, Any]:
    return crd.openapi_schema()

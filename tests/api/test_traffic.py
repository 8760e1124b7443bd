"""spec.traffic across documents: `rayleigh validate` accepts the split example and warns about
documents that share a name with spec.traffic but cannot form one split."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import rayleigh_api as api
from rayleigh_api.cli import main
from rayleigh_api.traffic import split_warnings

from .helpers import REPO, load

STABLE = REPO / "manifests" / "examples" / "tiny-split-stable.yaml"
CANARY = REPO / "manifests" / "examples" / "tiny-split-canary.yaml"


def md(doc: dict[str, Any]) -> api.ModelDeployment:
    return api.ModelDeployment.model_validate({k: v for k, v in doc.items() if k not in ("apiVersion", "kind")})


def test_the_split_example_validates_without_warnings() -> None:
    result = CliRunner().invoke(main, ["validate", "-f", str(STABLE), "-f", str(CANARY)])
    assert result.exit_code == 0, result.output
    assert result.output.count("is valid") == 2 and "warning" not in result.output
    stable, canary = md(load(STABLE)), md(load(CANARY))
    assert stable.served_model_name() == canary.served_model_name() == "tiny-chat"
    assert stable.spec.traffic is not None and canary.spec.traffic is not None
    assert (stable.spec.traffic.weight, canary.spec.traffic.weight) == (90, 10)
    assert split_warnings([stable, canary]) == []


def _canary(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(load(CANARY))
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"spec__traffic": None}, "spec.traffic is missing on default/tiny-chat-canary"),
        ({"metadata__namespace": "other"}, "one namespace"),
        ({"spec__adapters": [{"name": "sql", "source": "file:///models/sql-lora"}]}, "adapters included"),
    ],
)
def test_documents_that_cannot_form_one_split_get_a_warning(
    changes: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(_canary(**changes)))
    result = CliRunner().invoke(main, ["validate", "-f", str(STABLE), "-f", str(path)])
    assert result.exit_code == 0, result.output  # each document is valid on its own
    warnings = [line for line in result.output.splitlines() if "warning: model 'tiny-chat'" in line]
    assert warnings and fragment in warnings[0], result.output


def test_all_zero_weights_are_flagged() -> None:
    stable = load(STABLE)
    stable["spec"]["traffic"]["weight"] = 0
    canary = _canary(spec__traffic={"weight": 0})
    (warning,) = split_warnings([md(stable), md(canary)])
    assert "every weight is 0" in warning


def test_a_plain_name_clash_without_traffic_is_left_to_the_oldest_wins_rule() -> None:
    one = _canary(spec__traffic=None)
    two = _canary(spec__traffic=None, metadata__name="other")
    assert split_warnings([md(one), md(two)]) == []

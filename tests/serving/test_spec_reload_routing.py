"""`rayleigh up` under HAProxy: an edit of spec.routing cannot reach the running HAProxy (its balance
is read when Ray starts), so the reloader says so instead of implying it was applied. No Ray: the
Serve push is recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rayleigh_api.loading import load_model_deployment
from rayleigh_serving.spec_reload import SpecReloader
from tests.plugins.common import EXAMPLES_DIR


def _reloader(tmp_path: Path, said: list[str], pushed: list[dict[str, Any]]) -> tuple[Path, SpecReloader]:
    path = tmp_path / "md.yaml"
    path.write_text((EXAMPLES_DIR / "tiny.yaml").read_text())
    started = load_model_deployment(path).spec.routing
    reloader = SpecReloader(
        path,
        deploy=pushed.append,
        build=lambda md: {"routing": md.spec.routing.strategy},
        say=said.append,
        routing=started,
    )
    return path, reloader


def _edit(path: Path, **routing: Any) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["routing"] = routing
    path.write_text(yaml.safe_dump(doc))


def test_a_routing_edit_is_reported_as_applying_at_the_next_start(tmp_path: Path) -> None:
    said: list[str] = []
    pushed: list[dict[str, Any]] = []
    path, reloader = _reloader(tmp_path, said, pushed)
    _edit(path, strategy="least-loaded")
    assert reloader.poll()
    assert pushed == [{"routing": "least-loaded"}]
    assert any("spec.routing changed" in line and "next `rayleigh up`" in line for line in said), said


def test_an_edit_that_keeps_the_routing_says_nothing_about_it(tmp_path: Path) -> None:
    said: list[str] = []
    pushed: list[dict[str, Any]] = []
    path, reloader = _reloader(tmp_path, said, pushed)
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["replicas"] = 2
    path.write_text(yaml.safe_dump(doc))
    assert reloader.poll()
    assert not any("spec.routing" in line for line in said), said

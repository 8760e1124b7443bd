"""The generated documentation pages are up to date with their sources."""

from __future__ import annotations

import subprocess
import sys

from tests.plugins.common import REPO_ROOT


def test_metrics_and_benchmarks_pages_are_generated_from_their_sections() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "merge_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_metrics_page_lists_every_component() -> None:
    text = (REPO_ROOT / "docs" / "METRICS.md").read_text()
    for marker in ("rayleigh_gateway_", "rayleigh_operator_", "ray_vllm_num_requests_waiting", "ray_serve_"):
        assert marker in text


def test_every_file_the_architecture_page_names_exists() -> None:
    """docs/ARCHITECTURE.md's "to change X, open Y" table must point at files that are there."""
    import re

    text = (REPO_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    named = set(
        re.findall(r"`((?:api|gateway|serving|operator|charts|tests|bench|dashboards|scripts|docs)/[\w./-]+)`", text)
    )
    assert len(named) > 20
    missing = sorted(p for p in named if not (REPO_ROOT / p).exists())
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_relative_links_of_the_benchmarks_pages_resolve() -> None:
    """Images and files linked from docs/BENCHMARKS.md and its sections exist (sections link from their
    own folder; merge_docs.py rebases the links for the assembled page)."""
    import re

    pages = [REPO_ROOT / "docs" / "BENCHMARKS.md", *sorted((REPO_ROOT / "docs" / "benchmarks").glob("*.md"))]
    missing = []
    for page in pages:
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^([a-z]+:|#|/)", target):
                continue
            if not (page.parent / target.partition("#")[0]).exists():
                missing.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert not missing, missing

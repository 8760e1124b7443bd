"""The GitHub workflows and the Dockerfiles pass their linters, and the workflows stay hardened.

The linters are pinned in pyproject.toml's `dev` extra, with their binaries in the wheels:
actionlint (a current one: it knows which actions still run on the deprecated node20 runtime),
shellcheck for the scripts in `run:` steps (actionlint calls it), zizmor (GitHub Actions security
audit, default persona, offline) and hadolint. A missing linter fails these tests instead of
skipping them: `pip install -e ".[dev]"` installs all four.

On top of the linters, the rules zizmor checks only in part are asserted directly: every action
pinned by a full commit SHA with its version in a comment, the same SHA for the same action in
every workflow, no write permission at the top of a workflow, `persist-credentials: false` on
every checkout, no `${{ }}` expanded inside a script, and `id-token: write` only where images are
signed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.helpers import ROOT

pytestmark = pytest.mark.timeout(120)

WORKFLOWS = ROOT / ".github" / "workflows"
IMAGES = ROOT / "images"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# `uses: owner/repo[/path]@<40 hex> # vX.Y.Z`
PINNED = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+(?:/[\w./-]+)?)@(?P<sha>[0-9a-f]{40}) # (?P<version>v\d+\.\d+\.\d+)$")


def tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (pyproject.toml pins it)")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=90, cwd=cwd)


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    if True in data:  # YAML 1.1 reads the key `on` as True.
        data["on"] = data.pop(True)
    return data


def steps(path: Path) -> list[dict[str, Any]]:
    return [step for job in load(path)["jobs"].values() for step in job["steps"]]


def uses_lines(path: Path) -> list[str]:
    """Every `uses:` value with its trailing comment (yaml drops comments, so read the text)."""
    return [m.group(1).strip() for m in re.finditer(r"^\s*(?:-\s+)?uses:\s*(.+)$", path.read_text(), flags=re.M)]


# --- the linters ----------------------------------------------------------------------------


def test_actionlint_with_shellcheck_is_clean() -> None:
    result = run(tool("actionlint"), "-no-color", "-shellcheck", tool("shellcheck"), *(str(p) for p in WORKFLOW_FILES))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_is_current_enough_to_flag_node20_actions(tmp_path: Path) -> None:
    # The canary for the pinned version: an actionlint that does not know about node20's
    # deprecation would pass actions that GitHub stops running.
    (tmp_path / "old.yml").write_text(
        "name: old\non: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - uses: actions/checkout@v4\n"
    )
    result = run(tool("actionlint"), "-no-color", str(tmp_path / "old.yml"))
    assert result.returncode != 0 and 'runtime "node20" is deprecated' in result.stdout, result.stdout


def test_pinned_versions_do_not_run_on_node20(tmp_path: Path) -> None:
    # actionlint reads runtimes from its table of popular actions, keyed by major tag: lint a copy
    # of each workflow with every SHA replaced by the major tag of the version in its comment.
    for path in WORKFLOW_FILES:
        text = re.sub(
            r"@[0-9a-f]{40} # (v\d+)\.\d+\.\d+",
            lambda m: f"@{m.group(1)}",
            path.read_text(),
        )
        (tmp_path / path.name).write_text(text)
    result = run(tool("actionlint"), "-no-color", "-shellcheck=", *(str(tmp_path / p.name) for p in WORKFLOW_FILES))
    assert "node20" not in result.stdout, result.stdout


def test_zizmor_finds_nothing() -> None:
    result = run(tool("zizmor"), "--offline", "--no-progress", "--format", "json", str(WORKFLOWS))
    assert result.returncode == 0, result.stdout + result.stderr
    findings = json.loads(result.stdout)
    assert findings == [], "\n".join(
        f"{f['ident']}: {f['desc']} at {f['locations'][0]['concrete']['feature']}" for f in findings
    )


def test_hadolint_is_clean_on_every_dockerfile() -> None:
    assert DOCKERFILES, "no images/*/Dockerfile"
    result = run(tool("hadolint"), "--no-color", "--config", str(IMAGES / ".hadolint.yaml"), *map(str, DOCKERFILES))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# --- hardening rules ------------------------------------------------------------------------


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_sha_with_its_version(path: Path) -> None:
    lines = uses_lines(path)
    assert lines
    unpinned = [line for line in lines if not PINNED.match(line)]
    assert not unpinned, f"pin by full commit SHA with `# vX.Y.Z`: {unpinned}"


def test_one_action_one_pin_across_workflows() -> None:
    pins: dict[str, set[tuple[str, str]]] = {}
    for path in WORKFLOW_FILES:
        for line in uses_lines(path):
            m = PINNED.match(line)
            assert m, line
            pins.setdefault(m["action"].lower(), set()).add((m["sha"], m["version"]))
    assert {action: pin for action, pin in pins.items() if len(pin) > 1} == {}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_permissions_are_empty_at_the_top_and_declared_per_job(path: Path) -> None:
    data = load(path)
    assert data.get("permissions") == {}, "top-level `permissions: {}`; each job asks for its own"
    for name, job in data["jobs"].items():
        assert isinstance(job.get("permissions"), dict) and job["permissions"], name
        assert job["permissions"].get("contents") in ("read", "write"), name


def test_write_permissions_only_where_releases_publish() -> None:
    for path in WORKFLOW_FILES:
        for name, job in load(path)["jobs"].items():
            writes = {scope for scope, level in job["permissions"].items() if level == "write"}
            if path.name != "release.yml":
                assert writes == set(), (path.name, name, writes)
            elif name == "images":
                assert writes == {"packages", "id-token"}, writes
            else:
                assert "id-token" not in writes, (name, writes)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_checkouts_do_not_persist_credentials(path: Path) -> None:
    checkouts = [s for s in steps(path) if s.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False, step


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_no_expression_is_expanded_inside_a_script(path: Path) -> None:
    scripts = [s["run"] for s in steps(path) if "run" in s]
    assert scripts and not [s for s in scripts if "${{" in s], "pass values to scripts through env:"


# --- the release ----------------------------------------------------------------------------


def release_images() -> list[dict[str, Any]]:
    return load(WORKFLOWS / "release.yml")["jobs"]["images"]["strategy"]["matrix"]["include"]


def test_release_builds_four_images_multi_arch_where_it_can() -> None:
    images = {entry["name"]: entry for entry in release_images()}
    assert set(images) == {"operator", "gateway", "replica", "replica-cuda"}
    for slim in ("operator", "gateway"):
        assert images[slim]["file"] == "images/slim/Dockerfile"
        assert images[slim]["build-args"] == f"EXTRA={slim}"
        assert set(images[slim]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert images["replica"]["file"] == "images/replica/Dockerfile"
    assert images["replica-cuda"]["file"] == "images/replica-cuda/Dockerfile"
    for name in ("replica", "replica-cuda"):
        assert images[name]["platforms"] == "linux/amd64"
    for entry in images.values():
        assert (ROOT / entry["file"]).is_file(), entry["file"]
    release_steps = load(WORKFLOWS / "release.yml")["jobs"]["images"]["steps"]
    assert any(s.get("uses", "").startswith("docker/setup-qemu-action@") for s in release_steps)


def test_release_attaches_sbom_and_provenance_and_signs_by_digest() -> None:
    job = load(WORKFLOWS / "release.yml")["jobs"]["images"]
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["with"]["push"] is True
    assert build["with"]["sbom"] is True and build["with"]["provenance"].startswith("mode=")
    assert "cache-from" not in build["with"] and "cache-to" not in build["with"]
    names = [s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert names.index("sigstore/cosign-installer") > names.index("docker/build-push-action")
    sign = next(s for s in job["steps"] if "cosign sign" in s.get("run", ""))
    assert 'cosign sign --yes "${IMAGE}@${DIGEST}"' in sign["run"]
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert "cosign verify" in sign["run"] and "--certificate-oidc-issuer" in sign["run"]

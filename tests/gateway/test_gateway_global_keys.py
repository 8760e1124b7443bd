"""`rayleigh keys create` without `--model` makes a global key (every tenant's routes that accept
API keys): it says so on stderr. `--max-streams` is stored as the key's own stream cap."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from rayleigh_gateway.cli import main
from rayleigh_gateway.keys import load_keys


def test_key_without_model_warns_that_it_is_global(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.yaml")
    result = CliRunner().invoke(main, ["keys", "create", "--file", path, "--owner", "team-a"])
    assert result.exit_code == 0, result.output
    assert "warning: a key without --model is global" in result.stderr
    assert "rk_" in result.stdout and "warning" not in result.stdout  # scripts reading stdout are unaffected


def test_key_with_model_has_no_warning_and_keeps_its_stream_cap(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    args = ["keys", "create", "--file", str(path), "--owner", "team-a", "--model", "tiny", "--max-streams", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    (record,) = load_keys(path).records.values()
    assert record.max_concurrent_streams == 3
    assert yaml.safe_load(path.read_text())["keys"][0]["limits"] == {"maxConcurrentStreams": 3}

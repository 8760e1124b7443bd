"""The `rayleigh` command lists exactly the subcommands that work in this installation."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from rayleigh_api.cli import COMMANDS, main


def test_help_lists_the_api_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("crd", "validate", "plan", "explain"):
        assert name in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_listed_subcommand_has_working_help(name: str) -> None:
    listed = main.list_commands(click_context())
    if name not in listed:
        pytest.skip(f"{name}: its component is not installed here")
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_api_commands_do_not_import_ray_or_vllm() -> None:
    """`rayleigh crd`/`validate` must run in the operator image, which has neither."""
    code = (
        "import sys; from click.testing import CliRunner; from rayleigh_api.cli import main;"
        "r = CliRunner().invoke(main, ['crd']); assert r.exit_code == 0;"
        "print(sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def click_context() -> click.Context:

    return click.Context(main)


def test_a_command_is_not_listed_when_its_extra_is_missing() -> None:
    """The operator image has no uvicorn, redis or Ray: `rayleigh gateway` and `rayleigh up` must not show.

    Runs a fresh interpreter in which importing those packages is impossible (a meta path finder that
    refuses them), as in an image built without the `gateway` and `serving` extras."""
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('uvicorn', 'redis', 'ray'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Block())\n"
        "import click; from rayleigh_api.cli import main\n"
        "print(' '.join(main.list_commands(click.Context(main))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed = out.stdout.split()
    assert {"crd", "validate", "operator", "render"} <= set(listed)
    assert not {"gateway", "keys", "up"} & set(listed)

"""The one `rayleigh` command.

Subcommands live next to the component that implements them and are loaded lazily, so that
`rayleigh crd` does not import Ray or vLLM. A subcommand is listed only when the third-party
packages its component needs are installed (the extra of the image: the operator image has
kopf but no uvicorn or Ray, the gateway image uvicorn but no kopf or Ray), so an image does not
advertise commands it cannot run.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

# The third-party modules each extra brings (pyproject.toml's optional dependencies).
OPERATOR_NEEDS = ("kopf", "aiohttp")
GATEWAY_NEEDS = ("uvicorn", "redis", "jwt", "orjson")
SERVING_NEEDS = ("ray",)

# name -> ("module:attribute" of a click command, modules it needs beyond the base install).
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "crd": ("rayleigh_api.commands:crd", ()),
    "validate": ("rayleigh_api.commands:validate", ()),
    "plan": ("rayleigh_api.commands:plan", ()),
    "explain": ("rayleigh_api.commands:explain_command", ()),
    "bench": ("rayleigh_loadtest.cli:bench", ("aiohttp", "numpy", "rich", "matplotlib")),
    "render": ("rayleigh_operator.render_cli:render", ()),
    "operator": ("rayleigh_operator.run:operator", OPERATOR_NEEDS),
    "rollout": ("rayleigh_operator.rollout_cli:rollout", OPERATOR_NEEDS),
    "gateway": ("rayleigh_gateway.cli:gateway", GATEWAY_NEEDS),
    "keys": ("rayleigh_gateway.keys_cli:keys", GATEWAY_NEEDS),
    "up": ("rayleigh_serving.cli:up", SERVING_NEEDS + GATEWAY_NEEDS),
    "make-tiny-model": ("rayleigh_serving.cli:make_tiny_model", ("torch", "transformers")),
    "merge-lora": ("rayleigh_serving.cli:merge_lora", ("torch", "peft")),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def available(name: str) -> bool:
    """True when `rayleigh NAME` can run here: its module and every package it needs are installed."""
    target, needs = COMMANDS[name]
    return _installed(target.split(":", 1)[0]) and all(_installed(m) for m in needs)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # Importing a component's cli module must stay cheap: heavy imports (ray, vllm) happen
        # inside the command functions, not at module level.
        return sorted(name for name in COMMANDS if self.get_command(ctx, name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not available(cmd_name):
            return None
        module_name, attr = COMMANDS[cmd_name][0].split(":", 1)
        module = importlib.import_module(module_name)
        command: Any = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            return None
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rayleigh")
def main() -> None:
    """Rayleigh: serve LLMs on Kubernetes from one ModelDeployment object."""

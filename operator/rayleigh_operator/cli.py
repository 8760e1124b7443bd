"""The one `rayleigh` command.

Subcommands live next to the component that implements them and are loaded lazily, so that
`rayleigh crd` does not import Ray or vLLM, and a subcommand whose component is not installed
(the operator image has no gateway, the gateway image no serving stack) is simply not listed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

# name -> "module:attribute" of a click command. A command is offered only when its module
# can be found, so an image without an extra does not advertise commands it cannot run.
COMMANDS: dict[str, str] = {
    "crd": "rayleigh_operator.commands:crd",
    "validate": "rayleigh_operator.commands:validate",
    "plan": "rayleigh_operator.commands:plan",
    "explain": "rayleigh_operator.commands:explain_command",
    "render": "rayleigh_operator.render_cli:render",
    "operator": "rayleigh_operator.run:operator",
    "gateway": "rayleigh_gateway.cli:gateway",
    "keys": "rayleigh_gateway.cli:keys",
    "up": "rayleigh_serving.cli:up",
    "make-tiny-model": "rayleigh_serving.cli:make_tiny_model",
    "merge-lora": "rayleigh_serving.cli:merge_lora",
    "bench": "rayleigh_operator.bench_cli:bench",
}


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # Importing a component's cli module must stay cheap: heavy imports (ray, vllm) happen
        # inside the command functions, not at module level.
        return sorted(name for name in COMMANDS if self.get_command(ctx, name) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(target):
            return None
        module_name, attr = target.split(":", 1)
        module = importlib.import_module(module_name)
        command: Any = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            return None
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rayleigh")
def main() -> None:
    """Rayleigh: serve LLMs on Kubernetes from one ModelDeployment object."""

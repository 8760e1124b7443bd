"""`rayleigh render -f md.yaml`: print the objects the operator would apply, offline.

It takes the operator's render flags (`rayleigh_operator.flags`), so the same flags give the
same objects here and in the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click
import yaml

from rayleigh_operator.flags import options_from_flags, render_flags


@click.command("render")
@click.option("-f", "--filename", required=True, help="ModelDeployment YAML file ('-' reads standard input).")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@click.option("--route-prefix", default="/", show_default=True, help="Serve route prefix of the application.")
@click.option("--monitoring/--no-monitoring", default=False, show_default=True, help="Also render a PodMonitor.")
@render_flags
@click.option(
    "--serve-config/--no-serve-config",
    default=False,
    show_default=True,
    help="Print the Ray Serve config the operator PUTs to the dashboard instead of the Kubernetes objects.",
)
def render(filename: str, output: str, route_prefix: str, monitoring: bool, serve_config: bool, **flags: Any) -> None:
    """Print the Kubernetes objects the operator creates for a ModelDeployment.

    Works offline (no cluster). Objects get ownerReferences only when the input has
    metadata.uid, as it has once it exists in a cluster.
    """
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_api.validation import SpecError
    from rayleigh_operator import render as r

    try:
        md = load_model_deployment(filename)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    except OSError as exc:
        raise click.FileError(filename, hint=str(exc.strerror)) from None
    options = dataclasses.replace(options_from_flags(**flags), route_prefix=route_prefix, monitoring=monitoring)
    try:
        if serve_config:
            from rayleigh_serving.config import ServeConfigError, build_serve_config

            try:
                objs: list[dict[str, Any]] = [
                    build_serve_config(md, route_prefix=route_prefix, ingress=options.serve_ingress)
                ]
            except ServeConfigError as exc:
                raise r.RenderError(exc.problems) from None
        else:
            objs = r.render(md, options=options)
    except r.RenderError as exc:
        for path, message in exc.problems:
            click.echo(f"error: {path}: {message}" if path else f"error: {message}", err=True)
        sys.exit(1)
    click.echo(dump(objs, output), nl=False)


def dump(objs: list[dict[str, Any]], output: str = "yaml") -> str:
    if output == "json":
        return (
            json.dumps(objs[0] if len(objs) == 1 else {"apiVersion": "v1", "kind": "List", "items": objs}, indent=2)
            + "\n"
        )
    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False, width=120) for o in objs)

"""`rayleigh crd`, `rayleigh validate` and `rayleigh plan`: the API's offline commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rayleigh_api import cold_start, planner
from rayleigh_api import crd as crd_module
from rayleigh_api.loading import load_model_deployment, load_yaml_documents
from rayleigh_api.resource import ModelDeployment
from rayleigh_api.traffic import split_warnings
from rayleigh_api.validation import SpecError, problems


@click.command()
def crd() -> None:
    """Print the ModelDeployment CustomResourceDefinition generated from the API model."""
    click.echo(crd_module.crd_yaml(), nl=False)


@click.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(allow_dash=True),
    help="ModelDeployment YAML file(s); '-' reads standard input.",
)
def validate(files: tuple[str, ...]) -> None:
    """Check ModelDeployments with the same rules as the API server (schema and CEL), offline.

    Prints every problem with its field path; exits 1 when any document is invalid. Documents that
    share a served model name and set spec.traffic but cannot form one traffic split get a warning.
    """
    failed = False
    valid: list[ModelDeployment] = []
    for name in files:
        try:
            docs = load_yaml_documents(name)
        except (OSError, ValueError) as err:
            click.echo(f"{name}: cannot read: {err}", err=True)
            failed = True
            continue
        if not docs:
            click.echo(f"{name}: no YAML document found", err=True)
            failed = True
        for index, doc in enumerate(docs):
            label = name if len(docs) == 1 else f"{name}[{index}]"
            if not isinstance(doc, dict):
                click.echo(f"{label}: expected a mapping, got {type(doc).__name__}", err=True)
                failed = True
                continue
            found = problems(doc)
            who = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
            if found:
                failed = True
                click.echo(f"{label}: ModelDeployment {who!r} is invalid ({len(found)} problems):", err=True)
                for p in found:
                    click.echo(f"  - {p}", err=True)
            else:
                click.echo(f"{label}: ModelDeployment {who!r} is valid")
                valid.append(ModelDeployment.model_validate({k: v for k, v in doc.items() if k != "status"}))
    for warning in split_warnings(valid):
        click.echo(f"warning: {warning}", err=True)
    if failed:
        sys.exit(1)


@click.command()
@click.option("-f", "--filename", "file", required=True, type=click.Path(allow_dash=True))
@click.option(
    "--gpu-memory",
    default="80GiB",
    show_default=True,
    help="Memory of one GPU, e.g. 8GiB, 24GiB, 80GiB.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The model's config.json, for models the built-in table does not know.",
)
@click.option(
    "--load-bandwidth",
    default="1GiB",
    show_default=True,
    help="Bytes per second the weights load at, for the cold start estimate (local NVMe: more; a network "
    "volume or a download: less).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(file: str, gpu_memory: str, config_path: Path | None, load_bandwidth: str, as_json: bool) -> None:
    """Estimate GPU memory for a ModelDeployment: weights, KV cache per token, tokens that fit, and
    the expected cold start of a replica (scale to zero).

    Exits 2 when the model does not fit, with the changes that would make it fit.
    """
    try:
        md = load_model_deployment(file)
        memory = planner.parse_size(gpu_memory)
        arch = None
        origin = "given"
        if config_path is not None:
            arch = planner.Architecture.from_config(json.loads(config_path.read_text()))
            origin = str(config_path)
        result = planner.plan(md, memory, architecture=arch, origin=origin, base_dir=Path.cwd())
        cold = cold_start.estimate(
            result.weight_bytes_per_gpu * result.gpus_per_replica, planner.parse_size(load_bandwidth)
        )
    except SpecError as err:
        for p in err.problems:
            click.echo(f"{file}: {p}", err=True)
        sys.exit(1)
    except (planner.UnknownModelError, ValueError, OSError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "parameters": result.architecture.total_params(),
                    "weightBytesPerGpu": int(result.weight_bytes_per_gpu),
                    "kvBytesPerTokenPerGpu": int(result.kv_bytes_per_token_per_gpu),
                    "kvBudgetBytesPerGpu": int(max(result.kv_budget_bytes_per_gpu, 0)),
                    "maxTokensInCache": result.max_tokens_in_cache,
                    "maxModelLen": result.max_model_len,
                    "fits": result.fits,
                    "reasons": result.reasons,
                    "suggestions": result.suggestions,
                    "coldStart": cold.as_json(),
                },
                indent=2,
            )
        )
    else:
        click.echo(planner.format_plan(result))
        click.echo(f"cold start (estimate)  {cold.describe()}")
    if not result.fits:
        sys.exit(2)


@click.command(name="explain")
@click.argument("field", default="spec")
def explain_command(field: str) -> None:
    """Describe a ModelDeployment field, like `kubectl explain` (e.g. `spec.model.quantization`)."""
    from rayleigh_api import reference

    try:
        click.echo(reference.explain(field))
    except KeyError as err:
        click.echo(f"error: {err.args[0]}", err=True)
        sys.exit(1)

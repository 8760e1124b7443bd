"""`rayleigh bench overhead NAME`: the repository's own overhead benchmarks (bench/*.py).

These need a source checkout (they start the repository's servers, floors and engines); an
installed package has no bench/ folder, and the command says so. Only real benchmarks are listed:
scripts that follow the convention (argparse options `--quick` and `--json`), not the floors and
servers they compare against (`gateway_floor`, `floor_controller`, `devupstream`) nor the locustfile.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

_OPTION = re.compile(r"""add_argument\(\s*["'](--quick|--json)["']""")


def _is_checkout(base: Path) -> bool:
    return (base / "bench").is_dir() and (base / "pyproject.toml").is_file()


def bench_dir() -> Path:
    """bench/ of the checkout this package runs from, else of the current directory or a parent."""
    here = Path(__file__).resolve().parents[2]
    for base in (here, Path.cwd(), *Path.cwd().parents):
        if _is_checkout(base):
            return base / "bench"
    raise click.ClickException(
        "`rayleigh bench overhead` runs the repository's bench/*.py and needs a source checkout of Rayleigh "
        "(git clone, then run it inside the checkout); to load-test an endpoint use `rayleigh bench load`"
    )


def benchmarks(folder: Path) -> list[str]:
    names = []
    for p in folder.glob("*.py"):
        if p.stem.startswith("_"):
            continue
        if set(_OPTION.findall(p.read_text(encoding="utf-8"))) == {"--quick", "--json"}:
            names.append(p.stem)
    return sorted(names)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", required=False)
@click.option("--quick", is_flag=True, help="The reduced run (about a minute, plus engine start-up).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON here.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def overhead(name: str | None, quick: bool, json_path: str | None, extra: tuple[str, ...]) -> None:
    """Run one of the repository's overhead benchmarks (source checkout only).

    Each runs a baseline and Rayleigh in the same run and prints the ratios (docs/BENCHMARKS.md).
    Without NAME, lists them. Arguments after NAME go to the script.
    """
    folder = bench_dir()
    names = benchmarks(folder)
    if not name:
        click.echo("\n".join(names))
        return
    if name not in names:
        raise click.ClickException(f"unknown benchmark {name!r}; available: {', '.join(names)}")
    cmd = [sys.executable, str(folder / f"{name}.py"), *extra]
    if quick:
        cmd.append("--quick")
    if json_path:
        cmd += ["--json", json_path]
    sys.exit(subprocess.call(cmd, cwd=folder.parent))

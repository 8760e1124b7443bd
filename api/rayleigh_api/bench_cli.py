"""`rayleigh bench NAME`: run one of the benchmarks in bench/ from a source checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click


def _bench_dir() -> Path:
    for base in (Path.cwd(), *Path.cwd().parents):
        if (base / "bench").is_dir() and (base / "pyproject.toml").is_file():
            return base / "bench"
    raise click.ClickException("no bench/ folder found: run `rayleigh bench` inside a Rayleigh checkout")


def _available(bench: Path) -> list[str]:
    """The benchmarks: scripts that follow the convention (`--quick`, `--json`); floors and servers do not."""
    return sorted(
        p.stem
        for p in bench.glob("*.py")
        if not p.stem.startswith("_") and "--quick" in p.read_text() and "--json" in p.read_text()
    )


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", required=False)
@click.option("--quick", is_flag=True, help="The reduced run (about a minute, plus engine start-up).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON here.")
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def bench(name: str | None, quick: bool, json_path: str | None, extra: tuple[str, ...]) -> None:
    """Run a benchmark from bench/ (baseline and Rayleigh in the same run; prints the ratios).

    Without NAME, lists the benchmarks.
    """
    folder = _bench_dir()
    names = _available(folder)
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

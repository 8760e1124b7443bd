"""`rayleigh up`, `rayleigh make-tiny-model`, `rayleigh merge-lora`.

Importing this module stays cheap: Ray, vLLM, torch and peft are imported inside the commands.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_TINY_DIR = Path(".cache/models/tiny-qwen")
REPLICA_STARTING = "engine replica scheduled (loading)"


@click.command("make-tiny-model")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_TINY_DIR,
    show_default=True,
    help="Directory to write the model to (created).",
)
@click.option("--size", type=click.Choice(["tiny", "medium"]), default="tiny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option(
    "--lora-out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write a random LoRA adapter for the model here.",
)
def make_tiny_model(out: Path, size: str, seed: int, lora_out: Path | None) -> None:
    """Write a tiny random Qwen2 model with a ChatML tokenizer (offline, seconds)."""
    from rayleigh_serving.tiny_model import make_tiny_lora
    from rayleigh_serving.tiny_model import make_tiny_model as make

    start = time.monotonic()
    make(out, size=size, seed=seed)
    click.echo(f"wrote {size} model to {out} in {time.monotonic() - start:.1f} s")
    if lora_out is not None:
        make_tiny_lora(out, lora_out, seed=seed + 1)
        click.echo(f"wrote LoRA adapter to {lora_out}")


@click.command("merge-lora")
@click.option(
    "--base",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Base model directory (Hugging Face format).",
)
@click.option(
    "--adapter",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="peft LoRA adapter directory (adapter_config.json + weights).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the merged model (serve it with spec.model.source).",
)
def merge_lora(base: Path, adapter: Path, out: Path) -> None:
    """Merge a LoRA adapter into its base model's weights (peft merge_and_unload)."""
    from rayleigh_serving.tiny_model import merge_lora as merge

    try:
        merge(base, adapter, out)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"merged {adapter} into {base}: {out}")


class _Progress:
    """One status line, redrawn in place on a terminal and printed every 10 s otherwise."""

    def __init__(self, start: float, phases: _Phases | None = None) -> None:
        self.tty = sys.stderr.isatty()
        self.last_print = -10.0
        self.start = start
        self.phases = phases

    def __call__(self, status: str, detail: str, elapsed: float) -> None:
        starting = "LLMServer" in detail and ("starting" in detail or "running" in detail)
        if self.phases is not None and starting and not self.phases.seen(REPLICA_STARTING):
            if self.tty:
                click.echo("", err=True)
            self.phases.mark(REPLICA_STARTING)
        line = f"[{time.monotonic() - self.start:5.0f} s] {status:<12} {detail}"
        if self.tty:
            click.echo("\r" + line[:150].ljust(150), nl=False, err=True)
        elif elapsed - self.last_print >= 10:
            click.echo(line, err=True)
            self.last_print = elapsed

    def done(self) -> None:
        if self.tty:
            click.echo("", err=True)


def _prepare_local_models(md: Any, base: Path) -> None:
    """Make the tiny model (and a tiny adapter) if the spec points at a missing tiny one."""
    from rayleigh_serving.config import resolve_source
    from rayleigh_serving.tiny_model import ensure_tiny_lora, ensure_tiny_model

    src = resolve_source(md.spec.model.source, field="spec.model.source", local_base=base)
    model_dir = Path(src.model_source)
    if src.kind == "file" and not model_dir.exists():
        if not model_dir.name.startswith("tiny"):
            raise click.ClickException(f"spec.model.source: {model_dir} does not exist")
        click.echo(f"making the tiny model in {model_dir} ...", err=True)
        ensure_tiny_model(model_dir)
    for i, adapter in enumerate(md.spec.adapters):
        a = resolve_source(adapter.source, field=f"spec.adapters[{i}].source", local_base=base)
        adir = Path(a.model_source)
        if a.kind == "file" and not adir.exists():
            if not adir.name.startswith("tiny"):
                raise click.ClickException(f"spec.adapters[{i}].source: {adir} does not exist")
            ensure_tiny_lora(model_dir, adir)


def _gateway_command() -> list[str] | None:
    """How to run the gateway in front, if this install has it (rayleigh_gateway)."""
    import importlib.util

    if importlib.util.find_spec("rayleigh_gateway.cli") is None:
        return None
    rayleigh = Path(sys.executable).with_name("rayleigh")
    if not rayleigh.exists():
        return None
    return [str(rayleigh), "gateway"]


@click.command("up")
@click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ModelDeployment YAML to serve locally.",
)
@click.option(
    "--port",
    type=int,
    default=8000,
    show_default=True,
    help="Port of the OpenAI endpoint (the gateway's, or Ray Serve's with --no-gateway).",
)
@click.option(
    "--gateway/--no-gateway",
    default=True,
    show_default=True,
    help="Put the Rayleigh gateway (API keys) in front, if installed.",
)
@click.option(
    "--num-cpus",
    type=int,
    default=4,
    show_default=True,
    help="Logical CPUs Ray may hand out (>= 4 even on 2 cores, or Serve LLM deadlocks).",
)
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for readiness.")
@click.option("--exit-after-ready", is_flag=True, help="Stop as soon as the first answer came (for CI).")
@click.option(
    "--upstream",
    metavar="URL",
    help="An OpenAI-compatible server that already runs (e.g. vLLM's own) to put the gateway in front of, "
    "with this ModelDeployment's gateway settings, instead of starting Ray and vLLM here.",
)
def up(
    path: Path, port: int, gateway: bool, num_cpus: int, timeout: float, exit_after_ready: bool, upstream: str | None
) -> None:
    """Serve a ModelDeployment on this machine: local Ray, the Serve app, the gateway."""
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_api.validation import SpecError
    from rayleigh_serving.config import ServeConfigError, build_serve_config
    from rayleigh_serving.local import LocalRay, free_port, wait_for_answer
    from rayleigh_serving.reaper import Reaper

    start = time.monotonic()
    phases = _Phases(start)
    try:
        md = load_model_deployment(path)
    except SpecError as e:
        raise click.ClickException(
            f"{path} is not a valid ModelDeployment:\n  " + "\n  ".join(map(str, e.problems))
        ) from e
    gateway_cmd = _gateway_command() if gateway else None
    if upstream is not None and gateway_cmd is None:
        raise click.ClickException(
            "--upstream needs the gateway in front (drop --no-gateway; install rayleigh[gateway])"
        )
    state_dir = Path(os.environ.get("RAYLEIGH_STATE_DIR", Path.home() / ".cache" / "rayleigh")) / "up"
    state_dir.mkdir(parents=True, exist_ok=True)
    ray: LocalRay | None = None
    app = ""
    config: dict[str, Any] = {}
    if upstream is None:
        base = Path.cwd()
        _prepare_local_models(md, base)
        serve_port = free_port() if gateway_cmd else port
        try:
            config = build_serve_config(md, local_base=base, http_host="127.0.0.1", http_port=serve_port)
        except ServeConfigError as e:
            raise click.ClickException(str(e)) from e
        app = config["applications"][0]["name"]
        ray = LocalRay(num_cpus=num_cpus, http_port=serve_port, log=state_dir / "ray.log")
    # Whatever ends this process (Ctrl-C, an error, SIGKILL), the watchdog kills what it started.
    reaper = Reaper.start()
    if ray is not None:
        ray.reaper = reaper
    gw: Any = None
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        t = time.monotonic()
        _say("\nstopping ...")
        if gw is not None:
            gw.terminate()  # the gateway and Ray shut down side by side
        if ray is not None:
            ray.stop()
        if gw is not None:
            gw.stop()
        reaper.clear()
        reaper.close()
        _say(f"stopped in {time.monotonic() - t:.1f} s.")

    def _on_sigterm(*_: Any) -> None:
        _stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C stops us even when started from a script with SIGINT ignored (`cmd &` in sh does that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    model = md.served_model_name()
    try:
        if ray is not None:
            click.echo(f"starting Ray (logs: {ray.log}) ...", err=True)
            ray.launch()
        if gateway_cmd:
            from rayleigh_serving.gateway_local import LocalGateway

            gw = LocalGateway(
                gateway_cmd,
                md=md,
                upstream=upstream or (ray.base_url if ray is not None else ""),
                port=port,
                state_dir=state_dir,
                reaper=reaper,
            )
            gw.launch()  # it starts while Ray and the engine do; it needs no upstream to become ready
        if ray is not None:
            ray.wait_started()
            phases.mark("Ray started")
            ray.deploy(config)
            phases.mark("Serve controller up, application submitted")
            progress = _Progress(start, phases)
            ray.wait_running(app, timeout=timeout, progress=progress)
            progress.done()
            phases.mark("engine loaded (application RUNNING)")
            upstream = ray.base_url
        assert upstream is not None
        base_url, key, how = upstream, None, "no gateway in front: no API key needed"
        warm_url: str = upstream
        if gw is not None:
            gw.wait_ready()
            phases.mark("gateway ready")
            base_url, key, how = gw.base_url, gw.api_key, gw.how_to_call()
            if key is not None or md.spec.gateway.public:
                warm_url = base_url  # one warm-up request through the whole path
        wait_for_answer(warm_url, model, timeout=120, api_key=key if warm_url == base_url else None)
        elapsed = phases.mark("first answer")
        _print_ready(base_url, model, md.served_models(), key, how, elapsed, ray, phases.summary())
        if exit_after_ready:
            return
        reloader = None
        if ray is not None:
            from rayleigh_serving.spec_reload import SpecReloader

            reloader = SpecReloader(
                path,
                deploy=ray.deploy,
                build=lambda m: build_serve_config(m, local_base=base, http_host="127.0.0.1", http_port=serve_port),
                on_model=gw.write_routes if gw is not None else None,
                say=_say,
            )
        while True:  # edits of the YAML file are applied (adapters load without a restart)
            time.sleep(1)
            if reloader is not None:
                reloader.poll()
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, OSError) as e:
        logs = f"\n(Ray's logs: {ray.log} and {ray.temp_dir}/session_latest/logs)" if ray is not None else ""
        raise click.ClickException(f"{e}{logs}") from e
    finally:
        _stop()


def _say(line: str) -> None:
    """Print to stderr while stopping: a closed terminal or pipe must not keep us from cleaning up."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(line, err=True)


class _Phases:
    """Where start-up goes: each phase as seconds since `rayleigh up` started, printed as it ends."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> float:
        at = time.monotonic() - self.start
        self.marks.append((name, at))
        click.echo(f"[{at:6.1f} s] {name}", err=True)
        return at

    def seen(self, name: str) -> bool:
        return any(n == name for n, _ in self.marks)

    def summary(self) -> str:
        return ", ".join(f"{name} {at:.1f} s" for name, at in self.marks)


def _print_ready(
    base_url: str, model: str, models: list[str], key: str | None, how: str, elapsed: float, ray: Any, phases: str
) -> None:
    auth = f' -H "Authorization: Bearer {key}"' if key else ""
    api_key = key or "unused"
    ray_line = f"Ray dashboard: {ray.dashboard_url}   metrics: {ray.metrics_url}" if ray is not None else ""
    click.echo(
        f"""
Ready: first answer {elapsed:.1f} s after start.
  Start-up (seconds since start): {phases}
  OpenAI endpoint: {base_url}/v1   models: {", ".join(models)}
  {how}
  {ray_line}

curl {base_url}/v1/chat/completions{auth} -H "Content-Type: application/json" \\
  -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 32}}'

python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base_url}/v1", api_key="{api_key}")
r = client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello!"}}], max_tokens=32)
print(r.choices[0].message.content)
EOF

Press Ctrl-C to stop."""
    )

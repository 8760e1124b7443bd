"""`rayleigh bench`: load, compare, report, overhead.

Importing this module is cheap (click only): aiohttp, numpy, rich and matplotlib load when a
command runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .overhead import overhead
from .units import parse_duration, parse_float_list, parse_int_list

if TYPE_CHECKING:
    from .client import Endpoint
    from .load import LoadSpec
    from .progress import Display


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _list(parse: Callable[[str], list[Any]]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    def cb(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc

    return cb


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object")
    return obj


_WORKLOAD_OPTIONS = [
    click.option("--api", type=click.Choice(["chat", "completions"]), default="chat", show_default=True,
                 help="/v1/chat/completions or /v1/completions."),
    click.option("--concurrency", callback=_list(parse_int_list), metavar="1,4,16",
                 help="Closed loop: requests in flight, one step per value (default 1)."),
    click.option("--rate", callback=_list(parse_float_list), metavar="2,5,10",
                 help="Open loop: Poisson arrivals per second, one step per value."),
    click.option("--duration", callback=_duration, metavar="30s",
                 help="Per step: stop issuing after this long [default: 30s, or 10m with --requests]."),
    click.option("--requests", "max_requests", type=click.IntRange(min=1),
                 help="Per step: at most this many requests [default: 100000]."),
    click.option("--prompt-tokens", type=click.IntRange(min=1), default=128, show_default=True,
                 help="Synthetic prompt length (exact with --tokenizer, else approximate)."),
    click.option("--output-tokens", type=click.IntRange(min=1),
                 help="max_tokens per request [default: 64; a dataset's reference answer length]."),
    click.option("--dataset", type=click.Path(exists=True, dir_okay=False),
                 help="JSONL prompts (ShareGPT conversations, OpenAI messages or {\"prompt\"}) instead of synthetic ones."),
    click.option("--stream/--no-stream", default=True, show_default=True, help="Server-Sent Events (TTFT, ITL)."),
    click.option("--ignore-eos", is_flag=True, help="Send ignore_eos: true (vLLM): every request runs to max_tokens."),
    click.option("--extra-body", callback=_json_object, metavar="JSON",
                 help="Fields merged into every request body, e.g. '{\"temperature\": 0}'."),
    click.option("--slo-ttft", callback=_duration, metavar="500ms", help="Goodput: time to first token at most this."),
    click.option("--slo-itl", callback=_duration, metavar="50ms",
                 help="Goodput: the request's mean inter-token latency at most this."),
    click.option("--slo-e2e", callback=_duration, metavar="10s", help="Goodput: end-to-end latency at most this."),
    click.option("--tokenizer", type=click.Path(exists=True, file_okay=False),
                 help="The model's tokenizer (a local folder; needs transformers): exact prompt lengths, "
                      "and token counts when the server sends no usage."),
    click.option("--timeout", callback=_duration, default="120s", show_default=True, metavar="120s", help="Per request."),
    click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
                 help="Requests sent first and not measured (per endpoint)."),
    click.option("--max-inflight", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Open loop: the most requests in flight (arrivals beyond it wait and are counted late)."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for results.json and the plots."),
    click.option("--no-plots", is_flag=True, help="Write results.json only."),
    click.option("--quiet", "-q", is_flag=True, help="No progress display."),
]  # fmt: skip


def workload_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(_WORKLOAD_OPTIONS):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Load-test OpenAI-compatible endpoints: TTFT, inter-token latency, tokens/s, goodput.

    `load` measures one endpoint, `compare` two in interleaved rounds, `report` overlays saved runs,
    `overhead` runs the repository's own overhead benchmarks. See docs/BENCH.md.
    """


def _spec(endpoint: Endpoint, o: dict[str, Any]) -> LoadSpec:
    from .client import RequestOptions
    from .load import LoadSpec
    from .runner import Limits, Step
    from .stats import Slo
    from .workload import Tokenizer, from_dataset, synthetic

    if o["concurrency"] and o["rate"]:
        raise click.UsageError("give --concurrency or --rate, not both")
    steps = (
        [Step("rate", float(r)) for r in o["rate"]]
        if o["rate"]
        else [Step("concurrency", float(c)) for c in (o["concurrency"] or [1])]
    )
    duration = o["duration"] or (600.0 if o["max_requests"] else 30.0)
    limits = Limits(duration, o["max_requests"] or 100_000, o["timeout"], o["max_inflight"])
    try:
        tokenizer = Tokenizer(o["tokenizer"]) if o["tokenizer"] else None
        if o["dataset"]:
            workload = from_dataset(o["dataset"], output_tokens=o["output_tokens"], tokenizer=tokenizer, seed=o["seed"])
        else:
            workload = synthetic(o["prompt_tokens"], o["output_tokens"] or 64, seed=o["seed"], tokenizer=tokenizer)
    except (OSError, ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    options = RequestOptions(o["stream"], o["ignore_eos"], o["extra_body"], o["timeout"])
    slo = Slo(o["slo_ttft"], o["slo_itl"], o["slo_e2e"])
    return LoadSpec(endpoint, options, workload, steps, limits, slo, o["warmup"], o["seed"])


def _endpoint(base_url: str, model: str | None, api_key: str | None, api: str, label: str) -> Endpoint:
    from .client import Endpoint
    from .load import discover_model, run_interruptible
    from .progress import Display

    if model is None:
        try:
            model = run_interruptible(lambda stop: discover_model(base_url, api_key), Display(quiet=True))
        except Exception as exc:
            raise click.ClickException(f"could not find the model at {base_url}: {exc}") from exc
    return Endpoint(base_url, model, api_key, api, label)


def _plots(runs: list[Any], out: Path, display: Display) -> None:
    from .plots import plot_runs

    for p in plot_runs(runs, out):
        display.message(f"wrote {p}")


@bench.command()
@click.option("--base-url", required=True, help="The server, e.g. http://127.0.0.1:8000 (with or without /v1).")
@click.option("--model", help="The model name to send [default: the first one GET /v1/models lists].")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token [env: OPENAI_API_KEY].")
@click.option("--label", help="The run's name in plots and reports [default: the model].")
@workload_options
def load(base_url: str, model: str | None, api_key: str | None, label: str | None, **o: Any) -> None:
    """Measure one endpoint: a concurrency sweep or Poisson arrival rates.

    Writes OUT/results.json (one object per step), OUT/requests.jsonl and OUT/*.png.
    Ctrl-C stops and still writes what was measured.
    """
    from .load import load_doc, run_interruptible, run_load
    from .progress import Display, out_console, steps_table
    from .results import load_run, write_run

    endpoint = _endpoint(base_url, model, api_key, o["api"], label or "")
    endpoint.label = label or endpoint.model
    spec = _spec(endpoint, o)
    display = Display(quiet=o["quiet"])
    results = run_interruptible(lambda stop: run_load(spec, stop=stop, display=display), display)
    doc = load_doc(spec, results)
    out = Path(o["out"])
    path = write_run(out, doc, results)
    display.message(f"wrote {path}")
    if results and not o["no_plots"]:
        _plots([load_run(out)], out, display)
    out_console().print(steps_table(f"{endpoint.label} at {endpoint.url}", doc["steps"]))
    for note in doc["notes"]:
        display.message(f"note: {note}")
    if doc["interrupted"]:
        sys.exit(130)
    if not any(s["completed"] for s in doc["steps"]):
        raise click.ClickException("no request succeeded; errors: " + json.dumps([s["errors"] for s in doc["steps"]]))


@bench.command()
@click.option("--a", "url_a", required=True, metavar="URL_A", help="Endpoint A (the baseline).")
@click.option("--b", "url_b", required=True, metavar="URL_B", help="Endpoint B (ratios are B / A).")
@click.option("--model", help="Model name for both [default: each endpoint's first model].")
@click.option("--model-b", help="Model name for B when it differs.")
@click.option("--api-key", envvar="OPENAI_API_KEY", help="Bearer token for both [env: OPENAI_API_KEY].")
@click.option("--api-key-b", help="Bearer token for B when it differs.")
@click.option("--label-a", default="A", show_default=True)
@click.option("--label-b", default="B", show_default=True)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=6,
    show_default=True,
    help="Interleaved rounds (the intervals draw rounds: use several).",
)
@click.option("--confidence", type=click.FloatRange(0.5, 0.9999), default=0.95, show_default=True)
@click.option("--bootstrap", type=click.IntRange(min=100), default=2000, show_default=True, help="Resamples.")
@workload_options
def compare(
    url_a: str,
    url_b: str,
    model: str | None,
    model_b: str | None,
    api_key: str | None,
    api_key_b: str | None,
    label_a: str,
    label_b: str,
    rounds: int,
    confidence: float,
    bootstrap: int,
    **o: Any,
) -> None:
    """The same workload against two endpoints, in interleaved rounds; ratios B/A with confidence intervals.

    --duration (default 5s here) and --requests bound each step of each round. Writes OUT/compare.json, OUT/a/ and OUT/b/
    (results.json of each side, rounds pooled) and overlaid OUT/*.png.
    """
    from dataclasses import replace

    from .compare import CompareSettings, compare_docs, run_compare, saved_runs
    from .load import run_interruptible
    from .plots import plot_runs
    from .progress import Display, out_console, ratios_table, steps_table
    from .results import write_run

    if o["duration"] is None and o["max_requests"] is None:
        o["duration"] = 5.0
    spec_a = _spec(_endpoint(url_a, model, api_key, o["api"], label_a), o)
    end_b = _endpoint(url_b, model_b or model, api_key_b or api_key, o["api"], label_b)
    spec_b = replace(spec_a, endpoint=end_b)
    settings = CompareSettings(rounds, confidence, bootstrap, seed=o["seed"])
    display = Display(quiet=o["quiet"])
    measured = run_interruptible(
        lambda stop: run_compare(spec_a, spec_b, settings, stop=stop, display=display), display
    )
    doc, docs, pooled = compare_docs(spec_a, spec_b, settings, measured)
    out = Path(o["out"])
    out.mkdir(parents=True, exist_ok=True)
    for side in ("a", "b"):
        write_run(out / side, docs[side], pooled[side])
    (out / "compare.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    display.message(f"wrote {out / 'compare.json'}")
    if doc["steps"] and not o["no_plots"]:
        for p in plot_runs(saved_runs(docs, pooled), out):
            display.message(f"wrote {p}")
    console = out_console()
    for side, spec in (("a", spec_a), ("b", spec_b)):
        console.print(steps_table(f"{side.upper()}: {spec.endpoint.label} at {spec.endpoint.url}", docs[side]["steps"]))
    console.print(ratios_table(f"B / A with {confidence:.0%} intervals ({rounds} rounds)", doc["steps"]))
    if doc["interrupted"]:
        sys.exit(130)


@bench.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--label", "labels", multiple=True, help="A name per run, in order [default: each run's label].")
@click.option("--out", type=click.Path(file_okay=False), default="bench-report", show_default=True)
def report(runs: tuple[str, ...], labels: tuple[str, ...], out: str) -> None:
    """Overlay saved runs (folders written by `load` or `compare`) in one set of plots and tables."""
    from .progress import Display, out_console, ratios_table, steps_table
    from .results import load_run

    if labels and len(labels) != len(runs):
        raise click.UsageError("give one --label per run, or none")
    saved = []
    for i, folder in enumerate(runs):
        p = Path(folder)
        if (p / "compare.json").is_file() and not (p / "results.json").is_file():
            saved += [load_run(p / "a"), load_run(p / "b")]
            out_console().print(ratios_table(f"{p}: B / A", json.loads((p / "compare.json").read_text())["steps"]))
        else:
            try:
                saved.append(load_run(p, labels[i] if labels else None))
            except (OSError, ValueError) as exc:
                raise click.ClickException(str(exc)) from exc
    display = Display()
    for run in saved:
        out_console().print(steps_table(run.label, run.doc["steps"]))
    _plots(saved, Path(out), display)


bench.add_command(overhead)


def main() -> None:
    bench(prog_name="rayleigh bench")

"""Run vLLM's own server with the engine arguments Rayleigh renders for a spec, and check the engine.

Used by `scripts/gpu-check.sh` for the engine fields the CPU build cannot run (quantization,
tensor/pipeline parallelism): the spec goes through the same mapping as every replica
(`config.engine_kwargs_for`), is turned into `python -m vllm.entrypoints.openai.api_server` flags,
and the started engine is asked for its resolved configuration (vLLM's `/server_info`, enabled by
VLLM_SERVER_DEV_MODE=1) and for one completion.

    python -m rayleigh_serving.engine_check render model.source=hf://Qwen/Qwen2.5-0.5B-Instruct-AWQ \\
        model.quantization=awq model.dtype=float16        # one flag per line
    python -m rayleigh_serving.engine_check check --url http://127.0.0.1:8000 \\
        model_config.quantization~awq model_config.dtype=float16

`path=value` sets a spec field (camelCase, as in YAML; values are parsed as YAML scalars);
in `check`, `path=value` wants the engine config value to be `value` and `path~value` to contain it.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from rayleigh_api import API_VERSION, ModelDeployment
from rayleigh_api.errors import FieldErrors
from rayleigh_api.validation import SpecError, validate_document
from rayleigh_serving.config import engine_kwargs_for, resolve_source

NAME = "gpu-check"
# Defaults of every check: one GPU, a short context, room for the other process on the GPU.
BASE_SPEC: dict[str, Any] = {
    "model": {"maxModelLen": 2048},
    "engine": {"gpuMemoryUtilization": 0.5},
    "resources": {"gpus": 1},
}


def _scalar(raw: str) -> Any:
    """A YAML scalar (number, boolean, string); anything else (e.g. a Jinja template) stays text."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return raw if isinstance(value, (dict, list)) or value is None else value


def spec_from_sets(sets: list[str]) -> ModelDeployment:
    """A ModelDeployment from `path=value` pairs over BASE_SPEC (unknown fields are errors)."""
    spec: dict[str, Any] = json.loads(json.dumps(BASE_SPEC))
    for item in sets:
        path, sep, raw = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"expected spec.path=value, got {item!r}")
        node = spec
        keys = path.removeprefix("spec.").split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = _scalar(raw)
    # The same validation as `rayleigh validate` and the API server (schema and CEL rules).
    return validate_document(
        {"apiVersion": API_VERSION, "kind": "ModelDeployment", "metadata": {"name": NAME}, "spec": spec}
    )


def cli_args(kwargs: dict[str, Any]) -> list[str]:
    """vLLM engine kwargs as `vllm serve` flags."""
    out: list[str] = []
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            out.append(flag)
            out.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def server_args(md: ModelDeployment) -> list[str]:
    """Every flag of `python -m vllm.entrypoints.openai.api_server` for this spec (no host/port)."""
    source = resolve_source(md.spec.model.source, field="spec.model.source", local_base=Path.cwd())
    kwargs = engine_kwargs_for(md, local_base=Path.cwd())
    return ["--model", source.model_source, "--served-model-name", md.served_model_name(), *cli_args(kwargs)]


def lookup(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(f"the engine config has no {path!r} (stopped at {key!r})")
        node = node[key]
    return node


def check(url: str, expects: list[str], timeout: float = 120.0) -> list[str]:
    """Problems found: engine config values that differ from `expects`, or no completion."""
    with urllib.request.urlopen(f"{url}/server_info?config_format=json", timeout=timeout) as resp:
        config = json.loads(resp.read())["vllm_config"]
    problems = []
    for item in expects:
        contains = "~" in item and ("=" not in item or item.index("~") < item.index("="))
        path, _, want = item.partition("~" if contains else "=")
        try:
            got = lookup(config, path)
        except KeyError as e:
            problems.append(str(e))
            continue
        ok = want in str(got) if contains else str(got) == want
        if not ok:
            problems.append(f"{path} is {got!r}, expected {'to contain ' if contains else ''}{want!r}")
    body = json.dumps({"model": NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    req = urllib.request.Request(
        f"{url}/v1/completions", data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if not answer.get("usage", {}).get("completion_tokens"):
        problems.append(f"the completion generated no tokens: {answer}")
    else:
        print(f"completion: {answer['choices'][0]['text']!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rayleigh_serving.engine_check", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    render = sub.add_parser("render", help="print the vLLM server flags for a spec, one per line")
    render.add_argument("sets", nargs="+", metavar="path=value")
    chk = sub.add_parser("check", help="check a running engine's config and one completion")
    chk.add_argument("--url", required=True)
    chk.add_argument("expects", nargs="*", metavar="path=value|path~value")
    args = parser.parse_args(argv)
    if args.cmd == "render":
        try:
            print("\n".join(server_args(spec_from_sets(args.sets))))
        except (SpecError, FieldErrors) as e:
            print(f"invalid spec: {e}", file=sys.stderr)
            return 2
        return 0
    problems = check(args.url, args.expects)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

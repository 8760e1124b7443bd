"""Regenerate `vllm_args.json` (vLLM's engine and frontend argument names) from the installed vLLM.

Run after upgrading vLLM: `python -m rayleigh_serving.vllm_args`. The config module reads the JSON
file so that the operator image, which has no vLLM, can validate `spec.engine.extraArgs`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

PATH = Path(__file__).with_name("vllm_args.json")


def current() -> dict[str, object]:
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    return {
        "engine": sorted(f.name for f in dataclasses.fields(AsyncEngineArgs)),
        "frontend": sorted(f.name for f in dataclasses.fields(FrontendArgs)),
        "vllm_version": vllm.__version__,
    }


def main() -> None:
    PATH.write_text(json.dumps(current(), indent=1) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()

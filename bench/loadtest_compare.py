"""`rayleigh bench compare` of vLLM's own OpenAI server (A) and Rayleigh's serving app (B), one machine.

Starts both stacks the way bench/serving_overhead.py does (same model, same engine settings, served
model name "bench"), waits until both answer, runs `rayleigh bench compare` against them (both
running at once: the rounds interleave A and B), writes its output folder and stops both stacks.

  .venv/bin/python bench/loadtest_compare.py                          # tiny model, c=1,4,8, 6 rounds
  .venv/bin/python bench/loadtest_compare.py --out bench/results/loadtest-compare
  .venv/bin/python bench/loadtest_compare.py --serve                  # start both, print URLs, wait for Ctrl-C

Anything after `--` is passed to `rayleigh bench compare` (it overrides the defaults below).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / d) for d in ("api", "gateway", "serving", "operator", "loadtest")]
sys.path.insert(0, str(REPO))

from bench.serving_overhead import MODEL_NAME, Running, start_ray_stack, start_vllm  # noqa: E402

# The compare run: streaming chat, 128-token prompts (the model's tokenizer), 32 tokens per request (ignore_eos), a
# concurrency sweep of 1, 4 and 8; 6 interleaved rounds, each step of each round bounded by 4 s
# or 40 requests. About 3 minutes of measuring on this machine.
DEFAULT_ARGS = [
    "--concurrency", "1,4,8", "--rounds", "6", "--duration", "4s", "--requests", "40",
    "--prompt-tokens", "128", "--output-tokens", "32", "--ignore-eos", "--extra-body", '{"temperature": 0}',
    "--warmup", "3", "--timeout", "60s",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "medium"], default="tiny")
    ap.add_argument("--out", type=Path, default=Path("bench-compare"), help="the compare output folder")
    ap.add_argument("--serve", action="store_true", help="start both stacks, print their URLs, wait for Ctrl-C")
    ap.add_argument("compare_args", nargs=argparse.REMAINDER, help="-- then options for rayleigh bench compare")
    args = ap.parse_args()
    extra = [a for a in args.compare_args if a != "--"]

    from rayleigh_serving.tiny_model import ensure_tiny_model

    model_dir = ensure_tiny_model(REPO / ".cache" / "models" / f"{args.model}-qwen", size=args.model)
    logs = Path(tempfile.mkdtemp(prefix="rayleigh-bench-compare-"))
    print(f"model: {args.model} ({model_dir}); logs: {logs}", flush=True)
    stacks: list[Running] = []
    try:
        stacks.append(start_vllm(model_dir, logs / "vllm.log"))
        print(f"vLLM server: {stacks[-1].base_url} (ready in {stacks[-1].startup_s:.0f} s)", flush=True)
        stacks.append(start_ray_stack("rayleigh", model_dir, logs / "ray.log"))
        print(f"Rayleigh: {stacks[-1].base_url} (ready in {stacks[-1].startup_s:.0f} s)", flush=True)
        vllm, rayleigh = stacks
        if args.serve:
            print("serving; Ctrl-C stops both", flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return
        cmd = [
            "compare", "--a", vllm.base_url, "--label-a", "vLLM server", "--b", rayleigh.base_url,
            "--label-b", "Rayleigh", "--model", MODEL_NAME, "--tokenizer", str(model_dir), *DEFAULT_ARGS, *extra,
            "--out", str(args.out),
        ]  # fmt: skip
        print("rayleigh bench " + " ".join(cmd), flush=True)
        from rayleigh_loadtest.cli import bench

        start = time.monotonic()
        try:
            bench.main(args=cmd, prog_name="rayleigh bench", standalone_mode=False)
        finally:
            print(f"compare took {time.monotonic() - start:.0f} s", flush=True)
    finally:
        for running in reversed(stacks):
            running.stop()


if __name__ == "__main__":
    main()

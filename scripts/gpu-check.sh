#!/usr/bin/env bash
# Engine fields the CPU build cannot run, each run by a real vLLM engine on NVIDIA GPUs.
#
# For every case below: render the vLLM server flags from a ModelDeployment spec with Rayleigh's own
# mapping (python -m rayleigh_serving.engine_check render ...), start vLLM's OpenAI server with them
# (VLLM_SERVER_DEV_MODE=1 for its /server_info), check the engine's resolved configuration and one
# completion, stop the server. A summary table at the end; exit 1 if any case failed, 2 if this
# machine has no NVIDIA GPU. Cases needing more GPUs than the machine has are skipped, and say so.
#
# Needs: NVIDIA GPU(s), the CUDA vLLM build and the rayleigh packages (the replica-cuda image has
# both: docker run --gpus all rayleigh-replica-cuda scripts/gpu-check.sh), network access to the
# Hugging Face Hub (or the models in its cache). Environment: PYTHON (default python3),
# GPU_CHECK_TIMEOUT (seconds per case, default 900), GPU_CHECK_PORT (default 8765),
# GPU_CHECK_ONLY (a case name: run only that one).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TIMEOUT=${GPU_CHECK_TIMEOUT:-900}
PORT=${GPU_CHECK_PORT:-8765}
ONLY=${GPU_CHECK_ONLY:-}
QWEN=hf://Qwen/Qwen2.5-0.5B-Instruct

# name | GPUs | spec fields (path=value) | engine config to expect (path=value exact, path~value contains)
CASES=(
  "awq|1|model.source=${QWEN}-AWQ model.quantization=awq model.dtype=float16|model_config.quantization~awq model_config.dtype~float16"
  "gptq|1|model.source=${QWEN}-GPTQ-Int4 model.quantization=gptq model.dtype=float16|model_config.quantization~gptq model_config.dtype~float16"
  "fp8|1|model.source=${QWEN} model.quantization=fp8 model.dtype=bfloat16|model_config.quantization=fp8 model_config.dtype~bfloat16"
  "bitsandbytes|1|model.source=${QWEN} model.quantization=bitsandbytes model.dtype=bfloat16|model_config.quantization=bitsandbytes"
  "kv-fp8|1|model.source=${QWEN} engine.kvCacheDtype=fp8|cache_config.cache_dtype=fp8"
  "gpu-memory|1|model.source=${QWEN} engine.gpuMemoryUtilization=0.3|cache_config.gpu_memory_utilization=0.3"
  "tp2|2|model.source=${QWEN} engine.tensorParallelSize=2 resources.gpus=2|parallel_config.tensor_parallel_size=2"
  "pp2|2|model.source=${QWEN} engine.pipelineParallelSize=2 resources.gpus=2|parallel_config.pipeline_parallel_size=2"
)

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check.sh: nvidia-smi not found: this check needs NVIDIA GPUs and the CUDA build of vLLM" \
    "(run it in the replica-cuda image on a GPU node). Nothing was run." >&2
  exit 2
fi
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
if [[ ${GPUS} -lt 1 ]]; then
  echo "gpu-check.sh: nvidia-smi lists no GPU. Nothing was run." >&2
  exit 2
fi

LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
SERVER_PID=""
stop_server() {
  if [[ -n ${SERVER_PID} ]] && kill -0 "${SERVER_PID}" 2>/dev/null; then
    kill -TERM -- "-${SERVER_PID}" 2>/dev/null || true
    for _ in $(seq 1 30); do
      kill -0 "${SERVER_PID}" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-${SERVER_PID}" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# Run one case; prints a one-line detail and returns 0 (pass) or 1 (fail).
run_case() {
  local name=$1 sets=$2 expects=$3 log=$4
  local -a flags set_args expect_args
  read -r -a set_args <<<"${sets}"
  read -r -a expect_args <<<"${expects}"
  if ! mapfile -t flags < <("${PYTHON}" -m rayleigh_serving.engine_check render "${set_args[@]}" 2>>"${log}"); then
    echo "rendering the spec failed (see ${log})"
    return 1
  fi
  if [[ ${#flags[@]} -eq 0 ]]; then
    echo "rendering the spec gave no flags (see ${log})"
    return 1
  fi
  echo "+ vllm ${flags[*]}" >>"${log}"
  VLLM_SERVER_DEV_MODE=1 setsid "${PYTHON}" -m vllm.entrypoints.openai.api_server \
    --host 127.0.0.1 --port "${PORT}" "${flags[@]}" >>"${log}" 2>&1 &
  SERVER_PID=$!
  local deadline=$((SECONDS + TIMEOUT))
  until curl -fsS "http://127.0.0.1:${PORT}/health" >/dev/null 2>&1; do
    if ! kill -0 "${SERVER_PID}" 2>/dev/null; then
      echo "the engine exited before it was ready: $(grep -E 'Error|error' "${log}" | tail -n 1)"
      SERVER_PID=""
      return 1
    fi
    if ((SECONDS > deadline)); then
      echo "the engine was not ready after ${TIMEOUT} s (see ${log})"
      stop_server
      return 1
    fi
    sleep 2
  done
  local out rc=0
  out=$("${PYTHON}" -m rayleigh_serving.engine_check check --url "http://127.0.0.1:${PORT}" \
    "${expect_args[@]}" 2>&1) || rc=$?
  echo "${out}" >>"${log}"
  stop_server
  if [[ ${rc} -ne 0 ]]; then
    echo "$(grep '^FAIL' <<<"${out}" | head -n 3 | tr '\n' ' ')(see ${log})"
    return 1
  fi
  echo "${expects}"
}

declare -a ROWS=()
FAILED=0
for case in "${CASES[@]}"; do
  IFS='|' read -r name need sets expects <<<"${case}"
  if [[ -n ${ONLY} && ${ONLY} != "${name}" ]]; then
    continue
  fi
  if ((GPUS < need)); then
    ROWS+=("${name}|SKIP|0|needs ${need} GPUs, this machine has ${GPUS}")
    echo "== ${name}: skipped: needs ${need} GPUs, this machine has ${GPUS}"
    continue
  fi
  echo "== ${name}: ${sets}"
  start=${SECONDS}
  log="${LOG_DIR}/${name}.log"
  # Not in a subshell ($(...)): SERVER_PID must reach the EXIT trap.
  if run_case "${name}" "${sets}" "${expects}" "${log}" >"${LOG_DIR}/${name}.result"; then
    result=PASS
  else
    result=FAIL
    FAILED=1
  fi
  ROWS+=("${name}|${result}|$((SECONDS - start))|$(tr '\n' ' ' <"${LOG_DIR}/${name}.result")")
  echo "   ${ROWS[-1]}"
done

echo
printf '%-14s %-5s %6s  %s\n' case result secs detail
for row in "${ROWS[@]}"; do
  IFS='|' read -r name result secs detail <<<"${row}"
  printf '%-14s %-5s %6s  %s\n' "${name}" "${result}" "${secs}" "${detail}"
done
echo "logs: ${LOG_DIR}"
exit "${FAILED}"

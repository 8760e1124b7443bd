"""A second Serve application on the shared Ray head with every engine field the CPU build runs set
to a non-default value, deployed through Rayleigh's own path (ModelDeployment -> build_serve_config
-> PUT /api/serve/applications/), plus the helpers its tests read the engine with.

One engine start for all of test_engine_fields.py. The fields' values are chosen so that each one's
effect can be told apart from the others' (see each test).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rayleigh_api import ModelDeployment
from rayleigh_serving.config import build_serve_config
from rayleigh_serving.local import http_json
from tests.plugins.common import REPO_ROOT
from tests.plugins.serving_stack import ServingStack

APP = "fields"
PREFIX = "/fields"
MODEL = "tiny-fields"
# The tiny model's copy "trained" on 512 positions; ropeScaling factor 2 gives the engine 1024.
POSITIONS = 512
ROPE_FACTOR = 2.0
MAX_NUM_SEQS = 2
MAX_NUM_BATCHED_TOKENS = 64
# An explicit KV cache size (extraArgs --kv-cache-memory-bytes), so the block count is exact.
KV_CACHE_BYTES = 64 * 1024 * 1024
CHAT_TEMPLATE = (
    "{% for m in messages %}[[rayleigh]] {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[[reply]]{% endif %}"
)


def cpu_has_avx512() -> bool:
    """vLLM's CPU backend stores an fp8 KV cache only on x86 with AVX-512 or AMX
    (vllm/v1/attention/backends/cpu_attn.py `_get_attn_isa`)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512f" in flags or " amx_tile" in flags


KV_CACHE_DTYPE = "fp8" if cpu_has_avx512() else "auto"


def spec(model_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "serving.rayleigh.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": APP},
        "spec": {
            "model": {
                "source": f"file://{model_dir}",
                "servedModelName": MODEL,
                "dtype": "bfloat16",
                # No maxModelLen: the engine derives it from the model and the RoPE factor.
                "ropeScaling": {"type": "yarn", "factor": ROPE_FACTOR, "originalMaxPositionEmbeddings": POSITIONS},
                "chatTemplate": CHAT_TEMPLATE,
            },
            "engine": {
                "gpuMemoryUtilization": 0.2,
                "kvCacheDtype": KV_CACHE_DTYPE,
                "enablePrefixCaching": False,
                "maxNumSeqs": MAX_NUM_SEQS,
                "maxNumBatchedTokens": MAX_NUM_BATCHED_TOKENS,
                "extraArgs": [f"--kv-cache-memory-bytes={KV_CACHE_BYTES}"],
            },
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
            "replicas": 1,
        },
    }


@dataclass
class FieldsApp:
    base_url: str  # http://127.0.0.1:PORT/fields
    model: str
    stack: ServingStack
    md: ModelDeployment


def _put(stack: ServingStack, apps: list[dict[str, Any]]) -> None:
    port = int(urllib.parse.urlsplit(stack.base_url).port or 80)
    body = {"http_options": {"host": "127.0.0.1", "port": port}, "applications": apps}
    http_json("PUT", f"{stack.dashboard_url}/api/serve/applications/", body, timeout=60)


def _status(stack: ServingStack) -> dict[str, Any]:
    data = http_json("GET", f"{stack.dashboard_url}/api/serve/applications/", timeout=10) or {}
    apps: dict[str, Any] = data.get("applications") or {}
    return apps


@contextmanager
def deployed(stack: ServingStack, model_dir: Path, timeout: float = 480.0) -> Iterator[FieldsApp]:
    """Deploy the fields app next to the stack's own (kept: the PUT is declarative), remove it after."""
    md = ModelDeployment.model_validate(spec(model_dir))
    config = build_serve_config(md, route_prefix=PREFIX, app_name=APP, local_base=REPO_ROOT, hf_hub_offline=True)
    app = config["applications"][0]
    # Observation only: vLLM's development endpoints include GET /server_info, the engine's own
    # resolved configuration (VllmConfig) as JSON. It changes nothing the engine does.
    env = app["args"]["llm_config"].setdefault("runtime_env", {}).setdefault("env_vars", {})
    env["VLLM_SERVER_DEV_MODE"] = "1"
    _put(stack, [*stack.serve_config["applications"], app])
    try:
        deadline = time.monotonic() + timeout
        while True:
            info = _status(stack).get(APP) or {}
            status = info.get("status")
            if status == "RUNNING":
                break
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise AssertionError(f"the fields app is {status}: {info.get('message')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the fields app is not RUNNING after {timeout:.0f} s: {status}")
            time.sleep(0.5)
        yield FieldsApp(f"{stack.base_url}{PREFIX}", MODEL, stack, md)
    finally:
        _put(stack, list(stack.serve_config["applications"]))
        deadline = time.monotonic() + 120
        while APP in _status(stack) and time.monotonic() < deadline:
            time.sleep(0.5)


def post(url: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """POST JSON; (status, JSON body) also for HTTP errors."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return e.code, {"text": raw.decode(errors="replace")}


def get(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


Sample = tuple[str, dict[str, str], float]


def scrape(stack: ServingStack) -> list[Sample]:
    """Every sample on Ray's metrics export, from one scrape: (name, labels, value)."""
    with urllib.request.urlopen(stack.metrics_url, timeout=30) as resp:
        text = resp.read().decode()
    return [(s.name, dict(s.labels), float(s.value)) for f in text_string_to_metric_families(text) for s in f.samples]


def total(scraped: list[Sample], name: str, model: str) -> float:
    """Sum of metric `name` over the replicas of one served model (vLLM's model_name label)."""
    return sum(v for n, labels, v in scraped if n == name and labels.get("model_name") == model)


def buckets(scraped: list[Sample], name: str, model: str) -> dict[float, float]:
    """Cumulative histogram counts by upper bound `le` (summed over replicas)."""
    out: dict[float, float] = {}
    for n, labels, value in scraped:
        if n == f"{name}_bucket" and labels.get("model_name") == model:
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def replica_ids(stack: ServingStack, app: str) -> set[str]:
    """Serve's replica ids of an application (the ReplicaId label of its metrics)."""
    deployments = (_status(stack).get(app) or {}).get("deployments") or {}
    return {str(r["replica_id"]) for d in deployments.values() for r in d.get("replicas") or []}


def cache_config_info(stack: ServingStack, app: str) -> dict[str, str]:
    """vLLM's cache_config_info labels of the app's engine (this metric has no model_name label)."""
    ids = replica_ids(stack, app)
    for n, labels, _ in scrape(stack):
        if n == "ray_vllm_cache_config_info" and labels.get("ReplicaId") in ids:
            return labels
    return {}


def long_prompt(tokens: int) -> str:
    """Text of roughly `tokens` tokens for the tiny tokenizer (each word is about one token)."""
    words = [
        "the",
        "model",
        "serve",
        "request",
        "time",
        "and",
        "of",
        "to",
        "in",
        "is",
        "it",
        "that",
        "for",
        "on",
        "with",
        "as",
        "was",
        "by",
        "at",
        "be",
        "this",
        "from",
    ]
    return " ".join(words[i % len(words)] for i in range(tokens))

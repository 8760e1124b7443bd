"""Session fixture `serving_stack`: real Ray + vLLM (CPU) + the tiny model, started once.

One vLLM engine start for the whole test session: the tiny Qwen2 model and one LoRA adapter
(`tiny-qwen-lora`) are one Serve application (`tiny`, route `/`) on a private Ray head started
as our own process group on free loopback ports. Everything is stopped at session end.

Other components' tests may deploy more applications to the same head through
`stack.dashboard_url` (`PUT /api/serve/applications/`). That call is declarative over *all*
applications: include `stack.serve_config["applications"]` in what you PUT or the tiny app is
removed (and never call `DELETE /api/serve/applications/`: it removes every application).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT

TINY_MODEL_DIR = REPO_ROOT / ".cache" / "models" / "tiny-qwen"
TINY_LORA_DIR = REPO_ROOT / ".cache" / "models" / "tiny-qwen-lora"
ADAPTER_NAME = "tiny-qwen-lora"
APP_NAME = "tiny"


@dataclass
class ServingStack:
    base_url: str  # http://127.0.0.1:PORT: /v1/models, /v1/chat/completions, /v1/completions, /health
    model: str
    adapters: list[str]
    metrics_url: str  # Ray's Prometheus export (ray_vllm_*, ray_serve_*, ray_rayleigh_serving_*)
    ray_address: str
    dashboard_url: str
    app_name: str
    serve_config: dict[str, Any]
    model_dir: Path
    adapter_dirs: dict[str, Path]
    ray_log: Path
    startup_seconds: float
    timings: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Qwen2 model (and its LoRA adapter), made once if missing."""
    from rayleigh_serving.tiny_model import ensure_tiny_lora, ensure_tiny_model

    ensure_tiny_model(TINY_MODEL_DIR)
    ensure_tiny_lora(TINY_MODEL_DIR, TINY_LORA_DIR)
    return TINY_MODEL_DIR


@pytest.fixture(scope="session")
def serving_stack(tiny_model_dir: Path) -> Iterator[ServingStack]:
    from rayleigh_api import ModelDeployment
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_serving.config import build_serve_config
    from rayleigh_serving.local import LocalRay, wait_for_answer

    md = load_model_deployment(EXAMPLES_DIR / "tiny.yaml")
    doc = md.model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["adapters"] = [{"name": ADAPTER_NAME, "source": f"file://{TINY_LORA_DIR}"}]
    md = ModelDeployment.model_validate(doc)
    config = build_serve_config(md, local_base=REPO_ROOT, app_name=APP_NAME, hf_hub_offline=True)

    log_dir = Path(tempfile.mkdtemp(prefix="rayleigh-serving-test-"))
    ray = LocalRay(
        log=log_dir / "ray.log",
        # Room for three LLM replicas (2 logical CPUs each): this app, the operator tests' app and
        # their deliberately broken one, which must reach its failure rather than wait for CPUs.
        num_cpus=6,
        # Export metrics every second so tests see them quickly.
        # One constructor retry: the operator tests deploy a deliberately broken app to this head,
        # and each retry re-imports vLLM (about 40 s).
        env={
            "RAY_metrics_report_interval_ms": "1000",
            "HF_HUB_OFFLINE": "1",
            "RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1",
        },
    )
    start = time.monotonic()
    try:
        ray.start()
        ray_up = time.monotonic() - start
        ray.deploy(config)
        ray.wait_running(APP_NAME, timeout=480)
        wait_for_answer(ray.base_url, md.served_model_name(), timeout=120)
        stack = ServingStack(
            base_url=ray.base_url,
            model=md.served_model_name(),
            adapters=[ADAPTER_NAME],
            metrics_url=ray.metrics_url,
            ray_address=ray.address,
            dashboard_url=ray.dashboard_url,
            app_name=APP_NAME,
            serve_config=config,
            model_dir=tiny_model_dir,
            adapter_dirs={ADAPTER_NAME: TINY_LORA_DIR},
            ray_log=ray.log or log_dir,
            startup_seconds=time.monotonic() - start,
            timings={"ray_start_s": ray_up},
        )
        print(f"\nserving_stack: ready in {stack.startup_seconds:.0f} s at {stack.base_url} (ray pid {os.getpid()})")
        yield stack
    finally:
        ray.stop()

"""Every engine field the CPU build can run, set in a ModelDeployment and run by a real vLLM engine
through Rayleigh's own path (spec -> rayleigh_serving config -> Ray Serve app on the shared head).

Each test shows the field's effect, not only that vLLM accepted it. One engine (the `fields` app,
tests/serving/engine_fields_app.py) carries them all; the stack's default app (`tiny`: maxModelLen
512, prefix caching on, float32) is the comparison where one is needed. Fields the CPU build cannot
run (quantization, tensor/pipeline parallelism) are checked by scripts/gpu-check.sh on a GPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.plugins.kube import wait_for
from tests.plugins.serving_stack import ServingStack
from tests.serving import engine_fields_app as fa
from tests.serving.model_variants import short_context_copy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CHAT = [{"role": "user", "content": "Tell me about the sky"}]


@pytest.fixture(scope="module")
def app(serving_stack: ServingStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[fa.FieldsApp]:
    model_dir = short_context_copy(serving_stack.model_dir, tmp_path_factory.mktemp("m512"), fa.POSITIONS)
    with fa.deployed(serving_stack, model_dir) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def engine_config(app: fa.FieldsApp) -> dict[str, Any]:
    """The engine's own resolved configuration (vLLM's /server_info, VllmConfig as JSON)."""
    info: dict[str, Any] = fa.get(f"{app.base_url}/server_info?config_format=json")
    config: dict[str, Any] = info["vllm_config"]
    return config


def cache_config_info(app: fa.FieldsApp) -> dict[str, str]:
    found: dict[str, str] = wait_for(
        lambda: fa.cache_config_info(app.stack, fa.APP), 60, what="vllm:cache_config_info of the fields app"
    )
    return found


def prompt_ids(app: fa.FieldsApp, n: int) -> list[int]:
    """A prompt of exactly `n` token ids (the completions API takes ids as well as text)."""
    status, body = fa.post(
        f"{app.base_url}/tokenize", {"model": app.model, "prompt": fa.long_prompt(n), "add_special_tokens": False}
    )
    assert status == 200, body
    ids: list[int] = body["tokens"][:n]
    assert len(ids) == n
    return ids


# --- model.ropeScaling -------------------------------------------------------------------------


def test_rope_scaling_doubles_the_context_the_engine_serves(app: fa.FieldsApp) -> None:
    """The model was made with 512 positions; yarn factor 2 gives the engine 1024."""
    models = fa.get(f"{app.base_url}/v1/models")["data"]
    assert [m["max_model_len"] for m in models] == [int(fa.POSITIONS * fa.ROPE_FACTOR)]


def test_rope_scaling_serves_a_prompt_the_default_app_refuses(app: fa.FieldsApp, serving_stack: ServingStack) -> None:
    prompt = prompt_ids(app, 900)
    refused, body = fa.post(
        f"{serving_stack.base_url}/v1/completions", {"model": serving_stack.model, "prompt": prompt, "max_tokens": 4}
    )
    assert refused == 400, body
    assert "512" in str(body)
    served, body = fa.post(f"{app.base_url}/v1/completions", {"model": app.model, "prompt": prompt, "max_tokens": 4})
    assert served == 200, body
    assert body["usage"]["prompt_tokens"] == 900


def test_rope_scaling_reaches_the_engine_as_a_merge_into_the_models_config(engine_config: dict[str, Any]) -> None:
    """The replica hands vLLM a merging override (hf_overrides.py), so the checkpoint's rope_theta
    stays (the merge itself: tests/serving/test_rope_overrides.py)."""
    assert engine_config["model_config"]["hf_overrides"] == {
        "overrides": {
            "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 512},
            "max_position_embeddings": 1024,
        }
    }


# --- engine.maxNumSeqs ------------------------------------------------------------------------


def test_max_num_seqs_caps_running_requests(app: fa.FieldsApp) -> None:
    """Six concurrent requests: the engine runs two, the others wait (vLLM's scheduler gauges)."""
    errors: list[str] = []

    def one() -> None:
        body = {"model": app.model, "prompt": "the sky", "max_tokens": 900, "ignore_eos": True}
        try:
            r = httpx.post(f"{app.base_url}/v1/completions", json=body, timeout=600)
            if r.status_code != 200:
                errors.append(r.text)
        except httpx.HTTPError as e:
            errors.append(repr(e))

    seen: list[tuple[float, float]] = []

    def full_and_queued() -> bool:
        scraped = fa.scrape(app.stack)  # both gauges from one scrape
        running = fa.total(scraped, "ray_vllm_num_requests_running", app.model)
        waiting = fa.total(scraped, "ray_vllm_num_requests_waiting", app.model)
        seen.append((running, waiting))
        return running == fa.MAX_NUM_SEQS and waiting >= 1

    # Ray exports the engine's gauges every few seconds, and late in the suite one scrape of the
    # shared head's metrics can take longer than six requests take to finish. So the load is kept
    # up (six senders, each sending again as its request ends, at most 10 each) until one scrape
    # sees the engine full with a queue; what is asserted is what was seen, never a duration.
    stop = threading.Event()

    def sender() -> None:
        for _ in range(10):
            if stop.is_set():
                return
            one()

    threads = [threading.Thread(target=sender) for _ in range(6)]
    for t in threads:
        t.start()
    observed = False
    try:
        while any(t.is_alive() for t in threads) and not observed:
            observed = full_and_queued()
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(600)
    assert not errors, errors[:2]
    assert observed, f"never saw {fa.MAX_NUM_SEQS} running with requests waiting: {seen[-20:]}"
    assert max(r for r, _ in seen) <= fa.MAX_NUM_SEQS, seen


# --- engine.maxNumBatchedTokens ---------------------------------------------------------------


def test_max_num_batched_tokens_is_the_engines_step_budget(app: fa.FieldsApp, engine_config: dict[str, Any]) -> None:
    """A 64-token step budget, with chunked prefill, still serves a 900-token prompt (in 15 steps).

    (vLLM exports no per-step token count: vllm:iteration_tokens_total counts a chunked prompt once,
    when its first token comes out.)"""
    scheduler = engine_config["scheduler_config"]
    assert scheduler["max_num_batched_tokens"] == fa.MAX_NUM_BATCHED_TOKENS
    assert scheduler["enable_chunked_prefill"] is True
    status, body = fa.post(
        f"{app.base_url}/v1/completions", {"model": app.model, "prompt": prompt_ids(app, 900), "max_tokens": 1}
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == 900


# --- model.chatTemplate -----------------------------------------------------------------------


def test_chat_template_renders_the_prompt_the_engine_sees(app: fa.FieldsApp, serving_stack: ServingStack) -> None:
    expected = "[[rayleigh]] user: Tell me about the sky\n[[reply]]"
    status, rendered = fa.post(f"{app.base_url}/tokenize", {"model": app.model, "messages": CHAT})
    assert status == 200, rendered
    status, direct = fa.post(
        f"{app.base_url}/tokenize", {"model": app.model, "prompt": expected, "add_special_tokens": False}
    )
    assert status == 200, direct
    assert rendered["tokens"] == direct["tokens"]
    status, chat = fa.post(
        f"{app.base_url}/v1/chat/completions", {"model": app.model, "messages": CHAT, "max_tokens": 1}
    )
    assert status == 200, chat
    assert chat["usage"]["prompt_tokens"] == direct["count"]
    # The default app (the tokenizer's ChatML template) sees another prompt for the same messages.
    status, default = fa.post(f"{serving_stack.base_url}/tokenize", {"model": serving_stack.model, "messages": CHAT})
    assert status == 200, default
    assert default["tokens"] != rendered["tokens"]


# --- engine.enablePrefixCaching ---------------------------------------------------------------


def test_prefix_caching_off_finds_no_cached_prefix(app: fa.FieldsApp, serving_stack: ServingStack) -> None:
    """The same 300-token prompt twice: the default app (caching on) hits its cache, this one never."""
    prompt = prompt_ids(app, 300)
    hits, prompts = "ray_vllm_prefix_cache_hits_total", "ray_vllm_prompt_tokens_total"
    before = fa.scrape(serving_stack)
    default_hits = fa.total(before, hits, serving_stack.model)
    fields_prompts = fa.total(before, prompts, app.model)
    for base, model in ((app.base_url, app.model), (serving_stack.base_url, serving_stack.model)):
        for _ in range(2):
            status, body = fa.post(f"{base}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 1})
            assert status == 200, body

    def exported() -> list[fa.Sample] | None:
        now = fa.scrape(serving_stack)
        # 300 tokens: 2 full blocks of 128 cached by the first request, found by the second.
        hit = fa.total(now, hits, serving_stack.model) - default_hits >= 256
        return now if hit and fa.total(now, prompts, app.model) - fields_prompts >= 600 else None

    after = wait_for(exported, 60, what="both apps' requests in the metrics")
    assert fa.total(after, hits, app.model) == 0
    assert cache_config_info(app)["enable_prefix_caching"] == "False"


# --- engine.kvCacheDtype ----------------------------------------------------------------------


@pytest.mark.skipif(fa.KV_CACHE_DTYPE != "fp8", reason="fp8 KV cache on vLLM's CPU backend needs AVX-512 or AMX")
def test_kv_cache_dtype_fp8_stores_one_byte_per_value(app: fa.FieldsApp) -> None:
    """64 MiB of KV cache hold 4x the blocks float32 would (tiny model: 2 layers x 1 KV head x 64)."""
    info = cache_config_info(app)
    assert info["cache_dtype"] == "fp8"
    block_bytes = int(info["block_size"]) * 2 * 2 * 1 * 64 * 1  # tokens x (K,V) x layers x heads x dim x 1 B
    assert int(info["num_gpu_blocks"]) == fa.KV_CACHE_BYTES // block_bytes


# --- model.dtype ------------------------------------------------------------------------------


def test_dtype_is_the_engines_compute_dtype(engine_config: dict[str, Any]) -> None:
    assert engine_config["model_config"]["dtype"] == "torch.bfloat16"

"""Locust load test for an OpenAI-compatible endpoint, for teams that already run Locust.

The secondary path: `rayleigh bench load` (docs/BENCH.md) is the primary one, with percentiles,
goodput, plots and comparisons. Locust's own request statistics time an HTTP request up to its
response headers, which for a streamed completion says nothing about tokens, so this file
reports what an LLM endpoint is judged by as Locust custom events (`events.request.fire`):

  LLM  TTFT   time to the first streamed token event (ms)
  LLM  TPOT   the request's mean inter-token latency: (end - first token) / (tokens - 1) (ms)
  LLM  E2E    the whole request (ms); "size" is the output tokens (the server's usage)

Failures (HTTP errors, a stream cut short) are reported on E2E with the reason.

  pip install locust
  locust -f bench/locustfile.py --host http://127.0.0.1:8000 --model tiny \\
      --headless -u 16 -r 4 --run-time 1m --max-tokens 64 --prompt-words 128

Options (besides Locust's): --model, --api-key (or OPENAI_API_KEY), --max-tokens, --prompt-words,
--extra-body JSON (merged into each request, e.g. '{"ignore_eos": true}').
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

from locust import HttpUser, events, task

WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was", "at", "by", "be", "this", "are", "from", "or", "have", "an", "not", "they", "which", "you",
)  # fmt: skip


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--model", default="", help="model name to send")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="bearer token")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--prompt-words", type=int, default=128, help="prompt length in words (about tokens)")
    parser.add_argument("--extra-body", default="{}", help="JSON object merged into each request body")


def _fire(user: HttpUser, name: str, ms: float, size: int = 0, exc: Exception | None = None) -> None:
    user.environment.events.request.fire(
        request_type="LLM", name=name, response_time=ms, response_length=size, exception=exc, context={}
    )


class ChatUser(HttpUser):
    """Each user sends streamed chat completions back to back (closed loop)."""

    @task
    def chat(self) -> None:
        opts = self.environment.parsed_options
        words = [random.choice(WORDS) for _ in range(opts.prompt_words)]
        body: dict[str, Any] = {
            "model": opts.model,
            "messages": [{"role": "user", "content": " ".join(words)}],
            "max_tokens": opts.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **json.loads(opts.extra_body),
        }
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        start = time.perf_counter()
        first: float | None = None
        events_seen = 0
        tokens = 0
        done = False
        with self.client.post(
            "/v1/chat/completions", json=body, headers=headers, stream=True, catch_response=True, name="chat headers"
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                _fire(self, "E2E", (time.perf_counter() - start) * 1e3, 0, RuntimeError(f"HTTP {resp.status_code}"))
                return
            try:
                for line in resp.iter_lines():
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    obj = json.loads(payload)
                    if obj.get("usage"):
                        tokens = int(obj["usage"].get("completion_tokens") or 0)
                    for choice in obj.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if not delta.get("content") and ("role" in delta or choice.get("finish_reason")):
                            continue  # the role announcement or a bare end marker: not a token
                        events_seen += 1
                        if first is None:
                            first = time.perf_counter()
            except Exception as exc:  # a stream cut short
                resp.failure(exc)
                _fire(self, "E2E", (time.perf_counter() - start) * 1e3, 0, exc)
                return
            resp.success()
        end = time.perf_counter()
        tokens = tokens or events_seen
        if not done or first is None:
            _fire(self, "E2E", (end - start) * 1e3, tokens, RuntimeError("stream ended without [DONE]"))
            return
        _fire(self, "TTFT", (first - start) * 1e3)
        if tokens > 1:
            _fire(self, "TPOT", (end - first) * 1e3 / (tokens - 1))
        _fire(self, "E2E", (end - start) * 1e3, tokens)

"""The Serve ingress `rayleigh up` and the shared test stack run (rayleigh_serving.ingress.DEFAULT_INGRESS):
streamed chat end to end through it, and the process answering the Serve port is the one it names."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from rayleigh_serving.ingress import DEFAULT_INGRESS, default_ingress
from tests.plugins.serving_stack import ServingStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _listener(port: int) -> psutil.Process:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise AssertionError(f"nothing of ours listens on port {port}")


def test_streamed_chat_goes_through_the_default_ingress(serving_stack: ServingStack) -> None:
    assert default_ingress() == DEFAULT_INGRESS, "the test stack runs the default ingress"
    body = {
        "model": serving_stack.model,
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 8,
        "stream": True,
        "ignore_eos": True,
    }
    events = []
    with httpx.stream("POST", f"{serving_stack.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len(events) >= 1 + 8  # the role chunk (or first token) and one event per token, then [DONE]
    port = urlsplit(serving_stack.base_url).port
    assert port is not None
    name = _listener(port).name()
    # haproxy: Ray's HAProxy process itself holds the Serve port; proxy: Ray Serve's proxy actor.
    assert ("haproxy" in name) == (DEFAULT_INGRESS == "haproxy"), name

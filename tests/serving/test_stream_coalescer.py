"""Rayleigh's SSE coalescer: first chunk at once, later chunks merged, nothing lost or reordered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")

from rayleigh_serving.middleware import StreamCoalescer


def body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def run(messages: list[dict[str, Any]], interval_s: float) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    coalescer = StreamCoalescer(send, interval_s)
    for m in messages:
        await coalescer(m)
    await asyncio.sleep(0)
    return sent


async def test_first_chunk_is_sent_immediately() -> None:
    sent = await run([{"type": "http.response.start", "status": 200, "headers": []}, body(b"data: 1\n\n")], 60)
    assert [m.get("body") for m in sent] == [None, b"data: 1\n\n"]


async def test_later_chunks_are_merged_until_the_last_message() -> None:
    chunks = [body(b"data: 1\n\n"), body(b"data: 2\n\n"), body(b"data: 3\n\n"), body(b"data: [DONE]\n\n", False)]
    sent = await run(chunks, 60)
    assert [m["body"] for m in sent] == [b"data: 1\n\n", b"data: 2\n\ndata: 3\n\ndata: [DONE]\n\n"]
    assert sent[-1]["more_body"] is False


async def test_held_chunks_are_flushed_after_the_interval_without_new_messages() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    coalescer = StreamCoalescer(send, 0.01)
    await coalescer(body(b"a"))
    await coalescer(body(b"b"))
    for _ in range(200):  # bounded wait for the timer, not a timing assertion
        if len(sent) == 2:
            break
        await asyncio.sleep(0.01)
    assert [m["body"] for m in sent] == [b"a", b"b"]


async def test_zero_interval_forwards_every_chunk() -> None:
    sent = await run([body(b"a"), body(b"b"), body(b"", False)], 0)
    assert [m["body"] for m in sent] == [b"a", b"b", b""]

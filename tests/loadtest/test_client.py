"""One request, measured: token counts, TTFT, inter-token gaps, errors, SSE framing.

Against the dev upstream (a process answering in microseconds, see conftest.py) and, for the
framing cases the dev upstream never produces, a few lines of aiohttp server in the test's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from rayleigh_loadtest.client import Client, Endpoint, Record, RequestOptions, make_session
from rayleigh_loadtest.workload import Prompt, Tokenizer
from tests.plugins.common import REPO_ROOT, free_port

PROMPT = Prompt([{"role": "user", "content": "hello there"}], "hello there", 2, 8)
TINY_TOKENIZER = REPO_ROOT / ".cache" / "models" / "tiny-qwen"


async def send(
    url: str,
    *,
    api: str = "chat",
    stream: bool = True,
    body: dict[str, object] | None = None,
    tokenizer: Tokenizer | None = None,
    timeout_s: float = 30,
) -> Record:
    async with make_session(4, timeout_s) as session:
        client = Client(
            session,
            Endpoint(url, "dev", "sk-test", api),
            RequestOptions(stream, False, body or {}, timeout_s),
            tokenizer,
        )
        return await client.send(PROMPT, time.perf_counter())


@pytest.mark.parametrize("api", ["chat", "completions"])
async def test_streamed_token_count_is_the_servers_usage(devupstream: str, api: str) -> None:
    rec = await send(devupstream, api=api, body={"rayleigh_test": {"chunks": 12}})
    assert rec.ok and rec.status == 200
    assert rec.tokens_source == "usage"
    assert rec.output_tokens == 12  # the dev upstream's usage.completion_tokens
    assert rec.prompt_tokens == 7
    assert len(rec.itl) == 11  # one gap between each pair of the 12 token events
    assert rec.ttft is not None and 0 < rec.ttft <= rec.e2e
    # The dev upstream writes every chunk at once: they usually arrive in one read, and then the
    # client saw no token pace, so TPOT is undefined rather than a near-zero artefact.
    assert 1 <= rec.token_reads <= 12
    assert (rec.tpot is None) == (rec.token_reads == 1)


async def test_tpot_is_defined_when_tokens_arrive_in_several_reads(devupstream: str) -> None:
    rec = await send(devupstream, body={"rayleigh_test": {"chunks": 5, "delay": 0.02}})
    assert rec.ok and rec.output_tokens == 5
    assert rec.token_reads == 5
    assert rec.ttft is not None and rec.tpot is not None
    assert rec.tpot == pytest.approx((rec.e2e - rec.ttft) / 4)
    assert 0.015 <= rec.tpot <= rec.e2e / 2
    assert rec.to_json()["tpot_ms"] == pytest.approx(rec.tpot * 1e3, abs=1e-3)


async def test_without_usage_tokens_are_counted_from_the_stream(devupstream: str) -> None:
    rec = await send(devupstream, body={"rayleigh_test": {"chunks": 6}, "stream_options": {"include_usage": False}})
    assert rec.ok
    assert (rec.output_tokens, rec.tokens_source) == (6, "chunks")


@pytest.mark.skipif(not (TINY_TOKENIZER / "tokenizer.json").is_file(), reason="the tiny model is not made here")
async def test_without_usage_the_tokenizer_counts_the_text(devupstream: str) -> None:
    tok = Tokenizer(str(TINY_TOKENIZER))
    rec = await send(
        devupstream, body={"rayleigh_test": {"chunks": 3}, "stream_options": {"include_usage": False}}, tokenizer=tok
    )
    assert rec.tokens_source == "tokenizer"
    assert rec.output_tokens == tok.count("t0 t1 t2 ")  # what the dev upstream streamed


async def test_not_streamed_ttft_is_the_whole_response(devupstream: str) -> None:
    rec = await send(devupstream, stream=False)
    assert rec.ok and rec.tokens_source == "usage" and rec.output_tokens == 5
    assert rec.ttft == pytest.approx(rec.e2e) and rec.itl == []


@pytest.mark.parametrize("status", [400, 429, 503])
async def test_http_errors_are_recorded_by_status(devupstream: str, status: int) -> None:
    rec = await send(devupstream, body={"rayleigh_test": {"status": status}})
    assert (rec.ok, rec.status, rec.error, rec.output_tokens) == (False, status, str(status), 0)


async def test_a_stream_cut_short_is_an_error(devupstream: str) -> None:
    rec = await send(devupstream, body={"rayleigh_test": {"chunks": 8, "fail_after": 3}})
    assert not rec.ok
    assert rec.error in ("incomplete_stream", "connection_error")


async def test_connection_refused_is_a_connection_error() -> None:
    rec = await send(f"http://127.0.0.1:{free_port()}")
    assert (rec.ok, rec.status, rec.error) == (False, 0, "connection_error")


async def test_a_request_past_its_timeout_is_a_timeout(devupstream: str) -> None:
    rec = await send(devupstream, body={"rayleigh_test": {"chunks": 3, "delay": 2}}, timeout_s=0.3)
    assert (rec.ok, rec.error) == (False, "timeout")


# --- framing the dev upstream does not produce -------------------------------------------------------

Handler = Callable[[web.StreamResponse], Awaitable[None]]


@pytest.fixture
async def sse_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(write: Handler) -> str:
        async def handle(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await write(resp)
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for r in runners:
        await r.cleanup()


ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\r\n\r\n'


def token(text: str, finish: str | None = None) -> bytes:
    fin = "null" if finish is None else f'"{finish}"'
    return (
        b'data: {"choices":[{"index":0,"delta":{"content":"'
        + text.encode()
        + b'"},"finish_reason":'
        + fin.encode()
        + b"}]}"
    )


async def test_events_split_at_any_byte_and_crlf_framing(sse_server: Callable[[Handler], Awaitable[str]]) -> None:
    """A role announcement first, CRLF line ends, events cut mid-JSON, an empty-text token, usage last."""
    stream = (
        ROLE
        + token("a")
        + b"\r\n\r\n"
        + token("")  # a token that decodes to no text is still a token
        + b"\r\n\r\n"
        + token("b", "length")
        + b"\r\n\r\n"
        + b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}\r\n\r\n'
        + b"data: [DONE]\r\n\r\n"
    )

    async def write(resp: web.StreamResponse) -> None:
        for i in range(0, len(stream), 7):
            await resp.write(stream[i : i + 7])
            await asyncio.sleep(0.002)

    rec = await send(await sse_server(write))
    assert rec.ok, rec.error
    assert (rec.output_tokens, rec.tokens_source, rec.prompt_tokens) == (3, "usage", 3)
    assert len(rec.itl) == 2  # three token events; the role announcement is not one
    assert rec.ttft is not None and rec.ttft <= rec.e2e


async def test_a_bare_finish_event_is_not_a_token(sse_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def write(resp: web.StreamResponse) -> None:
        for part in (ROLE, token("x") + b"\n\n", token("y") + b"\n\n", token("", "stop") + b"\n\n"):
            await resp.write(part)
            await asyncio.sleep(0.005)
        await resp.write(b"data: [DONE]\n\n")

    rec = await send(await sse_server(write))
    assert rec.ok
    assert (rec.output_tokens, rec.tokens_source, len(rec.itl)) == (2, "chunks", 1)
    assert rec.itl[0] > 0


async def test_a_stream_without_done_or_finish_is_incomplete(sse_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(token("x") + b"\n\n")

    rec = await send(await sse_server(write))
    assert (rec.ok, rec.error) == (False, "incomplete_stream")


async def test_an_error_event_in_the_stream_is_an_error(sse_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def write(resp: web.StreamResponse) -> None:
        await resp.write(token("x") + b"\n\n")
        await resp.write(b'data: {"error":{"message":"engine died","code":500}}\n\ndata: [DONE]\n\n')

    rec = await send(await sse_server(write))
    assert (rec.ok, rec.error) == (False, "stream_error")


def test_endpoint_urls() -> None:
    assert Endpoint("http://h:1", "m").url == "http://h:1/v1/chat/completions"
    assert Endpoint("http://h:1/v1/", "m", api="completions").url == "http://h:1/v1/completions"
    assert "Authorization" not in Endpoint("http://h", "m").headers()
    assert Endpoint("http://h", "m", "k").headers()["Authorization"] == "Bearer k"

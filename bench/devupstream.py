"""A fast OpenAI-shaped HTTP upstream for the gateway's tests and benchmark.

This is NOT a model and not a mock of the gateway: it stands in for a model server (the real one
is the Ray Serve + vLLM app, used by the end-to-end tests) where a test or a benchmark needs an
upstream that answers in microseconds and can be told to misbehave. It answers
/v1/chat/completions, /v1/completions (JSON or SSE, with `usage` and `stream_options`),
/v1/embeddings and /v1/models, and records what it saw at /stats.

Test controls, in the request body (the gateway forwards unknown fields untouched):
`"rayleigh_test": {"chunks": N, "delay": seconds between chunks, "fail_after": K (drop the
connection after K chunks), "status": code, "sleep": seconds before answering}`.

A saturated replica: `--latency S` makes every completion take S seconds (as `sleep`) and
`--concurrency N` serves at most N completions at once, first come first served (the rest wait),
as one busy vLLM replica would.

Run: `python -m bench.devupstream --port 9000 [--latency 0.05 --concurrency 1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
from aiohttp import web

FIXED_CHAT = {
    "id": "chatcmpl-dev",
    "object": "chat.completion",
    "created": 0,
    "model": "",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello from the dev upstream"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
}


class Stats:
    """What the upstream saw (for tests)."""

    def __init__(self) -> None:
        self.requests = 0
        self.streams_started = 0
        self.streams_completed = 0
        self.streams_cancelled = 0
        self.last_headers: dict[str, str] = {}
        self.last_body: Any = None


STATS = web.AppKey("stats", Stats)


def _error(status: int, message: str) -> web.Response:
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}})
    return web.Response(status=status, body=body, content_type="application/json")


def make_app(record: bool = True, latency: float = 0.0, concurrency: int = 0) -> web.Application:
    stats = Stats()
    slots = asyncio.Semaphore(concurrency) if concurrency > 0 else None
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[STATS] = stats
    cache: dict[str, bytes] = {}

    async def completions(request: web.Request) -> web.StreamResponse:
        if slots is None:
            return await answer(request)
        async with slots:
            return await answer(request)

    async def answer(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        stats.requests += 1
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _error(400, "model is required")
        if record:
            stats.last_headers = dict(request.headers)
            stats.last_body = body
        chat = request.path.endswith("/chat/completions")
        if chat and not isinstance(body.get("messages"), list):
            return _error(400, "messages must be a list")
        if not chat and not isinstance(body.get("prompt"), (str, list)):
            return _error(400, "prompt is required")
        control_v = body.get("rayleigh_test")
        control: dict[str, Any] = control_v if isinstance(control_v, dict) else {}
        if control.get("status"):
            return _error(int(control["status"]), "status requested by the test")
        pause = float(control.get("sleep", latency))
        if pause > 0:
            await asyncio.sleep(pause)
        model = body["model"]
        max_tokens_v = body.get("max_tokens")
        max_tokens = max_tokens_v if isinstance(max_tokens_v, int) else 5
        if body.get("stream") is True:
            return await _stream(request, body, model, chat, control, max_tokens, stats)
        key = f"{model}|{chat}"
        data = cache.get(key)
        if data is None:
            obj = dict(FIXED_CHAT, model=model)
            if not chat:
                obj = dict(
                    obj, object="text_completion", choices=[{"index": 0, "text": "hello", "finish_reason": "stop"}]
                )
            data = cache[key] = orjson.dumps(obj)
        return web.Response(body=data, content_type="application/json")

    async def embeddings(request: web.Request) -> web.Response:
        stats.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or "input" not in body:
            return _error(400, "model and input are required")
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "model": body.get("model"),
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "dev", "object": "model"}]})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "requests": stats.requests,
                "streams_started": stats.streams_started,
                "streams_completed": stats.streams_completed,
                "streams_cancelled": stats.streams_cancelled,
                "last_headers": stats.last_headers,
                "last_body": stats.last_body,
            }
        )

    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", get_stats)
    return app


async def _stream(
    request: web.Request,
    body: dict[str, Any],
    model: str,
    chat: bool,
    control: dict[str, Any],
    max_tokens: int,
    stats: Stats,
) -> web.StreamResponse:
    chunks = int(control.get("chunks", min(max_tokens, 5)))
    delay = float(control.get("delay", 0))
    fail_after = control.get("fail_after")
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    stats.streams_started += 1
    created = int(time.time())
    try:
        for i in range(chunks):
            if fail_after is not None and i >= int(fail_after):
                assert request.transport is not None
                request.transport.abort()  # a backend dying mid-stream
                return resp
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}
                obj = {"id": "chatcmpl-dev", "object": "chat.completion.chunk", "created": created, "model": model}
            else:
                choice = {"index": 0, "text": f"t{i} ", "finish_reason": None}
                obj = {"id": "cmpl-dev", "object": "text_completion", "created": created, "model": model}
            obj["choices"] = [choice]
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")
            if delay:
                await asyncio.sleep(delay)
        if include_usage:
            usage = {"prompt_tokens": 7, "completion_tokens": chunks, "total_tokens": 7 + chunks}
            obj = {
                "id": "chatcmpl-dev",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        stats.streams_completed += 1
    except (asyncio.CancelledError, ConnectionResetError):
        stats.streams_cancelled += 1
        raise
    return resp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", type=float, default=0.0, help="Seconds every completion takes.")
    parser.add_argument("--concurrency", type=int, default=0, help="Completions served at once (0: unbounded).")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        make_app(False, args.latency, args.concurrency), host=args.host, port=args.port, access_log=None, print=None
    )


if __name__ == "__main__":
    main()

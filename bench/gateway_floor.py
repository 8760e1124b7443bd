"""The floor for bench/gateway_overhead.py: the least a Python proxy hop costs here.

A bare pass-through: raw ASGI under uvicorn + uvloop + httptools, pooled aiohttp upstream client,
no auth, no limits, no metrics. `FLOOR_UPSTREAM=http://127.0.0.1:PORT uvicorn gateway_floor:app`.
"""

import os
from typing import Any

import aiohttp

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9000")
state: dict[str, aiohttp.ClientSession] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] == "lifespan.startup":
            state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            await send({"type": "lifespan.startup.complete"})
        await state["s"].close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    async with state["s"].post(UPSTREAM + scope["path"], data=body, headers={"Content-Type": "application/json"}) as r:
        ctype = r.headers.get("Content-Type", "application/json").encode()
        await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", ctype)]})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

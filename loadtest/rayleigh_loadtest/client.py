"""One request to an OpenAI-compatible endpoint, timed: the load generator's hot path.

aiohttp (one session per run, keep-alive connections, a connector sized to the load), the body
serialized once per prompt, and Server-Sent Events parsed incrementally from the bytes as they
arrive (no per-line awaits). Timestamps are `time.perf_counter()` at the read that delivered the
bytes, so events that arrive together have a zero gap, as the client saw them.

Definitions (docs/BENCH.md):
- TTFT: from sending the request to the first event that carries a token (a choice's delta or text,
  even an empty one: random models' first tokens often decode to no text); the role announcement
  (`{"role": "assistant", "content": ""}`) is not a token. Without streaming the first token the
  client can see comes with the whole body, so TTFT is the end-to-end latency.
- inter-token latencies: the gaps between consecutive token events.
- TPOT: (e2e - TTFT) / (output tokens - events in the first token's read), undefined (None) unless
  the token events arrived in at least 2 reads (`Record.tpot`).
- output tokens: the server's `usage.completion_tokens` (asked for with
  `stream_options: {"include_usage": true}`); without usage, the tokenizer's count of the text when
  one is given, else the number of token events (streaming) or characters / 4 (not streaming).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

try:
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _dumps: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


from .workload import CHARS_PER_TOKEN, Prompt, Tokenizer


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str | None = None
    api: str = "chat"  # "chat" | "completions"
    label: str = ""

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return base + ("/chat/completions" if self.api == "chat" else "/completions")

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


@dataclass
class RequestOptions:
    stream: bool = True
    ignore_eos: bool = False
    extra_body: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 120.0


@dataclass(slots=True)
class Record:
    """One request as measured. Times in seconds; `start`/`end` relative to the start of its step."""

    start: float
    end: float
    status: int  # the HTTP status; 0 when no response came (connection error, timeout)
    error: str | None  # None on success, else the HTTP status ("429") or "connection_error", "timeout", ...
    ttft: float | None
    itl: list[float]
    output_tokens: int
    tokens_source: str  # "usage" | "tokenizer" | "chunks" | "approximate"
    prompt_tokens: int | None = None  # the server's usage.prompt_tokens
    round: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def token_reads(self) -> int:
        """How many distinct reads delivered this request's token events (0: none).

        Events that arrive in one read have a zero gap; a server that batches streamed tokens (or a
        response that is not streamed) delivers several tokens, or all of them, in one read.
        """
        if self.ttft is None:
            return 0
        return 1 + sum(1 for g in self.itl if g > 0)

    @property
    def first_read_events(self) -> int:
        """How many token events came in the read that delivered the first token (0: none)."""
        if self.ttft is None:
            return 0
        n = 1
        for g in self.itl:
            if g > 0:
                break
            n += 1
        return n

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first read: (e2e - TTFT) / (output tokens - k), where k is
        the number of token events in the read that brought the first token (k = 1 when tokens
        stream one by one: the usual (e2e - TTFT) / (output tokens - 1)).

        A server that batches streamed tokens (Ray Serve LLM every 50 ms; any server under load)
        delivers several tokens with the first one; they were generated before TTFT, so they are not
        counted in the time after it. Undefined (None) when no token came after the first read (all
        in one read, or not streamed): the client saw no token pace at all, and the old formula gave
        a near-zero artefact.
        """
        if self.ttft is None or self.token_reads < 2:
            return None
        after = self.output_tokens - self.first_read_events
        if after < 1:
            return None
        return (self.e2e - self.ttft) / after

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "start_s": round(self.start, 6),
            "end_s": round(self.end, 6),
            "status": self.status,
            "error": self.error,
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1e3, 4),
            "e2e_ms": round(self.e2e * 1e3, 4),
            "itl_ms": [round(x * 1e3, 4) for x in self.itl],
            "tpot_ms": None if (t := self.tpot) is None else round(t * 1e3, 4),
            "output_tokens": self.output_tokens,
            "tokens_source": self.tokens_source,
            "prompt_tokens": self.prompt_tokens,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Record:
        return cls(
            start=d["start_s"],
            end=d["end_s"],
            status=d["status"],
            error=d["error"],
            ttft=None if d.get("ttft_ms") is None else d["ttft_ms"] / 1e3,
            itl=[x / 1e3 for x in d.get("itl_ms", [])],
            output_tokens=d["output_tokens"],
            tokens_source=d["tokens_source"],
            prompt_tokens=d.get("prompt_tokens"),
            round=d.get("round", 0),
        )


class Client:
    """Sends prompts to one endpoint and times them; `body()` bytes are cached per prompt."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: Endpoint,
        options: RequestOptions,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.session = session
        self.endpoint = endpoint
        self.options = options
        self.tokenizer = tokenizer
        self._url = endpoint.url
        self._headers = endpoint.headers()
        self._bodies: dict[int, bytes] = {}
        self._timeout = aiohttp.ClientTimeout(total=options.timeout_s)

    def body(self, prompt: Prompt) -> bytes:
        key = id(prompt)
        data = self._bodies.get(key)
        if data is None:
            obj: dict[str, Any] = {"model": self.endpoint.model, "max_tokens": prompt.max_tokens}
            if self.endpoint.api == "chat":
                obj["messages"] = prompt.messages
            else:
                obj["prompt"] = prompt.text
            obj["stream"] = self.options.stream
            if self.options.stream:
                obj["stream_options"] = {"include_usage": True}
            if self.options.ignore_eos:
                obj["ignore_eos"] = True
            obj.update(self.options.extra_body)
            data = self._bodies[key] = _dumps(obj)
        return data

    async def send(self, prompt: Prompt, t0: float) -> Record:
        """Send one request; times relative to `t0` (a `perf_counter()` value). Never raises but on cancel."""
        start = time.perf_counter()
        try:
            async with self.session.post(
                self._url, data=self.body(prompt), headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status >= 400:
                    await resp.read()
                    return self._fail(start, t0, resp.status, str(resp.status))
                if self.options.stream and resp.content_type == "text/event-stream":
                    return await self._read_stream(resp, start, t0)
                return await self._read_json(resp, start, t0)
        except TimeoutError:
            return self._fail(start, t0, 0, "timeout")
        except aiohttp.ClientPayloadError:
            return self._fail(start, t0, 200, "incomplete_stream")
        except (aiohttp.ClientError, OSError):
            return self._fail(start, t0, 0, "connection_error")

    def _fail(self, start: float, t0: float, status: int, error: str) -> Record:
        return Record(start - t0, time.perf_counter() - t0, status, error, None, [], 0, "none")

    def _fallback_tokens(self, texts: list[str], events: int, streamed: bool) -> tuple[int, str]:
        if self.tokenizer is not None:
            return self.tokenizer.count("".join(texts)), "tokenizer"
        if streamed:
            return events, "chunks"
        return max(1, round(sum(len(t) for t in texts) / CHARS_PER_TOKEN)), "approximate"

    async def _read_stream(self, resp: aiohttp.ClientResponse, start: float, t0: float) -> Record:
        first: float | None = None
        last = 0.0
        itl: list[float] = []
        texts: list[str] = []
        keep_text = self.tokenizer is not None
        events = 0
        usage: Any = None
        finished = False
        error: str | None = None
        buf = b""
        async for chunk in resp.content.iter_any():
            now = time.perf_counter()
            buf = buf + chunk if buf else chunk
            lines = buf.split(b"\n")
            buf = lines.pop()
            for raw in lines:
                if not raw.startswith(b"data:"):
                    continue
                payload = raw[5:].strip()
                if payload == b"[DONE]":
                    finished = True
                    continue
                try:
                    obj = _loads(payload)
                except ValueError:
                    error = "bad_event"
                    continue
                if not isinstance(obj, dict):
                    continue
                if obj.get("error"):
                    error = "stream_error"
                    continue
                u = obj.get("usage")
                if u:
                    usage = u
                choices = obj.get("choices")
                if not choices:
                    continue
                choice = choices[0]
                if choice.get("finish_reason"):
                    finished = True
                delta = choice.get("delta")
                if delta is not None:
                    text = delta.get("content")
                    if not text and ("role" in delta or choice.get("finish_reason")):
                        continue  # the role announcement, or a bare end-of-stream marker: not a token
                else:
                    text = choice.get("text")
                    if not text and choice.get("finish_reason"):
                        continue
                if first is None:
                    first = now - start
                else:
                    itl.append(now - last)
                last = now
                events += 1
                if keep_text and text:
                    texts.append(text)
        end = time.perf_counter()
        if error is None and not finished:
            error = "incomplete_stream"
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            tokens, source = usage["completion_tokens"], "usage"
        else:
            tokens, source = self._fallback_tokens(texts, events, True)
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return Record(start - t0, end - t0, resp.status, error, first, itl, tokens, source, prompt_tokens)

    async def _read_json(self, resp: aiohttp.ClientResponse, start: float, t0: float) -> Record:
        raw = await resp.read()
        end = time.perf_counter()
        try:
            obj = _loads(raw)
        except ValueError:
            return Record(start - t0, end - t0, resp.status, "bad_body", None, [], 0, "none")
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            tokens, source = usage["completion_tokens"], "usage"
        else:
            texts = []
            for c in obj.get("choices") or [] if isinstance(obj, dict) else []:
                msg = c.get("message") or {}
                texts.append(str(msg.get("content") or c.get("text") or ""))
            tokens, source = self._fallback_tokens(texts, 0, False)
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        e2e = end - start
        return Record(start - t0, end - t0, resp.status, None, e2e, [], tokens, source, prompt_tokens)


def make_session(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    """One session for a run: keep-alive connections, at most `limit` of them (the load's peak)."""
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        read_bufsize=1 << 16,
    )


async def warm_up(client: Client, prompt: Prompt, n: int) -> None:
    """`n` requests not recorded: open connections, let the server compile and cache what it does."""
    for _ in range(n):
        await client.send(prompt, time.perf_counter())
        await asyncio.sleep(0)

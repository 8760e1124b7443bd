"""Fair sharing at saturation: a light caller's latency next to a heavy one, fairness on and off.

One saturated "replica" (the dev upstream: `--concurrency 2`, 50 ms a completion, so 40 requests/s
at most) behind the real gateway with two routes to it: `fifo` (no `fairness`: first come first
served, as before) and `fair` (`fairness: {maxInFlight: 2}`). A heavy key sends open-loop at 1.5x
the replica's capacity, a light key at 1/20 of the heavy rate. Reported: the light key's p50/p90
latency unloaded (alone) and loaded on each route, their ratios to unloaded, and what the heavy
key got (200s, 429s). The claim checked: with fairness the light p50 stays within 2x unloaded,
without it does not.

    python bench/fairness.py [--quick] [--json bench/results/fairness.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
for sub in ("", "api", "gateway"):
    sys.path.insert(0, str(ROOT / sub))

from rayleigh_gateway.app import Settings  # noqa: E402
from tests.gateway.harness import GatewayThread, KeyFile, Upstream, write_yaml  # noqa: E402

SERVICE = 0.05
SLOTS = 2
HEAVY_RPS = 1.5 * SLOTS / SERVICE  # 60/s against a capacity of 40/s
LIGHT_RPS = HEAVY_RPS / 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def load(url: str, model: str, keys: dict[str, str], seconds: float, heavy: bool) -> dict[str, Any]:
    """Open-loop load for `seconds`: the light key always, the heavy key when `heavy`."""
    light_lat: list[float] = []
    heavy_codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(key: str) -> None:
            t0 = time.perf_counter()
            r = await client.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                headers={"Authorization": f"Bearer {keys[key]}"},
            )
            if key == "light":
                assert r.status_code == 200, r.text
                light_lat.append(time.perf_counter() - t0)
            else:
                heavy_codes[r.status_code] = heavy_codes.get(r.status_code, 0) + 1

        async def sender(key: str, rps: float) -> list[asyncio.Task[None]]:
            tasks = []
            start = time.perf_counter()
            n = 0
            while (now := time.perf_counter() - start) < seconds:
                if now >= n / rps:
                    tasks.append(asyncio.create_task(one(key)))
                    n += 1
                await asyncio.sleep(min(0.005, max(0.0, n / rps - now)))
            return tasks

        senders = [sender("light", LIGHT_RPS)] + ([sender("heavy", HEAVY_RPS)] if heavy else [])
        batches = await asyncio.gather(*senders)
        await asyncio.gather(*(t for batch in batches for t in batch))
    return {
        "light_p50_ms": round(statistics.median(light_lat) * 1000, 2),
        "light_p90_ms": round(pct(light_lat, 0.9) * 1000, 2),
        "light_requests": len(light_lat),
        "heavy_codes": {str(k): v for k, v in sorted(heavy_codes.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s of load per phase instead of 12")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 12.0
    upstream = Upstream(latency=SERVICE, concurrency=SLOTS)
    upstream.start()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)

        def route(name: str, **extra: object) -> dict[str, object]:
            return {"name": name, "namespace": "bench", "backend": upstream.url, "models": [name], **extra}

        fairness = {"maxInFlight": SLOTS, "maxQueue": 400, "maxWaitSeconds": 60}
        config = {"routes": [route("fifo"), route("fair", fairness=fairness)]}
        keyfile = KeyFile(d / "keys.yaml")
        keys = {"heavy": keyfile.create("heavy"), "light": keyfile.create("light")}
        gateway = GatewayThread(
            Settings(config_path=str(write_yaml(d / "routes.yaml", config)), keys_path=str(keyfile.path), audit=False)
        )
        gateway.start()
        try:
            unloaded = asyncio.run(load(gateway.url, "fair", keys, seconds / 2, heavy=False))
            fifo = asyncio.run(load(gateway.url, "fifo", keys, seconds, heavy=True))
            fair = asyncio.run(load(gateway.url, "fair", keys, seconds, heavy=True))
        finally:
            gateway.stop()
            upstream.stop()
    base = unloaded["light_p50_ms"]
    result = {
        "benchmark": "fairness",
        "quick": args.quick,
        "service_ms": SERVICE * 1000,
        "replica_slots": SLOTS,
        "heavy_rps": HEAVY_RPS,
        "light_rps": LIGHT_RPS,
        "seconds": seconds,
        "unloaded": unloaded,
        "fifo": fifo,
        "fair": fair,
        "light_p50_ratio_fair": round(fair["light_p50_ms"] / base, 3),
        "light_p50_ratio_fifo": round(fifo["light_p50_ms"] / base, 3),
    }
    result["claim_holds"] = result["light_p50_ratio_fair"] <= 2.0 < result["light_p50_ratio_fifo"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if result["claim_holds"] else 1


if __name__ == "__main__":
    sys.exit(main())

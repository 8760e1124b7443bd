"""The floor for bench/operator_scale.py: the least a controller can do for the same result.

A bare asyncio controller, no kopf: list ModelDeployments, watch from the list's
resourceVersion, and for every new object render the same children with the same renderers,
send the same server-side apply requests (concurrently, through the same aiohttp client), and
one status patch. No validation beyond parsing, no finalizer, no Events, no retries, no drift
handling, no Serve: what is left is the cost of the job itself.

Run: python bench/floor_controller.py --kubeconfig FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp

import rayleigh_api as api
from rayleigh_operator import render
from rayleigh_operator.kube import MODEL_DEPLOYMENTS, KubeClient, load_credentials


async def handle(client: KubeClient, obj: dict[str, Any], options: render.RenderOptions) -> None:
    meta = obj["metadata"]
    md = api.ModelDeployment.model_validate(
        {"metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}, "spec": obj["spec"]}
    )
    children = render.render(md, options=options)
    await asyncio.gather(*(client.apply(c, field_manager=render.FIELD_MANAGER) for c in children))
    await client.patch_status(
        MODEL_DEPLOYMENTS,
        md.namespace,
        md.name,
        {"phase": "Pending", "observedGeneration": meta.get("generation", 1), "selector": render.worker_selector(md)},
    )


async def handle_with_retry(client: KubeClient, obj: dict[str, Any], options: render.RenderOptions) -> None:
    for attempt in range(3):
        try:
            await handle(client, obj, options)
            return
        except Exception as exc:
            print(f"{obj['metadata']['name']}: attempt {attempt + 1} failed: {exc!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)


async def run(kubeconfig: str) -> None:
    client = KubeClient(load_credentials(kubeconfig), enforce_rbac=False)
    options = render.RenderOptions()
    seen: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    def spawn(obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        if uid in seen:
            return
        seen.add(uid)
        task = asyncio.create_task(handle_with_retry(client, obj, options))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    listing = await client.request("list", MODEL_DEPLOYMENTS, "GET", MODEL_DEPLOYMENTS.path())
    for obj in listing.get("items", []):
        spawn(obj)
    rv = listing["metadata"]["resourceVersion"]
    session = await client.session()
    while True:
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "300"}
        async with session.get(
            MODEL_DEPLOYMENTS.path(), params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        ) as resp:
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event["object"]
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if event["type"] == "ADDED":
                    spawn(obj)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    asyncio.run(run(args.kubeconfig))


if __name__ == "__main__":
    main()

"""`rayleigh rollout status|promote|abort|undo md/NAME`: a rollout from the command line, through
the Kubernetes API with the caller's kubeconfig (as kubectl does; docs/ROLLOUT.md).

- status: status.rollout and the Progressing / RolledBack conditions (`--wait` until it ends);
- promote: continue a paused rollout and skip the remaining analysis;
- abort: roll back now (the new version is removed, the old one takes every replica again);
- undo: put back the spec that ran before (the last rollout's old version), keeping the replica count.

promote and abort set the annotation `serving.rayleigh.dev/rollout-command`, which the operator
takes in and removes; undo replaces spec with the one the operator kept in an annotation.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from rayleigh_operator.kube import MODEL_DEPLOYMENTS, ApiError, KubeClient, load_credentials
from rayleigh_operator.rollout_state import COMMAND_ANNOTATION, PREVIOUS_SPEC_ANNOTATION, STABLE_SPEC_ANNOTATION


def _name(target: str) -> str:
    kind, _, name = target.rpartition("/")
    if kind and kind not in ("md", "modeldeployment", "modeldeployments", "modeldeployments.serving.rayleigh.dev"):
        raise click.BadParameter(f"expected md/NAME, got {target!r}", param_hint="TARGET")
    if not name:
        raise click.BadParameter("expected md/NAME", param_hint="TARGET")
    return name


def describe(md: dict[str, Any]) -> str:
    """The rollout part of a ModelDeployment's status, for people."""
    status = md.get("status") or {}
    r = status.get("rollout")
    name = md["metadata"]["name"]
    if not r:
        return f"md/{name}: no rollout yet (phase {status.get('phase')})"
    lines = [f"md/{name}: rollout {r['phase']}, step {r.get('step', 0)}/{r.get('steps', 0)}"]
    lines.append(f"  replicas: {r.get('newReplicas', 0)} new ({r.get('newRevision')}), "
                 f"{r.get('oldReplicas', 0)} old ({r.get('oldRevision')})")  # fmt: skip
    if r.get("newWeight") is not None:
        lines.append(f"  traffic: {r['newWeight']}% to the new version")
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}: {r.get('message', '')}")
    a = r.get("analysis")
    if a:
        lines.append(f"  analysis: {a['result']} at {a.get('checkedAt')}: {a.get('message', '')}")
    return "\n".join(lines)


async def _run(action: str, name: str, namespace: str, kubeconfig: str | None, context: str | None, wait: float) -> int:
    kube = KubeClient(load_credentials(kubeconfig, context), enforce_rbac=False)
    try:
        md = await kube.get(MODEL_DEPLOYMENTS, namespace, name)
        if md is None:
            click.echo(f"error: modeldeployment {namespace}/{name} not found", err=True)
            return 1
        if action == "status":
            deadline = time.monotonic() + wait
            while wait and ((md.get("status") or {}).get("rollout") or {}).get("phase") in ("Progressing", None):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
                md = await kube.get(MODEL_DEPLOYMENTS, namespace, name) or md
            click.echo(describe(md))
            phase = ((md.get("status") or {}).get("rollout") or {}).get("phase")
            return 1 if phase == "RolledBack" else 0
        if action in ("promote", "abort"):
            body = {"metadata": {"annotations": {COMMAND_ANNOTATION: action}}}
            await kube.patch(MODEL_DEPLOYMENTS, namespace, name, body)
            click.echo(f"modeldeployment.serving.rayleigh.dev/{name} rollout {action}d")
            return 0
        annotations = md["metadata"].get("annotations") or {}
        phase = ((md.get("status") or {}).get("rollout") or {}).get("phase")
        key = STABLE_SPEC_ANNOTATION if phase in ("Progressing", "Paused", "RolledBack") else PREVIOUS_SPEC_ANNOTATION
        stored = annotations.get(key)
        if not stored:
            click.echo(f"error: md/{name} has no earlier version to go back to ({key} is not set)", err=True)
            return 1
        spec = json.loads(stored)
        if "replicas" in (md.get("spec") or {}):
            spec["replicas"] = md["spec"]["replicas"]
        patch = [{"op": "replace", "path": "/spec", "value": spec}]
        await kube.request(
            "patch",
            MODEL_DEPLOYMENTS,
            "PATCH",
            f"/apis/{MODEL_DEPLOYMENTS.group}/{MODEL_DEPLOYMENTS.version}/namespaces/{namespace}/"
            f"{MODEL_DEPLOYMENTS.plural}/{name}",
            body=patch,
            content_type="application/json-patch+json",
        )
        click.echo(f"modeldeployment.serving.rayleigh.dev/{name} rolled back to its previous spec")
        return 0
    except ApiError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    finally:
        await kube.close()


@click.command()
@click.argument("action", type=click.Choice(["status", "promote", "abort", "undo"]))
@click.argument("target")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--kubeconfig", default=None, help="Path to a kubeconfig (default: $KUBECONFIG, ~/.kube/config).")
@click.option("--context", default=None, help="kubeconfig context.")
@click.option("--wait", default=0.0, type=float, help="status: wait up to this many seconds for the rollout to end.")
def rollout(action: str, target: str, namespace: str, kubeconfig: str | None, context: str | None, wait: float) -> None:
    """Watch or steer a ModelDeployment's rollout: status, promote, abort, undo md/NAME."""
    sys.exit(asyncio.run(_run(action, _name(target), namespace, kubeconfig, context, wait)))

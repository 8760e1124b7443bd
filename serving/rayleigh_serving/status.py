"""Turn Ray Serve's application status (dashboard `GET /api/serve/applications/`) into something a
ModelDeployment's status can show: a phase hint and one actionable line instead of a traceback.

Pure functions (no Ray import): the operator uses them on what the dashboard returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Ray Serve application statuses -> ModelDeployment phase.
PHASES = {
    "NOT_STARTED": "Pending",
    "DEPLOYING": "Deploying",
    "RUNNING": "Ready",
    "UNHEALTHY": "Degraded",
    "DEPLOY_FAILED": "Failed",
    "DELETING": "Deploying",
}
_EXC_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


@dataclass(frozen=True)
class ServeStatus:
    phase: str  # Pending | Deploying | Ready | Degraded | Failed
    reason: str  # CamelCase, for a condition
    message: str  # one line, no traceback
    ready_replicas: int
    replicas: int


def short_error(message: str, limit: int = 500) -> str:
    """The most specific exception line of a Serve/vLLM error message (the last one raised)."""
    lines = [ln for ln in message.splitlines() if ln.strip()]
    found = [m for ln in lines if (m := _EXC_LINE.match(ln))]
    if found:
        name, text = found[-1].group(1), found[-1].group(2).strip()
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)
        return f"{name}: {text}"[:limit]
    return (lines[-1].strip() if lines else "")[:limit]


def summarize(app: dict[str, Any] | None) -> ServeStatus:
    """Phase, reason and message for one application entry of the dashboard's answer."""
    if not app:
        return ServeStatus("Pending", "ApplicationMissing", "the Serve application is not deployed yet", 0, 0)
    status = str(app.get("status", "NOT_STARTED"))
    ready = total = 0
    for dep in (app.get("deployments") or {}).values():
        for replica in dep.get("replicas") or []:
            total += 1
            ready += 1 if replica.get("state") == "RUNNING" else 0
    phase = PHASES.get(status, "Deploying")
    raw = str(app.get("message") or "")
    if not raw:
        for dep in (app.get("deployments") or {}).values():
            if dep.get("message"):
                raw = str(dep["message"])
                break
    if status == "DEPLOY_FAILED":
        return ServeStatus(phase, "EngineFailed", short_error(raw) or "deployment failed", ready, total)
    if status == "UNHEALTHY":
        return ServeStatus(
            phase, "ReplicasUnhealthy", short_error(raw) or "replicas failed health checks", ready, total
        )
    if status == "RUNNING":
        return ServeStatus(phase, "Serving", f"{ready}/{total} replicas ready", ready, total)
    return ServeStatus(phase, "Loading", short_error(raw) or "starting replicas (model loading)", ready, total)

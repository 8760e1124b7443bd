"""What locks a model's Ray cluster down: token auth, the restricted Pod Security Standard.

Ray token authentication (Ray >= 2.52; the installed 2.60 is what this was checked against):
- every Ray process reads the mode from `RAY_AUTH_MODE` (`token` or `disabled`): only the
  environment counts, not `_system_config` (ray/_private/authentication/authentication_token_setup.py,
  `AUTH_MODE_ENV_VAR`, `ensure_token_if_auth_enabled`);
- the token comes from `RAY_AUTH_TOKEN`, else the file named by `RAY_AUTH_TOKEN_PATH`, else
  `~/.ray/auth_token` (the C++ AuthenticationTokenLoader in ray/_raylet.so; the same three names in
  ray/_private/authentication_test_utils.py); GCS, raylets and workers check it on every gRPC call
  (grpc_authentication_server_interceptor.py), the Ray Client server too;
- the dashboard (8265) and the dashboard agents (52365) check `Authorization: Bearer <token>` (else
  `X-Ray-Authorization`, else the `ray-authentication-token` cookie): 401 without a token, 403 with
  a wrong one (ray/_private/authentication/http_token_authentication.py, authentication_constants.py).
  Health paths stay public (`/api/gcs_healthz`, `/api/local_raylet_healthz`, `/api/healthz`:
  ray/dashboard/http_server_head.py, http_server_agent.py), so the probes need no token. Serve's
  HTTP proxy (8000) and the metrics exporter (8080) are not affected.

The token lives in a per-model Secret `NAME-ray-token` (key `token`), a child like the others. The
renderer stays pure: it renders the Secret without data, and the operator creates it once with a
random token (`rayleigh_operator.apply`, create-only: never server-side applied, so no apply can
overwrite it, and nothing in it derives from the spec), `immutable`, so no one else can either. The pods read it with `secretKeyRef`.

Pod security: every Ray container satisfies the `restricted` Pod Security Standard
(https://kubernetes.io/docs/concepts/security/pod-security-standards/): non-root (the replica images
run as uid 1000), RuntimeDefault seccomp, no capabilities, no privilege escalation, and a read-only
root filesystem with emptyDirs where Ray and vLLM write: /tmp (Ray's session directory /tmp/ray,
torch's compile cache) and $HOME (vLLM's, Triton's and other ~/.cache directories).
"""

from __future__ import annotations

from typing import Any

import rayleigh_api as api
from rayleigh_operator.render.names import child_name, metadata

RAY_TOKEN_KEY = "token"
RAY_UID = 1000  # the `ray` user of images/replica and images/replica-cuda
RAY_HOME = "/home/ray"


def render_ray_token_secret(md: api.ModelDeployment) -> dict[str, Any]:
    """The token Secret, without its data: the operator adds a random token when it creates it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(md, child_name(md, "ray-token"), "ray-token"),
        "type": "Opaque",
        # The API server refuses any change of its data: a new token needs a new Secret (delete it).
        "immutable": True,
    }


def ray_auth_env(md: api.ModelDeployment) -> list[dict[str, Any]]:
    """Token auth for every Ray process of the pod (head and workers alike)."""
    return [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": child_name(md, "ray-token"), "key": RAY_TOKEN_KEY}},
        },
        # $HOME is an emptyDir (the root filesystem is read-only): say where it is, whatever the image says.
        {"name": "HOME", "value": RAY_HOME},
    ]


def pod_security_context() -> dict[str, Any]:
    # No fsGroup: it would make the kubelet chown every file of a model PVC on each mount.
    return {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def writable_dirs() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): the emptyDirs a read-only root filesystem needs for Ray and vLLM."""
    volumes = [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": RAY_HOME}]
    return volumes, mounts

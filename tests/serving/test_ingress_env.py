"""The Ray environment per Serve ingress variant (rayleigh_serving.ingress), without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.serve._private.constants import RAY_SERVE_DIRECT_INGRESS_SHUTDOWN_BUFFER_S

from rayleigh_serving.config import GRACEFUL_SHUTDOWN_TIMEOUT_S
from rayleigh_serving.ingress import (
    DEFAULT_INGRESS,
    HAPROXY_DEREGISTRATION_S,
    INGRESS_ENV_VAR,
    default_ingress,
    local_haproxy_env,
    ray_env,
)


def test_haproxy_variant_turns_on_rays_haproxy_ingress() -> None:
    assert ray_env("haproxy")["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in ray_env("proxy")


def test_both_variants_share_rayleighs_control_loop_setting() -> None:
    assert (
        ray_env("haproxy")["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == ray_env("proxy")["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]
    )


def test_a_stopping_replica_waits_seconds_not_half_a_minute_for_haproxy_to_drop_it() -> None:
    assert ray_env("haproxy")["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == str(HAPROXY_DEREGISTRATION_S)
    assert HAPROXY_DEREGISTRATION_S < 30  # Ray's default, meant for load balancers outside Ray
    # Ray raises a replica's graceful_shutdown_timeout_s to the window + its buffer when it is shorter
    # (ray/serve/_private/deploy_utils.py): Rayleigh's own timeout must stay the one that applies.
    assert GRACEFUL_SHUTDOWN_TIMEOUT_S >= HAPROXY_DEREGISTRATION_S + RAY_SERVE_DIRECT_INGRESS_SHUTDOWN_BUFFER_S


def test_unknown_variant_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'nginx' is not one of haproxy, proxy"):
        ray_env("nginx")


def test_rayleigh_up_variant_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INGRESS_ENV_VAR, raising=False)
    assert default_ingress() == DEFAULT_INGRESS
    monkeypatch.setenv(INGRESS_ENV_VAR, "proxy")
    assert default_ingress() == "proxy"
    monkeypatch.setenv(INGRESS_ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="bogus"):
        default_ingress()


def test_each_local_head_gets_its_own_haproxy_files_and_ports(tmp_path: Path) -> None:
    a = local_haproxy_env(tmp_path / "a")
    b = local_haproxy_env(tmp_path / "b")
    for key in (
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
        "RAY_SERVE_HAPROXY_SOCKET_PATH",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
    ):
        assert a[key].startswith(str(tmp_path / "a")) and b[key].startswith(str(tmp_path / "b"))
    # Free ports picked per head instead of Ray's machine-wide defaults (8404, 9101, 8500, 9500).
    ports = [
        "RAY_SERVE_HAPROXY_STATS_PORT",
        "RAY_SERVE_HAPROXY_METRICS_PORT",
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
    ]
    for env in (a, b):
        assert all(1024 < int(env[p]) < 65536 and int(env[p]) not in (8404, 9101, 8500, 9500) for p in ports)

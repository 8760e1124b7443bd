"""A Redis password file mounted from a Kubernetes Secret is followed across a rotation.

The kubelet mounts a Secret as `<dir>/password -> ..data/password` with `..data ->
..<timestamp>`; on rotation it writes a new timestamped directory, swaps `..data` and deletes the
old one. `rayleigh gateway` hands the path to its workers (flags_to_env): it must stay the mounted
path, not the symlinks' target of the moment, or the password read at every connect would vanish
with the first rotation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rayleigh_gateway.redis_conn import RedisOptions, flags_to_env


def secret_volume(root: Path, version: str, files: dict[str, str]) -> None:
    """Write (or rotate) a Secret volume under root the way the kubelet's atomic writer does."""
    data = root / f"..{version}"
    data.mkdir(parents=True)
    for name, text in files.items():
        (data / name).write_text(text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    (root / "..data_tmp").symlink_to(data.name)
    os.replace(root / "..data_tmp", root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            (root / name).symlink_to(f"..data/{name}")
    if old is not None:
        for leftover in (root / old).iterdir():
            leftover.unlink()
        (root / old).rmdir()


def test_a_rotated_password_secret_is_read_by_the_workers(tmp_path: Path) -> None:
    mount = tmp_path / "redis-auth"
    secret_volume(mount, "2026_12_07_01", {"password": "first\n"})
    env = flags_to_env("redis://r.example:6379/0", password_file=str(mount / "password"))
    assert env["RAYLEIGH_GATEWAY_REDIS_PASSWORD_FILE"] == str(mount / "password")
    options = RedisOptions.from_env(env=env)
    assert options is not None and options.current_password() == "first"
    secret_volume(mount, "2026_12_07_02", {"password": "second\n"})
    assert options.current_password() == "second"


def test_relative_paths_are_made_absolute_for_the_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ca.crt").write_text("ca")
    env = flags_to_env("rediss://r.example:6380/0", ca_file="ca.crt")
    assert env["RAYLEIGH_GATEWAY_REDIS_CA"] == str(tmp_path / "ca.crt")

"""The Redis flags `rayleigh gateway` and `rayleigh keys usage` share, and the options they give."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from .redis_conn import RedisOptions

_REDIS_FLAGS = (
    click.option(
        "--redis-username", envvar="RAYLEIGH_GATEWAY_REDIS_USERNAME", help="Redis ACL user (wins over the URL's)."
    ),
    click.option(
        "--redis-password-file",
        envvar="RAYLEIGH_GATEWAY_REDIS_PASSWORD_FILE",
        type=click.Path(dir_okay=False),
        help="File holding the Redis password (a mounted Secret; read again at every connect).",
    ),
    click.option(
        "--redis-ca",
        envvar="RAYLEIGH_GATEWAY_REDIS_CA",
        type=click.Path(dir_okay=False),
        help="CA bundle for the Redis server's certificate (rediss:// URLs; default: the system CAs).",
    ),
    click.option(
        "--redis-cert",
        envvar="RAYLEIGH_GATEWAY_REDIS_CERT",
        type=click.Path(dir_okay=False),
        help="Client certificate for mutual TLS with Redis.",
    ),
    click.option(
        "--redis-key",
        envvar="RAYLEIGH_GATEWAY_REDIS_KEY",
        type=click.Path(dir_okay=False),
        help="Client private key for --redis-cert.",
    ),
    click.option(
        "--redis-sentinel",
        envvar="RAYLEIGH_GATEWAY_REDIS_SENTINELS",
        help="Sentinels to ask for the master, host:port,host:port (HA; a failover is followed).",
    ),
    click.option(
        "--redis-sentinel-master",
        envvar="RAYLEIGH_GATEWAY_REDIS_SENTINEL_MASTER",
        help="The master's name in Sentinel (with --redis-sentinel).",
    ),
)


def redis_flags(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_REDIS_FLAGS):
        f = option(f)
    return f


def redis_options(url: str | None, flags: dict[str, str | None]) -> RedisOptions | None:
    """The Redis connection options from --redis-url and the flags (None: no Redis)."""
    from .redis_conn import RedisConfigError, RedisOptions

    if not url and not flags.get("redis_sentinel"):
        return None
    try:
        return RedisOptions.parse(
            url,
            username=flags.get("redis_username"),
            password_file=flags.get("redis_password_file"),
            ca_file=flags.get("redis_ca"),
            cert_file=flags.get("redis_cert"),
            key_file=flags.get("redis_key"),
            sentinels=flags.get("redis_sentinel"),
            sentinel_master=flags.get("redis_sentinel_master"),
        )
    except RedisConfigError as exc:
        raise click.ClickException(str(exc)) from None

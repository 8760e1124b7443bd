"""`rayleigh gateway` (run the gateway under uvicorn); `rayleigh keys` lives in keys_cli.py.

Imports stay cheap at module level: uvicorn, aiohttp and redis load inside the commands.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .keys import KeyStoreError, load_keys
from .keys_cli import keys
from .redis_flags import redis_flags, redis_options

if TYPE_CHECKING:
    pass


def _redis_gateway_env(url: str | None, flags: dict[str, str | None]) -> bool:
    """Hand the Redis settings to the workers (environment: paths, never a password from a file)
    and check the server once: a Redis Cluster is refused; an unreachable Redis only warned
    about (rate limits follow failMode until it answers). True when a Redis is configured."""
    import asyncio

    from .redis_conn import flags_to_env, probe
    from .resp import RedisClusterError, RedisError

    options = redis_options(url, flags)
    os.environ.update(
        flags_to_env(
            url,
            flags.get("redis_username"),
            flags.get("redis_password_file"),
            flags.get("redis_ca"),
            flags.get("redis_cert"),
            flags.get("redis_key"),
            flags.get("redis_sentinel"),
            flags.get("redis_sentinel_master"),
        )
    )
    if options is None:
        return False
    try:
        asyncio.run(probe(options))
    except RedisClusterError as exc:
        raise click.ClickException(f"{options.describe()}: {exc}") from None
    except (RedisError, OSError, TimeoutError) as exc:
        click.echo(
            f"warning: redis not reachable now ({options.describe()}: {exc}); rate limits follow each "
            "route's failMode until it answers",
            err=True,
        )
    return True


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(),
    help="Route config (YAML/JSON), or a directory of route files (the operator's routes ConfigMap).",
)
@click.option("--keys", "keys_path", type=click.Path(dir_okay=False), help="API key file (hashes only).")
@click.option(
    "--redis-url",
    envvar="RAYLEIGH_GATEWAY_REDIS_URL",
    help="redis:// or rediss:// (TLS) [user:password@]host:port/db for shared rate limits.",
)
@redis_flags
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--reload-interval", default=1.0, show_default=True, type=float, help="Seconds between config checks.")
@click.option("--drain-seconds", default=30.0, show_default=True, type=float, help="Graceful shutdown budget.")
@click.option("--wake-url", envvar="RAYLEIGH_GATEWAY_WAKE_URL", help="The operator's wake endpoint (scale to zero).")
@click.option("--no-audit", is_flag=True, help="Do not write the per-request JSON audit line.")
@click.option("--audit-file", default="-", show_default=True, help="Where audit lines go ('-': stdout).")
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--metrics-port",
    default=9090,
    show_default=True,
    type=click.IntRange(min=0, max=65535),
    help="Port of GET /metrics (not served on --port; 0: no metrics endpoint).",
)
@click.option("--metrics-host", help="Address of the metrics port.  [default: --host]")
@click.option(
    "--limit-concurrency",
    default=1024,
    show_default=True,
    type=click.IntRange(min=0),
    help="Connections + requests per worker before new requests get 503 (0: unlimited).",
)
@click.option(
    "--max-header-bytes",
    default=32768,
    show_default=True,
    type=click.IntRange(min=1024),
    help="Request line and headers above this: 431, connection closed.",
)
@click.option(
    "--max-headers", default=100, show_default=True, type=click.IntRange(min=1), help="More headers than this: 431."
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds from connect (or a keep-alive request's first byte) to the end of the headers: 408 after.",
)
def gateway(
    config_path: str,
    keys_path: str | None,
    redis_url: str | None,
    host: str,
    port: int,
    workers: int,
    reload_interval: float,
    drain_seconds: float,
    wake_url: str | None,
    no_audit: bool,
    audit_file: str,
    log_level: str,
    metrics_port: int,
    metrics_host: str | None,
    limit_concurrency: int,
    max_header_bytes: int,
    max_headers: int,
    header_timeout: float,
    **redis_flags: str | None,
) -> None:
    """Run the gateway (uvicorn, uvloop, httptools); metrics on their own port."""
    from .routes import ConfigError, load_config

    try:
        config = load_config(config_path)
        if keys_path:
            load_keys(keys_path)
    except (ConfigError, KeyStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    os.environ["RAYLEIGH_GATEWAY_CONFIG"] = str(Path(config_path).resolve())
    os.environ["RAYLEIGH_GATEWAY_KEYS"] = str(Path(keys_path).resolve()) if keys_path else ""
    has_redis = _redis_gateway_env(redis_url, redis_flags)
    os.environ["RAYLEIGH_GATEWAY_RELOAD_SECONDS"] = str(reload_interval)
    os.environ["RAYLEIGH_GATEWAY_DRAIN_SECONDS"] = str(drain_seconds)
    os.environ["RAYLEIGH_GATEWAY_WAKE_URL"] = wake_url or ""
    os.environ["RAYLEIGH_GATEWAY_AUDIT"] = "0" if no_audit else "1"
    os.environ["RAYLEIGH_GATEWAY_AUDIT_PATH"] = audit_file
    os.environ["RAYLEIGH_GATEWAY_MAX_HEADER_BYTES"] = str(max_header_bytes)
    os.environ["RAYLEIGH_GATEWAY_MAX_HEADERS"] = str(max_headers)
    os.environ["RAYLEIGH_GATEWAY_HEADER_TIMEOUT"] = str(header_timeout)
    metrics_dir: str | None = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="rayleigh-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if not has_redis and any(
        r.rate_limits.requests_per_minute or r.rate_limits.tokens_per_minute for r in config.routes
    ):
        click.echo("warning: no --redis-url: rate limits are per process (in memory)", err=True)

    from .server import serve

    try:
        serve(
            host,
            port,
            workers,
            drain_seconds=drain_seconds,
            log_level=log_level,
            limit_concurrency=limit_concurrency,
            metrics_host=metrics_host or host,
            metrics_port=metrics_port,
            warn=lambda message: click.echo(f"warning: {message}", err=True),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@click.group()
def main() -> None:
    """The gateway's commands (also available as `rayleigh gateway` and `rayleigh keys`)."""


main.add_command(gateway)
main.add_command(keys)

if __name__ == "__main__":
    main(sys.argv[1:])

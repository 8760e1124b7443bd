"""`rayleigh gateway` (run the gateway under uvicorn) and `rayleigh keys` (manage API keys).

Imports stay cheap at module level: uvicorn, aiohttp and redis load inside the commands.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .keys import KeyStoreError, load_keys, load_or_new, save_keys

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


def _redis_flags(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_REDIS_FLAGS):
        f = option(f)
    return f


def _redis_options(url: str | None, flags: dict[str, str | None]) -> RedisOptions | None:
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


def _redis_gateway_env(url: str | None, flags: dict[str, str | None]) -> bool:
    """Hand the Redis settings to the workers (environment: paths, never a password from a file)
    and check the server once: a Redis Cluster is refused; an unreachable Redis only warned
    about (rate limits follow failMode until it answers). True when a Redis is configured."""
    import asyncio

    from .redis_conn import flags_to_env, probe
    from .resp import RedisClusterError, RedisError

    options = _redis_options(url, flags)
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
@_redis_flags
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
def keys() -> None:
    """Manage API keys in a key file (a Kubernetes Secret mounted as a file)."""


_keys_file = click.option(
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False),
    envvar="RAYLEIGH_KEYS_FILE",
    help="Key file (YAML, or JSON by .json suffix).",
)


def _parse_expiry(value: str | None) -> float | None:
    if not value:
        return None
    units = {"d": 86400, "h": 3600, "m": 60}
    if value[-1] in units and value[:-1].isdigit():
        return time.time() + int(value[:-1]) * units[value[-1]]
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected a duration like 30d/12h or an ISO time, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@keys.command("create")
@_keys_file
@click.option("--owner", required=True, help="Who the key is for (team or person).")
@click.option("--model", "models", multiple=True, help="Allowed model (repeat); none means every model.")
@click.option("--rpm", type=click.IntRange(min=1), help="The key's own requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="The key's own tokens per minute.")
@click.option("--expires", help="Expiry: a duration (30d, 12h) or an ISO time.")
@click.option(
    "--max-streams",
    type=click.IntRange(min=1),
    help="Streams the key may have open at once per gateway process (default: the gateway's limits.maxConcurrentStreams).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(
    path: str,
    owner: str,
    models: tuple[str, ...],
    rpm: int | None,
    tpm: int | None,
    expires: str | None,
    max_streams: int | None,
    as_json: bool,
) -> None:
    """Create a key; the plaintext key is printed once and never stored."""
    try:
        store = load_or_new(path)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    key, record = store.create(owner, list(models), rpm, tpm, _parse_expiry(expires), max_streams)
    save_keys(store, path)
    if not models:
        click.echo(
            "warning: a key without --model is global: it may call every model of every route that accepts "
            "API keys, in every namespace (all tenants); pass --model to limit it",
            err=True,
        )
    if as_json:
        click.echo(json.dumps({"key": key, **record.public_view()}))
    else:
        click.echo(f"id: {record.id}\nkey: {key}\n(store the key now: it is not kept anywhere)")


@keys.command("list")
@_keys_file
@click.option("--json", "as_json", is_flag=True)
def keys_list(path: str, as_json: bool) -> None:
    """List keys (ids, owners, models, limits, expiry; never the keys)."""
    try:
        store = load_keys(path)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    rows = [r.public_view() for r in store.records.values()]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':<14}{'OWNER':<20}{'MODELS':<24}{'EXPIRES':<22}STATE")
    now = time.time()
    for r in store.records.values():
        state = "revoked" if r.revoked else "expired" if r.expired(now) else "active"
        view = r.public_view()
        click.echo(
            f"{r.id:<14}{r.owner[:19]:<20}{','.join(r.models)[:23] or '*':<24}{view['expiresAt'] or '-':<22}{state}"
        )


@keys.command("revoke")
@_keys_file
@click.argument("key_id")
def keys_revoke(path: str, key_id: str) -> None:
    """Revoke a key by id (the gateway picks the change up within its reload interval)."""
    try:
        store = load_keys(path)
        store.revoke(key_id)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    save_keys(store, path)
    click.echo(f"revoked {key_id}")


@keys.command("usage")
@click.option(
    "--redis-url", envvar="RAYLEIGH_GATEWAY_REDIS_URL", help="The gateway's Redis (as for `rayleigh gateway`)."
)
@_redis_flags
@click.option("--key-id", "key_ids", multiple=True, help="Only these keys (repeat); default: all.")
@click.option(
    "--period",
    type=click.Choice(["hour", "day", "month"]),
    help="One row per hour, day or month (UTC). Default: totals over the months kept.",
)
@click.option(
    "--since",
    help="From this UTC time on: ISO (2026-11-01, 2026-11-01T13:00) or a duration back (48h, 7d). "
    "Default: all that is kept (48 h of hours, 40 days of days, 400 days of months).",
)
@click.option("--json", "as_json", is_flag=True)
def keys_usage(
    redis_url: str | None,
    key_ids: tuple[str, ...],
    period: str | None,
    since: str | None,
    as_json: bool,
    **redis_flags: str | None,
) -> None:
    """Requests and tokens per key and model (and period), from the usage counters in Redis."""
    import asyncio

    from .redis_conn import RespClient
    from .resp import RedisError
    from .usage import read_usage

    options = _redis_options(redis_url, redis_flags)
    if options is None:
        raise click.UsageError("--redis-url (or --redis-sentinel with --redis-sentinel-master) is required")
    since_ts = _parse_since(since)

    async def read() -> list[dict[str, object]]:
        client = RespClient(options, connect_timeout=5, timeout=30)
        try:
            return await read_usage(client, period, since_ts, key_ids)
        finally:
            client.close()

    try:
        rows = asyncio.run(read())
    except (RedisError, OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot read usage from {options.describe()}: {exc}") from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    head = f"{'PERIOD':<16}" if period else ""
    click.echo(f"{head}{'KEY':<24}{'MODEL':<24}{'REQUESTS':>10}{'PROMPT':>12}{'COMPLETION':>12}")
    for row in rows:
        first = f"{row['period']!s:<16}" if period else ""
        click.echo(
            f"{first}{row['key_id']!s:<24}{row['model']!s:<24}{row.get('requests', 0)!s:>10}"
            f"{row.get('prompt_tokens', 0)!s:>12}{row.get('completion_tokens', 0)!s:>12}"
        )


def _parse_since(value: str | None) -> float | None:
    if not value:
        return None
    units = {"d": 86400, "h": 3600, "m": 60}
    if value[-1] in units and value[:-1].isdigit():
        return time.time() - int(value[:-1]) * units[value[-1]]
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected an ISO date/time or a duration like 48h, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@click.group()
def main() -> None:
    """The gateway's commands (also available as `rayleigh gateway` and `rayleigh keys`)."""


main.add_command(gateway)
main.add_command(keys)

if __name__ == "__main__":
    main(sys.argv[1:])

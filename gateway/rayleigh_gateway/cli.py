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
from datetime import UTC, datetime
from pathlib import Path

import click

from .keys import KeyStoreError, load_keys, load_or_new, save_keys


@click.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(),
    help="Route config (YAML/JSON), or a directory of route files (the operator's routes ConfigMap).",
)
@click.option("--keys", "keys_path", type=click.Path(dir_okay=False), help="API key file (hashes only).")
@click.option("--redis-url", envvar="RAYLEIGH_GATEWAY_REDIS_URL", help="redis://host:port/db for shared rate limits.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
@click.option("--reload-interval", default=1.0, show_default=True, type=float, help="Seconds between config checks.")
@click.option("--drain-seconds", default=30.0, show_default=True, type=float, help="Graceful shutdown budget.")
@click.option("--no-audit", is_flag=True, help="Do not write the per-request JSON audit line.")
@click.option("--audit-file", default="-", show_default=True, help="Where audit lines go ('-': stdout).")
@click.option("--log-level", default="info", show_default=True)
def gateway(
    config_path: str,
    keys_path: str | None,
    redis_url: str | None,
    host: str,
    port: int,
    workers: int,
    reload_interval: float,
    drain_seconds: float,
    no_audit: bool,
    audit_file: str,
    log_level: str,
) -> None:
    """Run the gateway (uvicorn, uvloop, httptools)."""
    from .routes import ConfigError, load_config

    try:
        config = load_config(config_path)
        if keys_path:
            load_keys(keys_path)
    except (ConfigError, KeyStoreError) as exc:
        raise click.ClickException(str(exc)) from None
    os.environ["RAYLEIGH_GATEWAY_CONFIG"] = str(Path(config_path).resolve())
    os.environ["RAYLEIGH_GATEWAY_KEYS"] = str(Path(keys_path).resolve()) if keys_path else ""
    os.environ["RAYLEIGH_GATEWAY_REDIS_URL"] = redis_url or ""
    os.environ["RAYLEIGH_GATEWAY_RELOAD_SECONDS"] = str(reload_interval)
    os.environ["RAYLEIGH_GATEWAY_DRAIN_SECONDS"] = str(drain_seconds)
    os.environ["RAYLEIGH_GATEWAY_AUDIT"] = "0" if no_audit else "1"
    os.environ["RAYLEIGH_GATEWAY_AUDIT_PATH"] = audit_file
    metrics_dir: str | None = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="rayleigh-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if not redis_url and any(
        r.rate_limits.requests_per_minute or r.rate_limits.tokens_per_minute for r in config.routes
    ):
        click.echo("warning: no --redis-url: rate limits are per process (in memory)", err=True)

    import uvicorn

    try:
        uvicorn.run(
            "rayleigh_gateway.app:create_app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="httptools",
            ws="websockets-sansio",
            lifespan="on",
            access_log=False,
            proxy_headers=False,  # the gateway reads X-Forwarded-For itself, from trusted proxies only
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=int(drain_seconds),
            timeout_keep_alive=75,
            log_config=_log_config(log_level),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _log_config(level: str) -> dict[str, object]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper()},
            "rayleigh.gateway": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(
    path: str, owner: str, models: tuple[str, ...], rpm: int | None, tpm: int | None, expires: str | None, as_json: bool
) -> None:
    """Create a key; the plaintext key is printed once and never stored."""
    try:
        store = load_or_new(path)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    key, record = store.create(owner, list(models), rpm, tpm, _parse_expiry(expires))
    save_keys(store, path)
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
@click.option("--redis-url", required=True, envvar="RAYLEIGH_GATEWAY_REDIS_URL")
@click.option("--key-id", "key_ids", multiple=True, help="Only these keys (repeat); default: all.")
@click.option("--json", "as_json", is_flag=True)
def keys_usage(redis_url: str, key_ids: tuple[str, ...], as_json: bool) -> None:
    """Requests and tokens per key and model, from the counters in Redis."""
    import redis

    from .ratelimit import USAGE_PREFIX

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        names = [USAGE_PREFIX + k for k in key_ids] or sorted(
            n.decode() if isinstance(n, bytes) else str(n)
            for n in client.scan_iter(match=USAGE_PREFIX + "*", count=1000)
        )
        rows: list[dict[str, object]] = []
        for name in names:
            fields = client.hgetall(name)
            per_model: dict[str, dict[str, int]] = {}
            for f, v in fields.items():  # type: ignore[union-attr]
                model, _, kind = (f.decode() if isinstance(f, bytes) else str(f)).rpartition("|")
                per_model.setdefault(model, {})[kind] = int(v)
            for model, counts in sorted(per_model.items()):
                rows.append({"key_id": name[len(USAGE_PREFIX) :], "model": model, **counts})
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot read usage from {redis_url}: {exc}") from None
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'KEY':<24}{'MODEL':<24}{'REQUESTS':>10}{'PROMPT':>12}{'COMPLETION':>12}")
    for row in rows:
        click.echo(
            f"{row['key_id']!s:<24}{row['model']!s:<24}{row.get('requests', 0)!s:>10}"
            f"{row.get('prompt_tokens', 0)!s:>12}{row.get('completion_tokens', 0)!s:>12}"
        )


@click.group()
def main() -> None:
    """The gateway's commands (also available as `rayleigh gateway` and `rayleigh keys`)."""


main.add_command(gateway)
main.add_command(keys)

if __name__ == "__main__":
    main(sys.argv[1:])

"""`rayleigh keys`: create, list, revoke API keys in a key file, and read usage from Redis."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import click

from .fairqueue import MAX_WEIGHT, PRIORITY_CLASSES
from .keys import KeyStoreError, load_keys, load_or_new, save_keys
from .redis_flags import redis_flags, redis_options


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
@click.option("--priority", type=click.Choice(PRIORITY_CLASSES), help="Fair sharing class (default normal).")
@click.option("--weight", type=click.IntRange(1, MAX_WEIGHT), help="Fair sharing weight in its class (default 1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_create(
    path: str,
    owner: str,
    models: tuple[str, ...],
    rpm: int | None,
    tpm: int | None,
    expires: str | None,
    max_streams: int | None,
    priority: str | None,
    weight: int | None,
    as_json: bool,
) -> None:
    """Create a key; the plaintext key is printed once and never stored."""
    try:
        store = load_or_new(path)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    key, record = store.create(owner, list(models), rpm, tpm, _parse_expiry(expires), max_streams, priority, weight)
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
@redis_flags
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

    options = redis_options(redis_url, redis_flags)
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

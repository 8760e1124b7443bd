"""API keys: a file (a Kubernetes Secret mounted as a file) holding only salted hashes.

A key looks like `rk_<id>_<secret>`: the id selects the record, and HMAC-SHA256(store salt, key)
is compared in constant time with the stored digest. The key has 256 bits of entropy, so a fast
keyed hash is safe here; a slow password hash per request would cost milliseconds.
The plaintext key exists only once, in the output of `rayleigh keys create`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .fairqueue import MAX_WEIGHT, PRIORITY_CLASSES

KEY_PREFIX = "rk_"


class KeyStoreError(ValueError):
    """The key file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    owner: str
    digest: bytes
    models: tuple[str, ...] = ()  # empty: every model the routes allow
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    expires_at: float | None = None  # unix seconds
    revoked: bool = False
    created_at: float = 0.0
    max_concurrent_streams: int | None = None  # None: the gateway's limits.maxConcurrentStreams
    priority: str | None = None  # fair sharing class (fairqueue.PRIORITY_CLASSES); None: normal
    weight: int | None = None  # fair sharing weight; None: 1

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "owner": self.owner,
            "hash": self.digest.hex(),
            "models": list(self.models),
            "createdAt": _iso(self.created_at),
            "revoked": self.revoked,
        }
        limits = {}
        if self.requests_per_minute is not None:
            limits["requestsPerMinute"] = self.requests_per_minute
        if self.tokens_per_minute is not None:
            limits["tokensPerMinute"] = self.tokens_per_minute
        if self.max_concurrent_streams is not None:
            limits["maxConcurrentStreams"] = self.max_concurrent_streams
        if limits:
            out["limits"] = limits
        out["expiresAt"] = _iso(self.expires_at) if self.expires_at is not None else None
        # Written only when set, so key files without them read (and diff) as before.
        if self.priority is not None:
            out["priority"] = self.priority
        if self.weight is not None:
            out["weight"] = self.weight
        return out

    def public_view(self) -> dict[str, Any]:
        view = self.to_dict()
        del view["hash"]
        return view


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    try:
        text = str(value).replace("Z", "+00:00")
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise KeyStoreError(f"{where}: expected an ISO 8601 time like 2026-12-31T00:00:00Z, got {value!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass(slots=True)
class KeyStore:
    salt: bytes
    records: dict[str, KeyRecord] = field(default_factory=dict)

    @classmethod
    def new(cls) -> KeyStore:
        return cls(salt=secrets.token_bytes(32))

    def digest(self, key: str) -> bytes:
        return hmac.new(self.salt, key.encode(), hashlib.sha256).digest()

    def lookup(self, key: str) -> KeyRecord | None:
        """The record for a presented key, or None. Constant-time digest comparison; the dict
        lookup is by the public id part only."""
        if not key.startswith(KEY_PREFIX):
            return None
        key_id, sep, _secret = key[len(KEY_PREFIX) :].partition("_")
        if not sep:
            return None
        record = self.records.get(key_id)
        digest = self.digest(key)
        if record is None:
            return None
        if not hmac.compare_digest(digest, record.digest):
            return None
        return record

    def create(
        self,
        owner: str,
        models: list[str] | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        expires_at: float | None = None,
        max_concurrent_streams: int | None = None,
        priority: str | None = None,
        weight: int | None = None,
    ) -> tuple[str, KeyRecord]:
        key_id = secrets.token_hex(6)
        while key_id in self.records:
            key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = KeyRecord(
            id=key_id,
            owner=owner,
            digest=self.digest(key),
            models=tuple(models or ()),
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            expires_at=expires_at,
            created_at=float(int(time.time())),
            max_concurrent_streams=max_concurrent_streams,
            priority=_priority(priority, "priority"),
            weight=_weight(weight, "weight"),
        )
        self.records[key_id] = record
        return key, record

    def revoke(self, key_id: str) -> KeyRecord:
        record = self.records.get(key_id)
        if record is None:
            raise KeyStoreError(f"no key with id {key_id!r}")
        revoked = KeyRecord(**{**{s: getattr(record, s) for s in KeyRecord.__slots__}, "revoked": True})
        self.records[key_id] = revoked
        return revoked

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "salt": self.salt.hex(),
            "keys": [r.to_dict() for r in self.records.values()],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<keys>") -> KeyStore:
        if not isinstance(data, dict):
            raise KeyStoreError(f"{source}: expected a mapping with 'salt' and 'keys'")
        salt_hex = data.get("salt")
        try:
            salt = bytes.fromhex(str(salt_hex))
        except ValueError:
            raise KeyStoreError(f"{source}: salt: expected hex, got {salt_hex!r}") from None
        if len(salt) < 16:
            raise KeyStoreError(f"{source}: salt: expected at least 16 bytes of hex")
        store = cls(salt=salt)
        for i, item in enumerate(data.get("keys") or []):
            where = f"{source}: keys[{i}]"
            if not isinstance(item, dict):
                raise KeyStoreError(f"{where}: expected a mapping")
            try:
                key_id = str(item["id"])
                digest = bytes.fromhex(str(item["hash"]))
            except KeyError as exc:
                raise KeyStoreError(f"{where}.{exc.args[0]}: required") from None
            except ValueError:
                raise KeyStoreError(f"{where}.hash: expected hex sha256") from None
            if len(digest) != 32:
                raise KeyStoreError(f"{where}.hash: expected 32 bytes of hex")
            limits = item.get("limits") or {}
            store.records[key_id] = KeyRecord(
                id=key_id,
                owner=str(item.get("owner", "")),
                digest=digest,
                models=tuple(str(m) for m in item.get("models") or ()),
                requests_per_minute=_opt_int(limits.get("requestsPerMinute"), f"{where}.limits.requestsPerMinute"),
                tokens_per_minute=_opt_int(limits.get("tokensPerMinute"), f"{where}.limits.tokensPerMinute"),
                expires_at=_parse_time(item.get("expiresAt"), f"{where}.expiresAt"),
                revoked=bool(item.get("revoked", False)),
                created_at=_parse_time(item.get("createdAt"), f"{where}.createdAt") or 0.0,
                max_concurrent_streams=_opt_int(
                    limits.get("maxConcurrentStreams"), f"{where}.limits.maxConcurrentStreams"
                ),
                priority=_priority(item.get("priority"), f"{where}.priority"),
                weight=_weight(item.get("weight"), f"{where}.weight"),
            )
        return store


def _opt_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise KeyStoreError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _priority(value: Any, where: str) -> str | None:
    if value is None or value in PRIORITY_CLASSES:
        return value  # type: ignore[no-any-return]
    raise KeyStoreError(f"{where}: expected one of {', '.join(PRIORITY_CLASSES)}, got {value!r}")


def _weight(value: Any, where: str) -> int | None:
    weight = _opt_int(value, where)
    if weight is not None and weight > MAX_WEIGHT:
        raise KeyStoreError(f"{where}: expected at most {MAX_WEIGHT}, got {value!r}")
    return weight


def load_keys(path: str | Path) -> KeyStore:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise KeyStoreError(f"{p}: cannot read key file: {exc.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise KeyStoreError(f"{p}: not valid YAML/JSON: {exc}") from None
    return KeyStore.from_dict(data, str(p))


def save_keys(store: KeyStore, path: str | Path) -> None:
    """Write atomically (rename), readable only by the owner."""
    p = Path(path)
    data = store.to_dict()
    text = json.dumps(data, indent=2) + "\n" if p.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_new(path: str | Path) -> KeyStore:
    return load_keys(path) if Path(path).exists() else KeyStore.new()

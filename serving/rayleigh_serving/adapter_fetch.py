"""Fetch a LoRA adapter onto the replica's disk: the directory vLLM loads it from.

Runs on the replica (blocking I/O: call it in a thread). file:// and pvc:// adapters are already
local; hf:// ones go through huggingface_hub's cache (HF_HOME / HF_HUB_CACHE; with HF_HUB_OFFLINE=1
the cached snapshot is used without touching the network); s3:// ones are listed and downloaded
with boto3 into ADAPTER_CACHE/s3/<source>/<listing digest>/, so that a replica restart reuses a
complete download and new content under the same prefix is a new directory.

Credentials are read at fetch time from the mounted Secret folder (see adapter_sources), so a
rotated Secret is used by the next download without a restart.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from rayleigh_serving.adapter_sources import ADAPTER_SECRETS_ROOT, AdapterSpec

# A PEFT LoRA adapter directory has this file; vLLM refuses a directory without it.
ADAPTER_CONFIG = "adapter_config.json"
_COMPLETE = ".rayleigh-complete"


class AdapterFetchError(RuntimeError):
    """An adapter that cannot be fetched; the message says which and why."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def secrets_root() -> Path:
    return Path(os.environ.get("RAYLEIGH_ADAPTER_SECRETS_DIR") or ADAPTER_SECRETS_ROOT)


def cache_root() -> Path:
    """Where s3:// adapters are downloaded: RAYLEIGH_ADAPTER_CACHE, else beside the HF cache."""
    explicit = os.environ.get("RAYLEIGH_ADAPTER_CACHE")
    if explicit:
        return Path(explicit)
    hf_home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(hf_home) / "rayleigh-adapters"


def _secret_value(spec: AdapterSpec, key: str, *, required: bool) -> str | None:
    if spec.secret is None:
        return None
    folder = secrets_root() / spec.secret
    path = folder / key
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not folder.is_dir():
            raise AdapterFetchError(
                f"adapter {spec.name!r}: Secret {spec.secret!r} is not mounted at {folder} "
                "(the operator mounts Secrets named by secretRef; in local mode set RAYLEIGH_ADAPTER_SECRETS_DIR "
                "to a folder holding one folder per Secret)"
            ) from None
        if required:
            raise AdapterFetchError(f"adapter {spec.name!r}: Secret {spec.secret!r} has no key {key!r}") from None
        return None


def _check_adapter_dir(spec: AdapterSpec, path: Path, where: str) -> Path:
    if not (path / ADAPTER_CONFIG).is_file():
        raise AdapterFetchError(
            f"adapter {spec.name!r}: {where} holds no {ADAPTER_CONFIG} (is it a PEFT LoRA adapter?)"
        )
    return path


def fetch_adapter(spec: AdapterSpec) -> Path:
    """The local directory of `spec`'s weights, downloading it first where needed."""
    if spec.kind in ("file", "pvc"):
        path = Path(spec.location)
        if not path.is_dir():
            raise AdapterFetchError(f"adapter {spec.name!r}: {path} is not a directory on this replica")
        return _check_adapter_dir(spec, path, str(path))
    if spec.kind == "hf":
        return _fetch_hf(spec)
    if spec.kind == "s3":
        return _fetch_s3(spec)
    raise AdapterFetchError(f"adapter {spec.name!r}: unknown source kind {spec.kind!r}")


def _fetch_hf(spec: AdapterSpec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # Read at call time (huggingface_hub reads its constants once, at import).
    cache = os.environ.get("HF_HUB_CACHE") or str(
        Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    )
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE"))
    where = f"hf://{spec.location}" + (f"@{spec.revision}" if spec.revision else "")
    try:
        path = snapshot_download(
            spec.location,
            revision=spec.revision,
            cache_dir=cache,
            token=_secret_value(spec, "token", required=True),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as e:
        hint = " (HF_HUB_OFFLINE is set: only the cache is used)" if offline else ""
        raise AdapterFetchError(f"adapter {spec.name!r}: {where} is not in the cache {cache}{hint}: {e}") from None
    except HfHubHTTPError as e:
        raise AdapterFetchError(f"adapter {spec.name!r}: downloading {where} failed: {e}") from None
    return _check_adapter_dir(spec, Path(path), where)


def _s3_client(spec: AdapterSpec):  # type: ignore[no-untyped-def]
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise AdapterFetchError(
            f"adapter {spec.name!r}: s3:// adapters need boto3 on the replica (pip install rayleigh[serving])"
        ) from None
    session = boto3.session.Session(
        aws_access_key_id=_secret_value(spec, "AWS_ACCESS_KEY_ID", required=True),
        aws_secret_access_key=_secret_value(spec, "AWS_SECRET_ACCESS_KEY", required=True),
        aws_session_token=_secret_value(spec, "AWS_SESSION_TOKEN", required=False),
        region_name=spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    # S3-compatible stores rarely serve virtual-hosted bucket names: address by path there.
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}) if spec.endpoint else None
    return session.client("s3", endpoint_url=spec.endpoint, config=config)


def _fetch_s3(spec: AdapterSpec) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"s3://{spec.location}/{spec.prefix}".rstrip("/")
    key_prefix = f"{spec.prefix}/" if spec.prefix else ""
    try:
        client = _s3_client(spec)
        objects: list[tuple[str, str, int]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=spec.location, Prefix=key_prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    objects.append((obj["Key"], str(obj.get("ETag", "")), int(obj.get("Size", 0))))
        if not objects:
            raise AdapterFetchError(f"adapter {spec.name!r}: no objects under {where}")
        source_id = hashlib.sha256(f"{spec.endpoint or ''}|{where}".encode()).hexdigest()[:16]
        listing = hashlib.sha256(repr(sorted(objects)).encode()).hexdigest()[:16]
        final = cache_root() / "s3" / source_id / listing
        if (final / _COMPLETE).is_file():
            return _check_adapter_dir(spec, final, where)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=final.parent))
        try:
            for key, _, _ in objects:
                rel = key[len(key_prefix) :]
                target = (tmp / rel).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise AdapterFetchError(f"adapter {spec.name!r}: object key {key!r} escapes its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(spec.location, key, str(target))
            _check_adapter_dir(spec, tmp, where)
            (tmp / _COMPLETE).write_text(where)
            try:
                tmp.rename(final)
            except OSError:  # another replica on this machine finished first
                if not (final / _COMPLETE).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except (BotoCoreError, ClientError) as e:
        raise AdapterFetchError(f"adapter {spec.name!r}: reading {where} failed: {e}") from None
    return final

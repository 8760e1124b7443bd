"""LoRA adapter sources, and the adapter list as the replicas' Serve `user_config` (pure, no Ray).

Adapters are not vLLM engine arguments (static `lora_modules`): they travel in the Serve
deployment's `user_config`, which Ray Serve hands to `reconfigure()` on the live replicas without
restarting them (a change of the application's `args`, which hold the engine arguments, restarts
every replica). So adding or removing an adapter in the spec loads or unloads it on the running
replicas (`rayleigh_serving.adapters`), both in local mode and under the operator.

Sources (spec.adapters[].source):
  file:///abs/path            a directory on the replica's machine (local mode)
  pvc://claim/path            a PersistentVolumeClaim the operator mounts under PVC_MOUNT_ROOT
  hf://org/name[@revision]    the Hugging Face Hub, downloaded by the replica into its HF cache
                              (HF_HOME; HF_HUB_OFFLINE=1 serves it from the cache without network)
  s3://bucket/prefix          S3 or an S3-compatible store (spec.adapters[].s3.endpoint)
Download credentials come from a Secret named by spec.adapters[].secretRef, mounted read-only
into the Ray pods under ADAPTER_SECRETS_ROOT/<name>/ (keys: `token` for hf://, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and optionally AWS_SESSION_TOKEN for s3://); the values never enter the
Serve config, which the Ray dashboard shows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayleigh_api.errors import FieldErrors

if TYPE_CHECKING:
    from rayleigh_api import ModelDeployment

# Where the operator mounts the Secrets adapters name (one folder per Secret); a replica reads the
# folder from RAYLEIGH_ADAPTER_SECRETS_DIR when set (local mode, tests), else from here.
ADAPTER_SECRETS_ROOT = "/var/run/rayleigh/adapter-secrets"
# vLLM's LoRA knobs: the batch-mix default while adapters exist, and the host-memory cache sized
# for the most adapters a spec may list (so that every listed adapter stays loaded, as before).
DEFAULT_MAX_LORAS = 4
MAX_ADAPTERS = 32

_HF = re.compile(r"hf://(?P<org>[A-Za-z0-9][\w.\-]*)/(?P<name>[\w.\-]+)(@(?P<rev>[\w.\-/]+))?")
_S3 = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(/(?P<prefix>.*))?")
_PVC = re.compile(r"pvc://(?P<claim>[a-z0-9]([-a-z0-9]*[a-z0-9])?)(/(?P<path>.*))?")


class AdapterSourceError(FieldErrors):
    """A malformed adapter source; `problems` lists (field, message)."""


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter as a replica needs it: what to fetch and from where. JSON-able (`user_config`)."""

    name: str
    kind: str  # file | pvc | hf | s3
    location: str  # file/pvc: a local path; hf: 'org/name'; s3: 'bucket'
    revision: str | None = None  # hf: commit, branch or tag
    prefix: str = ""  # s3: key prefix, without a trailing '/'
    secret: str | None = None  # Secret name (a folder under the secrets root)
    endpoint: str | None = None  # s3: S3-compatible endpoint URL
    region: str | None = None  # s3: signing region

    def to_json(self) -> dict[str, Any]:
        # Every key, None included: the operator compares what it wants with what Serve runs as a
        # subset (extra keys are fine there), so a key left out could never be seen to go away.
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterSpec:
        return cls(**data)


def parse_adapter_source(name: str, source: str, *, field: str, pvc_root: str, local_base: Path | None) -> AdapterSpec:
    """Parse an adapter source URI; AdapterSourceError names `field` and says what was expected."""
    if source.startswith("file://"):
        path = source[len("file://") :]
        if not path:
            raise AdapterSourceError([(field, "file:// source has no path (expected file:///abs/path)")])
        p = Path(path)
        if not p.is_absolute():
            if local_base is None:
                raise AdapterSourceError(
                    [(field, f"relative file:// path {path!r} only works in local mode (rayleigh up)")]
                )
            p = local_base / p
        return AdapterSpec(name, "file", str(p))
    if source.startswith("pvc://"):
        m = _PVC.fullmatch(source)
        if not m:
            raise AdapterSourceError([(field, f"expected pvc://claim/path with a DNS-label claim, got {source!r}")])
        sub = (m.group("path") or "").strip("/")
        return AdapterSpec(name, "pvc", str(Path(pvc_root) / m.group("claim") / sub).rstrip("/"))
    if source.startswith("hf://"):
        m = _HF.fullmatch(source.rstrip("/"))
        if not m:
            raise AdapterSourceError([(field, f"expected hf://org/name or hf://org/name@revision, got {source!r}")])
        return AdapterSpec(name, "hf", f"{m.group('org')}/{m.group('name')}", revision=m.group("rev"))
    if source.startswith("s3://"):
        m = _S3.fullmatch(source)
        if not m:
            raise AdapterSourceError(
                [(field, f"expected s3://bucket/prefix (bucket: 3-63 of a-z 0-9 . -), got {source!r}")]
            )
        return AdapterSpec(name, "s3", m.group("bucket"), prefix=(m.group("prefix") or "").strip("/"))
    raise AdapterSourceError([(field, f"unsupported source {source!r}: expected hf://, s3://, pvc:// or file://")])


def adapter_specs(md: ModelDeployment, *, pvc_root: str, local_base: Path | None = None) -> list[AdapterSpec]:
    """Every spec.adapters[] entry as an AdapterSpec (all problems reported at once)."""
    out: list[AdapterSpec] = []
    problems: list[tuple[str, str]] = []
    for i, adapter in enumerate(md.spec.adapters):
        field = f"spec.adapters[{i}]"
        try:
            spec = parse_adapter_source(
                adapter.name, adapter.source, field=f"{field}.source", pvc_root=pvc_root, local_base=local_base
            )
        except AdapterSourceError as e:
            problems.extend(e.problems)
            continue
        if adapter.secret_ref and spec.kind not in ("hf", "s3"):
            problems.append((f"{field}.secretRef", "secretRef needs an hf:// or s3:// source"))
        if adapter.s3 is not None and spec.kind != "s3":
            problems.append((f"{field}.s3", "s3 (endpoint, region) needs an s3:// source"))
        s3 = adapter.s3
        out.append(
            AdapterSpec(
                spec.name,
                spec.kind,
                spec.location,
                revision=spec.revision,
                prefix=spec.prefix,
                secret=adapter.secret_ref,
                endpoint=s3.endpoint if s3 else None,
                region=s3.region if s3 else None,
            )
        )
    if problems:
        raise AdapterSourceError(problems)
    return out


def lora_engine_kwargs(md: ModelDeployment) -> dict[str, Any]:
    """vLLM's LoRA engine arguments: fixed while adapters come and go, so that no change of the
    adapter list changes the engine (which would restart the replicas). LoRA is on while the spec
    lists adapters, or always when engine.maxLoras is set."""
    engine = md.spec.engine
    if not md.spec.adapters and engine.max_loras is None:
        return {}
    max_loras = engine.max_loras or DEFAULT_MAX_LORAS
    return {
        "enable_lora": True,
        "max_loras": max_loras,
        "max_lora_rank": engine.max_lora_rank,
        "max_cpu_loras": max(MAX_ADAPTERS, max_loras),
    }


def adapters_user_config(base_model: str, adapters: list[AdapterSpec]) -> dict[str, Any]:
    """The Serve deployment `user_config` a replica's `reconfigure()` receives."""
    return {"base_model": base_model, "adapters": [a.to_json() for a in adapters]}

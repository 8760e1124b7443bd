"""The pure mapping from a ModelDeployment to a Ray Serve application config.

`build_serve_config(md)` returns the dict that both `rayleigh up` and the operator send to the Ray
dashboard's `PUT /api/serve/applications/` (and that `serve.run(build_app(**args))` accepts
locally). This module imports neither Ray nor vLLM, so the operator image can use it; the list of
engine arguments vLLM accepts is a data file generated from vLLM (a test keeps it in sync).

Mapping (spec field -> vLLM engine argument, all under the LLMConfig's `engine_kwargs`):
  model.source              -> model_loading_config.model_source (file:// path, hf:// repo id,
                               pvc:// mount path, s3:// mirror)
  model.revision            -> revision
  model.servedModelName     -> model_loading_config.model_id (vLLM's served_model_name)
  model.quantization        -> quantization (omitted for 'none')
  model.dtype               -> dtype
  model.maxModelLen         -> max_model_len
  model.ropeScaling         -> hf_overrides.rope_parameters {rope_type, factor, original_max_position_embeddings}
                               (merged into the model's own by the replica: hf_overrides.py), and for
                               yarn hf_overrides.max_position_embeddings = factor x original
  model.chatTemplate        -> chat_template (inline Jinja)
  engine.tensorParallelSize -> tensor_parallel_size
  engine.pipelineParallelSize -> pipeline_parallel_size
  engine.gpuMemoryUtilization -> gpu_memory_utilization
  engine.kvCacheDtype       -> kv_cache_dtype
  engine.enablePrefixCaching -> enable_prefix_caching
  engine.maxNumSeqs         -> max_num_seqs
  engine.maxNumBatchedTokens -> max_num_batched_tokens
  engine.extraArgs          -> the named argument ('--foo-bar=1' -> foo_bar: 1)
  adapters[]                -> the LLMServer deployment's user_config (adapter_sources.py): loaded and
                               unloaded on live replicas by reconfigure(), never a restart
  adapters[] non-empty, or engine.maxLoras -> enable_lora, max_loras, max_lora_rank, max_cpu_loras
  replicas                  -> the LLMServer deployment's num_replicas (0: autoscaling_config 0..1
                               from 0), outside `args`: a replica count change never restarts a replica
  serving.maxOngoingRequests -> deployment_config.max_ongoing_requests
  serving.streamBatchingIntervalMs -> experimental_configs.stream_batching_interval_ms
  routing.strategy, routing.balanceFactor -> under Serve's proxy ingress only:
                               deployment_config.request_router_config {request_router_class:
                               Rayleigh's router, request_router_kwargs}; under HAProxy the Ray
                               nodes' HAProxy balance (rayleigh_serving.ingress.ray_env), and Ray
                               refuses a custom router on an HAProxy ingress deployment
  resources.gpus == 0       -> accelerator_config {kind: cpu}, enforce_eager, VLLM_TARGET_DEVICE=cpu
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayleigh_api.errors import FieldErrors
from rayleigh_serving.adapter_sources import AdapterSourceError, adapter_specs, adapters_user_config, lora_engine_kwargs
from rayleigh_serving.ingress import DEFAULT_INGRESS, check_ingress, default_ingress

if TYPE_CHECKING:
    from rayleigh_api import ModelDeployment
    from rayleigh_api.model_spec import RopeScaling

# The Serve application builder the config points at (runs inside the Ray cluster).
IMPORT_PATH = "rayleigh_serving.app:build_app"
# Where the operator mounts PersistentVolumeClaims named in pvc:// sources, one folder per claim.
PVC_MOUNT_ROOT = "/mnt/rayleigh/pvc"
# Where hf:// sources are downloaded in the cluster (an emptyDir or a cache PVC).
HF_CACHE_DIR = "/mnt/rayleigh/hf-cache"
# The Serve deployment name of the model replicas (one deployment per application).
DEPLOYMENT_NAME = "LLMServer"
# Health checks: vLLM's check is cheap, but a replica busy with a burst can be slow to answer on a
# loaded CPU; three misses in a row (period x 3) before Serve restarts it. Model loading happens in
# the constructor, which Serve never health-checks (startup is probed separately: the replica is
# only routed to once the engine started).
HEALTH_CHECK_PERIOD_S = 10
HEALTH_CHECK_TIMEOUT_S = 30
# Serve's request router for spec.routing (rayleigh_serving.router; the class path is kept here so
# that this module imports no Ray).
ROUTER_CLASS = "rayleigh_serving.router.RayleighRouter"
# Requests in flight on one replica keep streaming this long when it is stopped (scale-down, update).
GRACEFUL_SHUTDOWN_TIMEOUT_S = 60


class ServeConfigError(FieldErrors):
    """A spec that cannot be turned into a working vLLM engine; `problems` lists (field, message)."""


@dataclass(frozen=True)
class ResolvedSource:
    """Where vLLM loads weights from, and what it needs for that."""

    model_source: str  # a local path, an HF repo id or an s3:// URI
    kind: str  # file | hf | pvc | s3


@lru_cache(maxsize=1)
def vllm_argument_names() -> dict[str, frozenset[str]]:
    """Engine and frontend argument names of the vLLM version the replica image ships."""
    text = resources.files("rayleigh_serving").joinpath("vllm_args.json").read_text()
    data = json.loads(text)
    return {"engine": frozenset(data["engine"]), "frontend": frozenset(data["frontend"])}


def resolve_source(source: str, *, field: str, local_base: Path | None = None) -> ResolvedSource:
    """Turn a spec source URI into what vLLM / Ray Serve LLM load from."""
    if source.startswith("file://"):
        path = source[len("file://") :]
        if not path:
            raise ServeConfigError([(field, "file:// source has no path")])
        p = Path(path)
        if not p.is_absolute():
            if local_base is None:
                raise ServeConfigError(
                    [(field, f"relative file:// path {path!r} only works in local mode (rayleigh up)")]
                )
            p = local_base / p
        return ResolvedSource(str(p), "file")
    if source.startswith("hf://"):
        repo = source[len("hf://") :].strip("/")
        if repo.count("/") != 1:
            raise ServeConfigError([(field, f"expected hf://org/name, got {source!r}")])
        return ResolvedSource(repo, "hf")
    if source.startswith("pvc://"):
        rest = source[len("pvc://") :].strip("/")
        claim, _, sub = rest.partition("/")
        if not claim:
            raise ServeConfigError([(field, f"expected pvc://claim/path, got {source!r}")])
        return ResolvedSource(str(Path(PVC_MOUNT_ROOT) / claim / sub).rstrip("/"), "pvc")
    if source.startswith("s3://"):
        return ResolvedSource(source.rstrip("/"), "s3")
    raise ServeConfigError([(field, f"unsupported source {source!r}: expected file://, hf://, pvc:// or s3://")])


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def parse_extra_args(extra_args: list[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """'--flag=value' strings -> engine kwargs; unknown flags are reported, not passed on."""
    names = vllm_argument_names()
    known = names["engine"] | names["frontend"]
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for i, arg in enumerate(extra_args):
        m = re.fullmatch(r"--?([A-Za-z0-9][A-Za-z0-9_\-]*)(?:=(.*))?", arg, flags=re.S)
        if not m:
            problems.append((f"spec.engine.extraArgs[{i}]", f"{arg!r} is not of the form --flag or --flag=value"))
            continue
        key = m.group(1).replace("-", "_")
        if key.startswith("no_") and m.group(2) is None and key[3:] in known:
            out[key[3:]] = False
            continue
        if key not in known:
            problems.append(
                (
                    f"spec.engine.extraArgs[{i}]",
                    f"vLLM has no argument --{key.replace('_', '-')} (see `vllm serve --help`)",
                )
            )
            continue
        out[key] = True if m.group(2) is None else _parse_value(m.group(2))
    return out, problems


def rope_overrides(rope: RopeScaling) -> dict[str, Any]:
    """`hf_overrides` for spec.model.ropeScaling (the replica merges them into the model's config).

    vLLM extends the context by `factor` for linear and dynamic scaling, but reads YaRN's
    `max_position_embeddings` as the already scaled length (as Transformers' YaRN does): for 'yarn'
    it is set to factor x originalMaxPositionEmbeddings, or the engine would keep the model's own
    limit and refuse a maxModelLen beyond it.
    """
    params: dict[str, Any] = {"rope_type": rope.type, "factor": rope.factor}
    out: dict[str, Any] = {"rope_parameters": params}
    if rope.original_max_position_embeddings is not None:
        params["original_max_position_embeddings"] = rope.original_max_position_embeddings
        if rope.type == "yarn":
            out["max_position_embeddings"] = int(rope.factor * rope.original_max_position_embeddings)
    return out


def engine_kwargs_for(md: ModelDeployment, *, local_base: Path | None = None) -> dict[str, Any]:
    """The vLLM engine (and frontend) keyword arguments for a ModelDeployment's spec."""
    spec = md.spec
    model, engine = spec.model, spec.engine
    problems: list[tuple[str, str]] = []
    kw: dict[str, Any] = {
        "dtype": model.dtype,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "pipeline_parallel_size": engine.pipeline_parallel_size,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "kv_cache_dtype": engine.kv_cache_dtype,
        "enable_prefix_caching": engine.enable_prefix_caching,
    }
    if model.quantization != "none":
        kw["quantization"] = model.quantization
    if model.revision:
        kw["revision"] = model.revision
    if model.max_model_len is not None:
        kw["max_model_len"] = model.max_model_len
    if model.rope_scaling is not None:
        kw["hf_overrides"] = rope_overrides(model.rope_scaling)
    if model.chat_template:
        kw["chat_template"] = model.chat_template
    if engine.max_num_seqs is not None:
        kw["max_num_seqs"] = engine.max_num_seqs
    if engine.max_num_batched_tokens is not None:
        kw["max_num_batched_tokens"] = engine.max_num_batched_tokens
    if spec.resources.gpus == 0:
        # vLLM's CPU backend has no CUDA graphs.
        kw["enforce_eager"] = True
    if model.source.startswith("hf://") and local_base is None:
        kw["download_dir"] = HF_CACHE_DIR
    kw.update(lora_engine_kwargs(md))
    extra, extra_problems = parse_extra_args(list(engine.extra_args))
    problems.extend(extra_problems)
    for key in extra:
        if key in kw or key in ("model", "served_model_name"):
            problems.append(
                ("spec.engine.extraArgs", f"--{key.replace('_', '-')} is set by a spec field; use that field")
            )
    kw.update({k: v for k, v in extra.items() if k not in kw})
    if problems:
        raise ServeConfigError(problems)
    return kw


def replica_count(replicas: int) -> dict[str, Any]:
    """The Serve replica count for spec.replicas: options of the application's `deployments` entry.

    Not in `args`: Serve hashes an application's `args` into its code version, and a new code
    version replaces every replica (ray.serve deploy_utils.get_app_code_version); a count in the
    `deployments` entry is a lightweight update (replicas are added or removed, the others keep
    serving). Both options are always set (one of them null), so the count replaces whatever the
    application's builder chose (Ray Serve LLM's default is an autoscaling range).

    Serve refuses `num_replicas: 0` (`.options()` raises), so zero (scale to zero) is an autoscaling
    range 0..1 that starts at 0: Serve stops the running replica at once (graceful shutdown) and
    the engine's memory is freed, with or without worker pods (a shared `--external-ray` cluster
    with free CPUs included). The wake sets num_replicas 1 again. A request that reaches Serve
    while at zero also makes Serve start a replica (its own scale-from-zero path); in a cluster it
    waits for the worker pod the wake brings back.
    """
    if replicas == 0:
        return {
            "num_replicas": None,
            "autoscaling_config": {"min_replicas": 0, "initial_replicas": 0, "max_replicas": 1},
        }
    return {"num_replicas": replicas, "autoscaling_config": None}


def build_llm_config(
    md: ModelDeployment, *, local_base: Path | None = None, ingress: str = DEFAULT_INGRESS
) -> dict[str, Any]:
    """The `ray.serve.llm.LLMConfig` for a ModelDeployment, as a JSON-able dict, for a Ray cluster
    whose Serve ingress is `ingress` (rayleigh_serving.ingress)."""
    spec = md.spec
    served = md.served_model_name()
    if not served:
        raise ServeConfigError([("metadata.name", "set metadata.name or spec.model.servedModelName")])
    source = resolve_source(spec.model.source, field="spec.model.source", local_base=local_base)
    kwargs = engine_kwargs_for(md, local_base=local_base)
    env_vars: dict[str, str] = {}
    cfg: dict[str, Any] = {
        "model_loading_config": {"model_id": served, "model_source": source.model_source},
        "engine_kwargs": kwargs,
        "log_engine_metrics": True,
        "deployment_config": {
            "name": DEPLOYMENT_NAME,
            "health_check_period_s": HEALTH_CHECK_PERIOD_S,
            "health_check_timeout_s": HEALTH_CHECK_TIMEOUT_S,
            "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        },
    }
    if check_ingress(ingress) == "proxy":
        cfg["deployment_config"]["request_router_config"] = {
            "request_router_class": ROUTER_CLASS,
            "request_router_kwargs": {"strategy": spec.routing.strategy, "balance_factor": spec.routing.balance_factor},
        }
    if spec.serving.max_ongoing_requests is not None:
        cfg["deployment_config"]["max_ongoing_requests"] = spec.serving.max_ongoing_requests
    if spec.serving.stream_batching_interval_ms is not None:
        cfg["experimental_configs"] = {"stream_batching_interval_ms": spec.serving.stream_batching_interval_ms}
    if spec.resources.gpus == 0:
        cfg["accelerator_config"] = {"kind": "cpu"}
        env_vars["VLLM_TARGET_DEVICE"] = "cpu"
    if source.kind == "hf" and local_base is None:
        env_vars["HF_HOME"] = HF_CACHE_DIR
    if env_vars:
        cfg["runtime_env"] = {"env_vars": env_vars}
    return cfg


def build_serve_config(
    md: ModelDeployment,
    *,
    route_prefix: str = "/",
    app_name: str | None = None,
    local_base: Path | None = None,
    http_host: str = "0.0.0.0",
    http_port: int = 8000,
    hf_hub_offline: bool | None = None,
    ingress: str | None = None,
) -> dict[str, Any]:
    """The Ray Serve config (`ServeDeploySchema`) serving one ModelDeployment.

    `ingress` is the Serve ingress of the Ray cluster it goes to (rayleigh_serving.ingress; None:
    `default_ingress()`, what `rayleigh up` and the test stacks start): it decides where
    spec.routing goes.

    `local_base` marks local mode (`rayleigh up`, tests): relative file:// sources resolve against
    it and hf:// downloads go to the user's Hugging Face cache instead of the cluster's cache
    volume. `hf_hub_offline` sets HF_HUB_OFFLINE for the replicas (None leaves it to their env).

    The Hugging Face token is never part of this config (the dashboard shows it to anyone): the
    operator puts the Secret in the Ray pods' environment as HF_TOKEN, which vLLM reads.
    Note that `PUT /api/serve/applications/` is declarative over *all* applications: a config
    without an application removes it (and `DELETE` removes every application).
    """
    llm_config = build_llm_config(md, local_base=local_base, ingress=ingress or default_ingress())
    try:
        adapters = adapter_specs(md, pvc_root=PVC_MOUNT_ROOT, local_base=local_base)
    except AdapterSourceError as e:
        raise ServeConfigError(e.problems) from None
    app_env: dict[str, str] = {}
    if hf_hub_offline is not None:
        app_env["HF_HUB_OFFLINE"] = "1" if hf_hub_offline else "0"
        llm_config.setdefault("runtime_env", {}).setdefault("env_vars", {})["HF_HUB_OFFLINE"] = app_env[
            "HF_HUB_OFFLINE"
        ]
    if not route_prefix.startswith("/"):
        raise ServeConfigError([("route_prefix", f"must start with '/', got {route_prefix!r}")])
    app: dict[str, Any] = {
        "name": app_name or md.name or md.served_model_name(),
        "route_prefix": route_prefix,
        "import_path": IMPORT_PATH,
        "args": {"llm_config": llm_config},
        # The adapter list and the replica count live here, not in `args`: a user_config change
        # reconfigures the live replicas, a replica count adds or removes replicas, a change of
        # `args` restarts them all (ray.serve deploy_utils.get_app_code_version).
        "deployments": [
            {
                "name": llm_config["deployment_config"]["name"],
                "user_config": adapters_user_config(md.served_model_name(), adapters),
                **replica_count(md.spec.replicas),
            }
        ],
    }
    if app_env:
        app["runtime_env"] = {"env_vars": app_env}
    return {
        "http_options": {"host": http_host, "port": http_port},
        "applications": [app],
    }

"""`rayleigh operator`: run the kopf operator and its tracker in one asyncio loop."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rayleigh_operator.flags import FLAG_NAMES, options_from_flags, render_flags

if TYPE_CHECKING:
    from rayleigh_operator.state import OperatorConfig


@click.command("operator")
@click.option("--kubeconfig", default=None, help="Kubeconfig file (default: in-cluster, then $KUBECONFIG).")
@click.option("--context", default=None, help="Kubeconfig context.")
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Namespace to watch (repeatable); default: all.")
@click.option(
    "--dashboard-url",
    default="http://{name}-head.{namespace}.svc:8265",
    show_default=True,
    help="Ray dashboard URL template ({name}, {namespace}).",
)
@click.option(
    "--endpoint",
    default=None,
    help="status.endpoint template ({name}, {namespace}, {route_prefix}): the gateway's /v1 URL clients call. "
    "Default: the model's own in-cluster Serve URL, http://{name}-serve.{namespace}.svc:8000{route_prefix}/v1 "
    "(no gateway).",
)
@click.option("--app-name", default="{name}", show_default=True, help="Serve application name template.")
@click.option("--route-prefix", default="/", show_default=True, help="Serve route prefix template.")
@click.option(
    "--external-ray/--owned-ray",
    default=False,
    show_default=True,
    help="The Ray cluster at --dashboard-url is shared, not a child: remove the Serve app on delete.",
)
@click.option(
    "--local-base",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Resolve relative file:// model paths against this directory (local mode, tests).",
)
@click.option(
    "--poll-seconds",
    type=float,
    default=2.0,
    show_default=True,
    help="Status polling interval of a ModelDeployment that is not settled.",
)
@click.option(
    "--resync-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Full resync interval: bound on restoring deleted or edited children.",
)
@click.option("--gpu-check/--no-gpu-check", default=True, show_default=True)
@click.option(
    "--metric-check/--no-metric-check",
    default=True,
    show_default=True,
    help="Check the custom metrics API before creating an HPA.",
)
@click.option(
    "--monitoring",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Render PodMonitors: auto when monitoring.coreos.com/v1 is served.",
)
@click.option(
    "--routes-configmap",
    default="",
    help="ConfigMap in the gateway namespace gathering every model's route (the gateway mounts it, e.g. "
    "<release>-gateway-routes); default: none (no gateway: no routes are written).",
)
@click.option("--wake-port", type=int, default=0, show_default=True, help="Scale to zero: POST /wake port; 0: off.")
@click.option(
    "--prometheus-url",
    default="",
    help="Prometheus base URL for rollout analysis (docs/ROLLOUT.md); default: none (steps continue on readiness).",
)
@click.option(
    "--route-settle-seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="Rollouts: how long a Serve application is out of the gateway's route before it is removed.",
)
@click.option("--metrics-port", type=int, default=8080, show_default=True, help="Prometheus port; 0: off.")
@click.option("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING"]), default="INFO", show_default=True)
@render_flags
def operator(**params: Any) -> None:
    """Run the Rayleigh operator: ModelDeployments -> Ray clusters, Serve apps, routes."""
    config = config_from_params(params)
    log_level = params["log_level"]
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kopf's per-object INFO lines cost CPU at scale; its warnings and errors still show.
    logging.getLogger("kopf").setLevel(logging.WARNING if log_level != "DEBUG" else logging.DEBUG)
    asyncio.run(
        run_operator(
            config,
            kubeconfig=params["kubeconfig"],
            context=params["context"],
            namespaces=config.namespaces,
            metrics_port=params["metrics_port"],
            liveness=params["liveness"],
        )
    )


def config_from_params(params: dict[str, Any]) -> OperatorConfig:
    """The OperatorConfig of `rayleigh operator`'s parsed flags (click's `params`)."""
    from rayleigh_operator.state import OperatorConfig  # here: `rayleigh --help` stays cheap

    local_base: Path | None = params["local_base"]
    return OperatorConfig(
        render=options_from_flags(**{k: params[k] for k in FLAG_NAMES}),
        dashboard_url=params["dashboard_url"],
        endpoint=params["endpoint"] or None,
        app_name=params["app_name"],
        route_prefix=params["route_prefix"],
        external_ray=params["external_ray"],
        local_base=local_base.resolve() if local_base else None,
        poll_seconds=params["poll_seconds"],
        resync_seconds=params["resync_seconds"],
        wake_port=params["wake_port"],
        prometheus_url=params["prometheus_url"] or None,
        route_settle_seconds=params["route_settle_seconds"],
        gpu_check=params["gpu_check"],
        metric_check=params["metric_check"],
        monitoring=params["monitoring"],
        namespaces=tuple(params["namespaces"]),
        routes_configmap=params["routes_configmap"] or None,
    )


# Allocations between young-generation collections (CPython's default: 700), and how many young
# collections come before an older one (defaults 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Spend the operator's CPU on reconciling, not on the cyclic garbage collector.

    Each watch event and API response is parsed into thousands of small dicts and lists, so with
    CPython's default thresholds the collector runs every 700 allocations and keeps re-scanning
    the long-lived heap: kopf's, pydantic's and aiohttp's module objects plus every object's
    state. Measured in bench/operator_scale.py at 1000 objects: about a third of the operator's
    CPU time was the collector (with collection off entirely, CPU fell from about 8 s to 5 s).
    `gc.freeze()` moves everything alive after start-up (the imported modules) out of the
    collector's view, and larger thresholds make collections rare; almost all of this process's
    garbage is acyclic and freed by reference counting anyway, so memory does not grow from it.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_operator(
    config: OperatorConfig,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    namespaces: tuple[str, ...] = (),
    metrics_port: int = 0,
    liveness: str | None = None,
    stop_flag: asyncio.Event | None = None,
) -> None:
    import kopf

    from rayleigh_operator.handlers import MemoryDiffBase, MemoryProgress, build_registry
    from rayleigh_operator.kube import KubeClient, load_credentials
    from rayleigh_operator.reconciler import Reconciler

    tune_gc()  # after the imports above: the start-up heap it freezes includes them
    credentials = load_credentials(kubeconfig, context)
    reconciler = Reconciler(KubeClient(credentials), config)
    diffbase, progress = MemoryDiffBase(), MemoryProgress()
    registry = build_registry(reconciler, diffbase, progress)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(
            server=credentials.server,
            token=credentials.token,
            scheme="Bearer" if credentials.token else None,
            ca_path=credentials.ca_file,
            certificate_path=credentials.cert_file,
            private_key_path=credentials.key_file,
            insecure=credentials.insecure or None,
            default_namespace=credentials.namespace,
        )

    settings = kopf.OperatorSettings()
    prefix = "serving.rayleigh.dev"
    # kopf's state stays in memory (see handlers.MemoryDiffBase/MemoryProgress): the handler is a
    # level-triggered apply, so after a restart every object is simply applied again.
    settings.persistence.progress_storage = progress
    settings.persistence.diffbase_storage = diffbase
    settings.persistence.finalizer = f"{prefix}/operator"
    # The reconciler posts its own Events (one per status transition); kopf's would duplicate them.
    settings.posting.enabled = False
    settings.execution.max_workers = 8
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330

    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)

    tracker = asyncio.create_task(reconciler.run(), name="rayleigh-tracker")
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
        )
    finally:
        tracker.cancel()
        await asyncio.gather(tracker, return_exceptions=True)
        await reconciler.close()

"""The render flags, shared by `rayleigh render` and `rayleigh operator`.

`@render_flags` adds the options that build `RenderOptions` to a click command, and
`options_from_flags(**flags)` turns their values into `RenderOptions`, so that `rayleigh render`
prints what the operator started with the same flags applies. The defaults are RenderOptions'.

Not here, because the two commands mean different things by them: `--route-prefix` (a literal
prefix for `rayleigh render`; a template over {name} and {namespace} for the operator) and
`--monitoring` (on/off for `rayleigh render`; auto/on/off for the operator, auto asking the cluster).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from rayleigh_operator.render import STANDARD_LABEL_KEYS, RenderOptions
from rayleigh_serving.ingress import INGRESS_VARIANTS, check_ingress

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = RenderOptions()

# Label syntax (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue) and
# namespace names (IsDNS1123Label).
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _pairs(
    value: Iterable[str], param: click.Parameter | None, *, reserved: frozenset[str] = frozenset()
) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(val):
            raise click.BadParameter(
                f"{item!r}: expected KEY=VALUE with a valid Kubernetes label key and value", param=param
            )
        if key in reserved:
            raise click.BadParameter(f"{key!r} is one of the labels the operator sets itself", param=param)
        out[key] = val
    return tuple(out.items())


def _labels(
    ctx: click.Context | None, param: click.Parameter | None, value: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    return _pairs(value, param)


def _extra_labels(
    ctx: click.Context | None, param: click.Parameter | None, value: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    return _pairs(value, param, reserved=STANDARD_LABEL_KEYS)


def _namespaces(ctx: click.Context | None, param: click.Parameter | None, value: Iterable[str]) -> tuple[str, ...]:
    for ns in value:
        if not _DNS_LABEL.match(ns):
            raise click.BadParameter(f"{ns!r} is not a namespace name", param=param)
    return tuple(dict.fromkeys(value))


def _shown(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def render_flags(command: F) -> F:
    """Add the render flags to a click command (its callback gets them as keyword arguments)."""
    options = [  # in the order `--help` lists them
        click.option(
            "--image",
            default=None,
            help="Ray + vLLM (CPU build) replica image for ModelDeployments without spec.image.name and with "
            f"resources.gpus 0 [default: {_DEFAULTS.image}]",
        ),
        click.option(
            "--gpu-image",
            default=None,
            help="Ray + vLLM (CUDA build) replica image for ModelDeployments without spec.image.name and with "
            f"resources.gpus > 0 [default: {_DEFAULTS.gpu_image}]",
        ),
        click.option(
            "--serve-ingress",
            type=click.Choice(INGRESS_VARIANTS),
            default=_DEFAULTS.serve_ingress,
            show_default=True,
            help="How HTTP reaches the Serve replicas in the Ray pods: haproxy (Ray's HAProxy ingress, replicas "
            "serve HTTP themselves) or proxy (Ray Serve's Python proxy actor); docs/SERVING.md",
        ),
        click.option("--gateway-namespace", default=_DEFAULTS.gateway_namespace, show_default=True),
        click.option("--operator-namespace", default=_DEFAULTS.operator_namespace, show_default=True),
        click.option("--gcs-redis-address", default=None, help="host:port of a Redis for Ray GCS fault tolerance."),
        click.option("--gcs-redis-password-secret", default=None, help="Secret (key 'password') for that Redis."),
        click.option(
            "--podmonitor-label",
            "podmonitor_labels",
            multiple=True,
            callback=_extra_labels,
            metavar="KEY=VALUE",
            help="Label added to every PodMonitor (repeatable), e.g. release=kube-prometheus-stack: "
            "what your Prometheus' podMonitorSelector matches.",
        ),
        click.option(
            "--metrics-namespace",
            "metrics_namespaces",
            multiple=True,
            callback=_namespaces,
            metavar="NAMESPACE",
            help="Namespace whose pods may scrape the model pods' metrics port (repeatable); default: any namespace.",
        ),
        click.option(
            "--gateway-pod-label",
            "gateway_pod_labels",
            multiple=True,
            callback=_labels,
            metavar="KEY=VALUE",
            help="Label of the gateway pods the per-model NetworkPolicies admit to the Serve port (repeatable; "
            f"replaces the default) [default: {_shown(_DEFAULTS.gateway_pod_labels)}]",
        ),
        click.option(
            "--operator-pod-label",
            "operator_pod_labels",
            multiple=True,
            callback=_labels,
            metavar="KEY=VALUE",
            help="Label of the operator pods the per-model NetworkPolicies admit to the Ray dashboard (repeatable; "
            f"replaces the default) [default: {_shown(_DEFAULTS.operator_pod_labels)}]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def options_from_flags(
    *,
    image: str | None = None,
    gpu_image: str | None = None,
    serve_ingress: str = _DEFAULTS.serve_ingress,
    gateway_namespace: str = _DEFAULTS.gateway_namespace,
    operator_namespace: str = _DEFAULTS.operator_namespace,
    gcs_redis_address: str | None = None,
    gcs_redis_password_secret: str | None = None,
    podmonitor_labels: Iterable[tuple[str, str]] = (),
    metrics_namespaces: Iterable[str] = (),
    gateway_pod_labels: Iterable[tuple[str, str]] = (),
    operator_pod_labels: Iterable[tuple[str, str]] = (),
) -> RenderOptions:
    """The RenderOptions the render flags give (an empty `--image`/`--gpu-image` keeps the default image; no
    `--gateway-pod-label`/`--operator-pod-label` keeps the default selector labels)."""
    options = RenderOptions(
        gateway_namespace=gateway_namespace,
        operator_namespace=operator_namespace,
        gcs_redis_address=gcs_redis_address,
        gcs_redis_password_secret=gcs_redis_password_secret,
        podmonitor_labels=dict(podmonitor_labels),
        metrics_namespaces=tuple(metrics_namespaces),
        serve_ingress=check_ingress(serve_ingress),
    )
    if gateway := dict(gateway_pod_labels):
        options = dataclasses.replace(options, gateway_pod_labels=gateway)
    if operator := dict(operator_pod_labels):
        options = dataclasses.replace(options, operator_pod_labels=operator)
    if image:
        options = dataclasses.replace(options, image=image)
    if gpu_image:
        options = dataclasses.replace(options, gpu_image=gpu_image)
    return options


# The keyword arguments `render_flags` adds to a command: options_from_flags' parameters.
FLAG_NAMES = tuple(inspect.signature(options_from_flags).parameters)

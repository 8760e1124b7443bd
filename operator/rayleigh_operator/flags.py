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
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rayleigh_operator.render import RenderOptions

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULTS = RenderOptions()


def render_flags(command: F) -> F:
    """Add the render flags to a click command (its callback gets them as keyword arguments)."""
    options = [  # in the order `--help` lists them
        click.option(
            "--image",
            default=None,
            help=f"Ray + vLLM replica image for ModelDeployments without spec.image.name [default: {_DEFAULTS.image}]",
        ),
        click.option("--gateway-namespace", default=_DEFAULTS.gateway_namespace, show_default=True),
        click.option("--operator-namespace", default=_DEFAULTS.operator_namespace, show_default=True),
        click.option("--gcs-redis-address", default=None, help="host:port of a Redis for Ray GCS fault tolerance."),
        click.option("--gcs-redis-password-secret", default=None, help="Secret (key 'password') for that Redis."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def options_from_flags(
    *,
    image: str | None = None,
    gateway_namespace: str = _DEFAULTS.gateway_namespace,
    operator_namespace: str = _DEFAULTS.operator_namespace,
    gcs_redis_address: str | None = None,
    gcs_redis_password_secret: str | None = None,
) -> RenderOptions:
    """The RenderOptions the render flags give (an empty `--image` keeps the default image)."""
    options = RenderOptions(
        gateway_namespace=gateway_namespace,
        operator_namespace=operator_namespace,
        gcs_redis_address=gcs_redis_address,
        gcs_redis_password_secret=gcs_redis_password_secret,
    )
    if image:
        options = dataclasses.replace(options, image=image)
    return options


# The keyword arguments `render_flags` adds to a command: options_from_flags' parameters.
FLAG_NAMES = tuple(inspect.signature(options_from_flags).parameters)

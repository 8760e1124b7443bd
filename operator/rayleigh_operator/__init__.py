"""Rayleigh's operator: ModelDeployments -> Ray clusters, Serve applications, gateway routes, status.

The top floor: it imports rayleigh_api, rayleigh_gateway (routes) and rayleigh_serving (the Serve
config). Pure parts: `render` (children), `status` (phase and conditions), `subset`; the rest is
the kopf operator (`handlers`, `reconciler` and its parts) and the `rayleigh operator` and
`rayleigh render` commands. docs/OPERATOR.md lists every module.
"""

__version__ = "0.1.0"

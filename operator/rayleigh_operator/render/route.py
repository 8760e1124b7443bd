"""The gateway's route for one ModelDeployment, as the ConfigMap `rayleigh-route-NAME`.

The route itself comes from `rayleigh_gateway.routes.route_for` (the one function that turns a
ModelDeployment into its route, shared with local mode); this module only wraps it.
"""

from __future__ import annotations

import json
from typing import Any

import rayleigh_api as api
from rayleigh_gateway.routes import RouteError, route_for
from rayleigh_operator.render.names import ROUTE_LABEL, child_name, metadata, serve_backend_url
from rayleigh_operator.render.options import RenderError, RenderOptions

ROUTE_KEY = "route.json"


def render_route(md: api.ModelDeployment, options: RenderOptions) -> dict[str, Any]:
    try:
        route = route_for(md, serve_backend_url(md, options))
    except RouteError as exc:
        raise RenderError(exc.problems) from None
    body = route.model_dump(mode="json", by_alias=True)
    meta = metadata(md, child_name(md, "route"), "route")
    meta["labels"][ROUTE_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {ROUTE_KEY: json.dumps(body, indent=2, sort_keys=True) + "\n"},
    }

"""Ray dashboard REST client for Serve applications, and the pure decisions around it.

`PUT /api/serve/applications/` is declarative over every application deployed through it: an
application missing from the body is deleted, and `DELETE` removes all of them (including ones
started with `serve.run`). So this client never calls DELETE; to add, update or remove one
application it GETs the current state, keeps every other declaratively deployed application as
it is, and PUTs the result. Ray accepts two applications on one route prefix while only one gets
the traffic, so a conflicting prefix is refused here before any PUT.

Ray token auth: with a token, every request carries `Authorization: Bearer <token>`, the header the
dashboard checks first (ray/_private/authentication/http_token_authentication.py,
`token_auth_middleware`; authentication_constants.py). It answers 401 without a token and 403 with a
wrong one; `ServeError.status` tells the caller, which then reads the token again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rayleigh_operator.subset import subset

APPLICATIONS_PATH = "/api/serve/applications/"


class ServeError(Exception):
    """The dashboard refused or could not be reached; `reachable` tells which."""

    def __init__(self, message: str, *, reachable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.reachable = reachable
        self.status = status

    @property
    def auth_refused(self) -> bool:
        """The dashboard wants a token (401) or another one (403)."""
        return self.status in (401, 403)


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class AppState:
    """What Serve reports about one application."""

    status: str  # NOT_STARTED, DEPLOYING, DEPLOY_FAILED, RUNNING, UNHEALTHY, DELETING, or MISSING
    message: str = ""
    running_replicas: int = 0
    target_replicas: int | None = None
    deployed_config: dict[str, Any] | None = None
    replicas: list[dict[str, Any]] = field(default_factory=list)


def app_state(details: dict[str, Any], app_name: str, deployment_name: str) -> AppState:
    app = (details.get("applications") or {}).get(app_name)
    if not app:
        return AppState("MISSING")
    dep = (app.get("deployments") or {}).get(deployment_name) or {}
    replicas = dep.get("replicas") or []
    running = sum(1 for r in replicas if r.get("state") == "RUNNING")
    target = dep.get("target_num_replicas")
    if target is None:
        target = ((dep.get("deployment_config") or {}).get("num_replicas")) if dep else None
    message = app.get("message") or ""
    if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY") and dep.get("message"):
        message = message or dep["message"]
    return AppState(
        status=str(app.get("status") or "NOT_STARTED"),
        message=message,
        running_replicas=running,
        target_replicas=target,
        deployed_config=app.get("deployed_app_config"),
        replicas=replicas,
    )


def route_conflict(details: dict[str, Any], app_name: str, route_prefix: str) -> str | None:
    """Name of another application already serving `route_prefix`, if any."""
    for name, app in (details.get("applications") or {}).items():
        if name != app_name and app.get("route_prefix") == route_prefix and app.get("status") != "DELETING":
            return str(name)
    return None


def needs_push(desired_app: dict[str, Any], state: AppState) -> bool:
    """Whether Serve runs something other than `desired_app` (or nothing)."""
    if state.status == "MISSING" or state.deployed_config is None:
        return True
    return not subset(desired_app, state.deployed_config)


def declarative_apps(details: dict[str, Any], *, except_name: str | None = None) -> list[dict[str, Any]]:
    """Every application deployed through the REST API, as its deployed config (others untouched)."""
    out = []
    for name, app in sorted((details.get("applications") or {}).items()):
        config = app.get("deployed_app_config")
        if name != except_name and config and app.get("status") != "DELETING":
            out.append(config)
    return out


def put_body(details: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The PUT body that adds or updates the one application in `desired` and keeps the others.

    `desired` is a full config from `build_serve_config` (one application). When Serve already
    runs, its HTTP options are kept (they cannot change without restarting Serve).
    """
    (app,) = desired["applications"]
    body: dict[str, Any] = {k: v for k, v in desired.items() if k != "applications"}
    running_http = details.get("http_options")
    if running_http and details.get("controller_info", {}).get("actor_id"):
        body["http_options"] = {k: running_http[k] for k in ("host", "port") if k in running_http}
    if details.get("proxy_location"):
        body["proxy_location"] = details["proxy_location"]
    body["applications"] = [*declarative_apps(details, except_name=app["name"]), app]
    return body


def put_apps(
    details: dict[str, Any], desired: dict[str, Any], apps: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    """The PUT body that sets each application in `apps` (None: removes it) and keeps every other
    one as Serve runs it: during a rollout the slot not in `apps` keeps its own version and count
    (`desired` lends only its HTTP options)."""
    body = put_body(details, {**desired, "applications": [next(a for a in desired["applications"])]})
    body["applications"] = [a for a in declarative_apps(details) if a["name"] not in apps]
    body["applications"] += [a for a in apps.values() if a is not None]
    return body


def remove_body(details: dict[str, Any], app_name: str) -> dict[str, Any]:
    body: dict[str, Any] = {"applications": declarative_apps(details, except_name=app_name)}
    running_http = details.get("http_options")
    if running_http:
        body["http_options"] = {k: running_http[k] for k in ("host", "port") if k in running_http}
    if details.get("proxy_location"):
        body["proxy_location"] = details["proxy_location"]
    return body


class ServeClient:
    """GET/PUT of Serve applications on one Ray dashboard."""

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(3.0, timeout_s))
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, dashboard_url: str, *, token: str | None = None) -> dict[str, Any]:
        session = await self.session()
        try:
            url = dashboard_url.rstrip("/") + APPLICATIONS_PATH
            async with session.get(url, headers=auth_headers(token)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ServeError(
                        f"GET {APPLICATIONS_PATH}: HTTP {resp.status}: {text[:300]}", reachable=True, status=resp.status
                    )
                result: dict[str, Any] = json.loads(text)
                return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServeError(f"Ray dashboard {dashboard_url} unreachable: {exc!r}", reachable=False) from None

    async def put(self, dashboard_url: str, body: dict[str, Any], *, token: str | None = None) -> None:
        session = await self.session()
        try:
            url = dashboard_url.rstrip("/") + APPLICATIONS_PATH
            async with session.put(url, json=body, headers=auth_headers(token)) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ServeError(
                        f"Serve rejected the config (HTTP {resp.status}): {text[:500]}",
                        reachable=True,
                        status=resp.status,
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServeError(f"Ray dashboard {dashboard_url} unreachable: {exc!r}", reachable=False) from None

"""The operator's dashboard client passes Ray's own token check.

The dashboard here is a small aiohttp app that runs the installed Ray's token middleware
(ray/_private/authentication/http_token_authentication.py, the one ray/dashboard/http_server_head.py
installs) in a process started with `RAY_AUTH_MODE=token` and `RAY_AUTH_TOKEN`, as the rendered Ray
pods are: the header format, the 401/403 answers and the token comparison are Ray's, not a copy.
Starting a whole Ray head for it would take a minute; tests/operator/test_operator_ray.py runs one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from rayleigh_operator import serve_client, serve_sync
from tests.plugins.common import free_port

pytestmark = pytest.mark.timeout(60)

TOKEN = "0f" * 32

DASHBOARD = """
import sys
import aiohttp.web
from ray._raylet import Config
from ray._private.authentication.http_token_authentication import get_token_auth_middleware

Config.initialize("")  # RAY_AUTH_MODE from the environment, as every Ray process reads it


async def apps(request):
    if request.method == "PUT":
        await request.json()
    return aiohttp.web.json_response({"applications": {}})


app = aiohttp.web.Application(middlewares=[get_token_auth_middleware(aiohttp, ["/api/gcs_healthz"])])
app.router.add_route("*", "/api/serve/applications/", apps)
aiohttp.web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=lambda *a: print("ready", flush=True))
"""


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-c", DASHBOARD, str(port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_the_token_opens_the_dashboard_and_no_or_another_token_does_not(dashboard: str) -> None:
    client = serve_client.ServeClient()
    try:
        assert await client.get(dashboard, token=TOKEN) == {"applications": {}}
        await client.put(dashboard, {"applications": []}, token=TOKEN)
        for token, status in ((None, 401), ("1" * 64, 403)):
            with pytest.raises(serve_client.ServeError) as err:
                await client.get(dashboard, token=token)
            assert (err.value.status, err.value.auth_refused, err.value.reachable) == (status, True, True)
            with pytest.raises(serve_client.ServeError) as err:
                await client.put(dashboard, {"applications": []}, token=token)
            assert err.value.auth_refused
    finally:
        await client.close()


def test_external_ray_token_comes_from_rays_own_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert serve_sync.external_ray_token() is None
    path = os.path.join(str(tmp_path), "token")
    with open(path, "w") as f:
        f.write(TOKEN + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", path)
    assert serve_sync.external_ray_token() == TOKEN
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert serve_sync.external_ray_token() == "from-env"

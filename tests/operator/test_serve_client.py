"""Pure decisions around the Serve REST API: keeping other apps, prefixes, when to push."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from rayleigh_operator import drift, reconciler, serve_client, state
from tests.plugins.common import EXAMPLES_DIR

OTHER = {"name": "tiny", "route_prefix": "/", "import_path": "x:y", "args": {}}
MINE = {"name": "m-op", "route_prefix": "/m-op", "import_path": "x:y", "args": {"n": 1}}


def details(*apps: dict[str, Any], status: str = "RUNNING") -> dict[str, Any]:
    return {
        "controller_info": {"actor_id": "abc"},
        "http_options": {"host": "127.0.0.1", "port": 41234, "request_timeout_s": None},
        "proxy_location": "EveryNode",
        "applications": {
            a["name"]: {
                "route_prefix": a["route_prefix"],
                "status": status,
                "deployed_app_config": a,
                "deployments": {
                    "LLMServer": {"target_num_replicas": 2, "replicas": [{"state": "RUNNING"}, {"state": "STARTING"}]}
                },
            }
            for a in apps
        },
    }


def desired(app: dict[str, Any]) -> dict[str, Any]:
    return {"http_options": {"host": "0.0.0.0", "port": 8000}, "applications": [app]}


def test_put_keeps_other_applications_and_running_http_options() -> None:
    body = serve_client.put_body(details(OTHER), desired(MINE))
    assert [a["name"] for a in body["applications"]] == ["tiny", "m-op"]
    assert body["http_options"] == {"host": "127.0.0.1", "port": 41234}


def test_put_replaces_an_older_version_of_the_same_application() -> None:
    old = {**MINE, "args": {"n": 0}}
    body = serve_client.put_body(details(OTHER, old), desired(MINE))
    assert body["applications"] == [OTHER, MINE]


def test_put_apps_keeps_the_other_slot_as_serve_runs_it() -> None:
    """A rollout changes one slot: the other keeps its deployed version and replica count (not
    the spec's, which would start the new version's replicas in the old slot too)."""
    running_old = {**MINE, "args": {"n": 0, "replicas": 1}}
    new_slot = {**MINE, "name": "m-op-b", "route_prefix": "/m-op/b", "args": {"n": 1, "replicas": 1}}
    body = serve_client.put_apps(details(OTHER, running_old), desired(MINE), {"m-op-b": new_slot})
    by_name = {a["name"]: a for a in body["applications"]}
    assert by_name == {"tiny": OTHER, "m-op": running_old, "m-op-b": new_slot}
    body = serve_client.put_apps(details(OTHER, running_old, new_slot), desired(MINE), {"m-op": None})
    assert {a["name"]: a for a in body["applications"]} == {"tiny": OTHER, "m-op-b": new_slot}
    assert body["http_options"] == {"host": "127.0.0.1", "port": 41234}


def test_put_apps_on_a_fresh_cluster_deploys_only_the_apps_given() -> None:
    body = serve_client.put_apps({"applications": {}}, desired(MINE), {"m-op": MINE})
    assert body["applications"] == [MINE] and body["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_put_on_a_fresh_cluster_uses_the_configs_http_options() -> None:
    body = serve_client.put_body({"applications": {}}, desired(MINE))
    assert body["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_remove_keeps_every_other_application() -> None:
    assert serve_client.remove_body(details(OTHER, MINE), "m-op")["applications"] == [OTHER]


def test_imperative_apps_are_not_in_the_put() -> None:
    d = details(OTHER)
    d["applications"]["tiny"]["deployed_app_config"] = None
    assert serve_client.put_body(d, desired(MINE))["applications"] == [MINE]


def test_route_prefix_taken_by_another_app_is_a_conflict() -> None:
    assert serve_client.route_conflict(details(OTHER), "m-op", "/") == "tiny"
    assert serve_client.route_conflict(details(OTHER), "m-op", "/m-op") is None
    assert serve_client.route_conflict(details(MINE), "m-op", "/m-op") is None


def test_needs_push_only_when_serve_runs_something_else() -> None:
    state = serve_client.app_state(details(MINE), "m-op", "LLMServer")
    assert not serve_client.needs_push(MINE, state)
    assert serve_client.needs_push({**MINE, "args": {"n": 2}}, state)
    assert serve_client.needs_push(MINE, serve_client.app_state(details(), "m-op", "LLMServer"))


def test_app_state_counts_running_replicas_and_target() -> None:
    state = serve_client.app_state(details(MINE), "m-op", "LLMServer")
    assert (state.status, state.running_replicas, state.target_replicas) == ("RUNNING", 1, 2)
    assert serve_client.app_state(details(), "m-op", "LLMServer").status == "MISSING"


def test_drift_ignores_fields_the_api_server_adds() -> None:
    desired_obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "a", "labels": {"x": "1"}},
        "spec": {"ports": [{"port": 8000}]},
    }
    observed = {
        "metadata": {"name": "a", "labels": {"x": "1"}, "uid": "u"},
        "spec": {"ports": [{"port": 8000, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
    }
    assert not drift.drifted(desired_obj, observed)
    observed["spec"]["ports"][0]["port"] = 9000
    assert drift.drifted(desired_obj, observed)
    assert drift.drifted(desired_obj, None)


class SlowDeclarativeHead(serve_client.ServeClient):
    """In-memory stand-in for a Ray dashboard's declarative Serve API: a PUT replaces every
    application. GET yields to the event loop, so concurrent read-modify-writes interleave the way
    they can on a loaded head; a real head cannot be made to produce that interleaving on demand
    (the real-head delete path is covered by tests/operator/test_operator_ray.py)."""

    def __init__(self, *apps: dict[str, Any]) -> None:
        super().__init__()
        self.apps = {a["name"]: a for a in apps}

    async def get(self, dashboard_url: str, *, token: str | None = None) -> dict[str, Any]:
        snapshot = details(*self.apps.values())
        await asyncio.sleep(0.01)
        return snapshot

    async def put(self, dashboard_url: str, body: dict[str, Any], *, token: str | None = None) -> None:
        self.apps = {a["name"]: a for a in body["applications"]}


def md_body(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": "default"}
    return dict(doc)


def shared_head_reconciler(head: SlowDeclarativeHead) -> reconciler.Reconciler:
    """A reconciler whose ModelDeployments all share one external Ray head (`{name}-op` apps)."""
    return reconciler.Reconciler(
        kube=None,  # type: ignore[arg-type]  # deploying/removing a Serve app never touches the Kubernetes API
        config=reconciler.OperatorConfig(app_name="{name}-op", dashboard_url="http://head:8265", external_ray=True),
        serve=head,
    )


async def test_two_deletes_on_one_shared_head_remove_both_applications() -> None:
    a, b = {**MINE, "name": "a-op"}, {**MINE, "name": "b-op", "route_prefix": "/b-op"}
    head = SlowDeclarativeHead(OTHER, a, b)
    rec = shared_head_reconciler(head)
    await asyncio.gather(rec.remove_serve_app(md_body("a")), rec.remove_serve_app(md_body("b")))
    assert set(head.apps) == {"tiny"}


async def test_a_deleted_model_deployment_is_never_deployed_again_by_the_tracker() -> None:
    head = SlowDeclarativeHead(OTHER)
    rec = shared_head_reconciler(head)
    entry = rec.entry_for(md_body("a"))
    entry.md = state.parse_spec(md_body("a"))
    entry.head_ready = True
    await rec.remove_serve_app(md_body("a"))
    await rec.sync_serve(entry)
    assert set(head.apps) == {"tiny"}


def _app_for(adapters: list[dict[str, Any]]) -> dict[str, Any]:
    from rayleigh_api import ModelDeployment
    from rayleigh_serving.config import build_serve_config

    doc = {
        "metadata": {"name": "m-op", "namespace": "llm"},
        "spec": {"model": {"source": "hf://o/m"}, "adapters": adapters},
    }
    app: dict[str, Any] = build_serve_config(ModelDeployment.model_validate(doc), app_name="m-op")["applications"][0]
    return app


def test_an_adapter_list_change_is_pushed_even_when_a_setting_goes_away() -> None:
    with_endpoint = _app_for([{"name": "a", "source": "s3://bkt/a", "s3": {"endpoint": "http://minio:9000"}}])
    without = _app_for([{"name": "a", "source": "s3://bkt/a"}])
    running = serve_client.app_state(details(with_endpoint), "m-op", "LLMServer")
    assert serve_client.needs_push(with_endpoint, running) is False
    assert serve_client.needs_push(without, running) is True
    assert serve_client.needs_push(_app_for([]), running) is True

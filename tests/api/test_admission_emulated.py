"""The emulated API server admits ModelDeployments as kube-apiserver does (tests/emulator_admission.py).

Every invalid spec of test_invalid_specs.py is applied with the real kubectl (server-side apply,
as users and Argo CD do) and must be refused with HTTP 422 `Invalid` naming the field, with the
same Status body as the API server's (`details.causes[].field`). The CRD's own schema and CEL rules
decide, not the project's pydantic model: the emulator knows only the CRD, as the API server does.
A synthetic CRD covers what the ModelDeployment CRD has no rule for (transition rules with
`oldSelf`, a rule that cannot be evaluated). What cannot be shown here (a real kube-apiserver's
cel-go, OpenAPI v3 publishing for kubectl's client-side validation) is in the kind workflow.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.api.helpers import tiny
from tests.api.test_invalid_specs import CASES, Case
from tests.emulator_identity import api_call
from tests.plugins.kube import Kube

pytestmark = pytest.mark.timeout(120)

MD_PATH = "/apis/serving.rayleigh.dev/v1alpha1/namespaces/default/modeldeployments"


def _doc(case: Case, name: str) -> dict[str, Any]:
    doc = case.base()
    case.mutate(doc)
    doc["metadata"] = {"name": name, "namespace": "default"}
    return doc


@pytest.mark.parametrize("case", [c for c in CASES if c.layer != "strict"], ids=lambda c: c.id)
def test_kubectl_apply_of_an_invalid_spec_is_refused_with_the_field_path(kube: Kube, case: Case) -> None:
    name = f"bad-{case.id}"[:42].rstrip("-")
    doc = _doc(case, name)
    stderr = kube.kubectl(
        "apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert f'The ModelDeployment "{name}" is invalid' in stderr, stderr
    assert f"{case.path}:" in stderr, stderr
    assert kube.get("md", name) is None
    # The Status body itself, as a client library sees it.
    status, body, _ = api_call(kube.url, "POST", MD_PATH, body=doc)
    assert (status, body["reason"], body["kind"]) == (422, "Invalid", "Status"), body
    assert body["message"].startswith(f'ModelDeployment.serving.rayleigh.dev "{name}" is invalid: ')
    assert body["details"]["name"] == name and body["details"]["kind"] == "ModelDeployment"
    causes = [c for c in body["details"]["causes"] if c["field"] == case.path]
    assert causes, body["details"]["causes"]
    if case.layer == "cel":
        assert any(case.fragment in c["message"] for c in causes), causes


def test_an_unknown_field_is_refused_by_apply_and_dropped_or_refused_by_other_writes(kube: Kube) -> None:
    (case,) = [c for c in CASES if c.layer == "strict"]
    doc = _doc(case, "unknown-field")
    # Server-side apply: the structured-merge typed conversion fails (a 500 on a real API server).
    stderr = kube.kubectl(
        "apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert ".spec.modle: field not declared in schema" in stderr, stderr
    # POST with fieldValidation=Strict (what kubectl sends with --validate=strict): 400.
    status, body, _ = api_call(kube.url, "POST", MD_PATH, body=doc, params={"fieldValidation": "Strict"})
    assert status == 400 and body["reason"] == "BadRequest"
    assert body["message"].endswith('strict decoding error: unknown field "spec.modle"'), body
    # Warn (the default): stored without the field, with a warning header.
    status, body, headers = api_call(kube.url, "POST", MD_PATH, body=doc)
    assert status == 201, body
    assert "modle" not in body["spec"]
    assert headers.get("Warning") == '299 - "unknown field \\"spec.modle\\""'
    kube.kubectl("delete", "md", "unknown-field")


def test_defaults_of_the_schema_are_stored(kube: Kube) -> None:
    doc = tiny()
    doc["metadata"] = {"name": "defaulted", "namespace": "default"}
    doc["spec"].pop("replicas", None)
    status, body, _ = api_call(kube.url, "POST", MD_PATH, body=doc)
    if status == 422:
        pytest.fail(f"the tiny example is refused by the CRD itself: {body['message']}")
    assert status == 201
    stored = kube.get("md", "defaulted")
    assert stored is not None and stored["spec"]["replicas"] == 1 and "engine" in stored["spec"]
    kube.kubectl("delete", "md", "defaulted")


def test_every_example_is_admitted(kube: Kube, examples_dir: Any) -> None:
    refused = {}
    for path in sorted(examples_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ModelDeployment":
                continue
            doc = copy.deepcopy(doc)
            doc["metadata"] = {"name": f"example-{path.stem}"[:42], "namespace": "default"}
            status, body, _ = api_call(kube.url, "POST", MD_PATH, body=doc)
            if status != 201:
                refused[path.name] = body.get("message")
            else:
                kube.kubectl("delete", "md", doc["metadata"]["name"], "--wait=false")
    assert refused == {}


# --- a synthetic CRD: transition rules, rules that cannot be evaluated, ratcheting ------------------

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.rayleigh.dev"},
    "spec": {
        "group": "test.rayleigh.dev",
        "scope": "Namespaced",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "x-kubernetes-validations": [
                                            {"rule": "self >= oldSelf", "message": "size may only grow"}
                                        ],
                                    },
                                    "class": {
                                        "type": "string",
                                        "default": "small",
                                        "x-kubernetes-validations": [
                                            {"rule": "self == oldSelf", "message": "class is immutable"}
                                        ],
                                    },
                                    "ratio": {
                                        "type": "integer",
                                        "x-kubernetes-validations": [
                                            {"rule": "100 / self > 1", "message": "ratio must be below 100"}
                                        ],
                                    },
                                    "ports": {
                                        "type": "array",
                                        "x-kubernetes-list-type": "map",
                                        "x-kubernetes-list-map-keys": ["name"],
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "port"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "port": {"type": "integer"},
                                            },
                                            "x-kubernetes-validations": [
                                                {"rule": "self.port == oldSelf.port", "message": "a port is immutable"}
                                            ],
                                        },
                                    },
                                    "limit": {"type": "integer", "maximum": 10},
                                },
                            },
                            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
                        },
                    }
                },
            }
        ],
    },
}
WIDGETS = "/apis/test.rayleigh.dev/v1/namespaces/default/widgets"
MERGE = "application/merge-patch+json"


@pytest.fixture(scope="module")
def widgets(kube: Kube) -> Kube:
    kube.kubectl("apply", "--server-side", "--validate=false", "-f", "-", input=yaml.safe_dump(WIDGET_CRD))
    return kube


def _widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "test.rayleigh.dev/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


def _causes(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["field"], c["message"]) for c in body["details"]["causes"]]


def test_transition_rules_run_on_update_only_against_the_old_value(widgets: Kube) -> None:
    assert api_call(widgets.url, "POST", WIDGETS, body=_widget("w1", size=3))[0] == 201
    stored = widgets.get("widget", "w1")
    assert stored is not None and stored["spec"]["class"] == "small"  # defaulted, then immutable
    status, body, _ = api_call(widgets.url, "PATCH", f"{WIDGETS}/w1", body={"spec": {"size": 2}}, content_type=MERGE)
    assert status == 422
    assert _causes(body) == [("spec.size", 'Invalid value: "integer": size may only grow')]
    assert (
        body["message"]
        == 'Widget.test.rayleigh.dev "w1" is invalid: spec.size: Invalid value: "integer": size may only grow'
    )
    status, body, _ = api_call(
        widgets.url, "PATCH", f"{WIDGETS}/w1", body={"spec": {"class": "big"}}, content_type=MERGE
    )
    assert status == 422 and _causes(body) == [("spec.class", 'Invalid value: "string": class is immutable')]
    assert api_call(widgets.url, "PATCH", f"{WIDGETS}/w1", body={"spec": {"size": 4}}, content_type=MERGE)[0] == 200


def test_list_items_correlate_by_their_map_keys(widgets: Kube) -> None:
    ports = [{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]
    assert api_call(widgets.url, "POST", WIDGETS, body=_widget("w2", size=1, ports=ports))[0] == 201
    reordered = {
        "spec": {"ports": [{"name": "grpc", "port": 90}, {"name": "http", "port": 80}, {"name": "new", "port": 1}]}
    }
    assert api_call(widgets.url, "PATCH", f"{WIDGETS}/w2", body=reordered, content_type=MERGE)[0] == 200
    changed = {"spec": {"ports": [{"name": "grpc", "port": 91}]}}
    status, body, _ = api_call(widgets.url, "PATCH", f"{WIDGETS}/w2", body=changed, content_type=MERGE)
    assert status == 422 and _causes(body) == [("spec.ports[0]", 'Invalid value: "object": a port is immutable')]


def test_a_rule_that_cannot_be_evaluated_refuses_the_object(widgets: Kube) -> None:
    status, body, _ = api_call(widgets.url, "POST", WIDGETS, body=_widget("w3", size=1, ratio=0))
    assert status == 422
    ((field, message),) = _causes(body)
    assert field == "spec.ratio"
    assert message.startswith('Invalid value: "integer": division by zero evaluating rule: ratio must be below 100')


def test_schema_errors_block_the_cel_rules_and_unchanged_errors_are_ratcheted(widgets: Kube) -> None:
    # A bound (Invalid) does not block the CEL rules; a type error (TypeInvalid) does.
    status, body, _ = api_call(widgets.url, "POST", WIDGETS, body=_widget("w4", size=0, ratio=0))
    assert status == 422
    assert [c[0] for c in _causes(body)] == ["spec.size", "spec.ratio"]
    assert _causes(body)[0][1] == "Invalid value: 0: spec.size in body should be greater than or equal to 1"
    status, body, _ = api_call(widgets.url, "POST", WIDGETS, body={**_widget("w4"), "spec": {"size": "x"}})
    assert _causes(body) == [
        ("spec.size", 'Invalid value: "x": spec.size in body must be of type integer: "string"'),
        (
            "<nil>",
            'Invalid value: "null": some validation rules were not checked because the object was invalid; '
            "correct the existing errors to complete validation",
        ),
    ]
    # Stored before a rule existed (admission off); later writes that leave it alone are accepted.
    with widgets.without_admission():
        assert api_call(widgets.url, "POST", WIDGETS, body=_widget("w5", size=1, limit=50))[0] == 201
    assert (
        api_call(widgets.url, "PATCH", f"{WIDGETS}/w5", body={"metadata": {"labels": {"a": "b"}}}, content_type=MERGE)[
            0
        ]
        == 200
    )
    merge_status = {"status": {"ready": True}}
    assert api_call(widgets.url, "PATCH", f"{WIDGETS}/w5/status", body=merge_status, content_type=MERGE)[0] == 200
    status, body, _ = api_call(widgets.url, "PATCH", f"{WIDGETS}/w5", body={"spec": {"limit": 40}}, content_type=MERGE)
    assert status == 422 and _causes(body)[0][0] == "spec.limit"


def test_metadata_name_must_be_a_dns_subdomain(widgets: Kube) -> None:
    status, body, _ = api_call(widgets.url, "POST", WIDGETS, body=_widget("Bad_Name", size=1))
    assert status == 422 and _causes(body)[0][0] == "metadata.name"
    assert "a lowercase RFC 1123 subdomain" in _causes(body)[0][1]

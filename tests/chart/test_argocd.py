"""The Argo CD Applications: what Argo CD renders from them works in a cluster.

No Argo CD runs here. Its two steps are reproduced instead: the chart Application's values are
rendered by the real helm (what Argo CD's `helm template` does) and validated; the models
Application's ModelDeployments are loaded and turned into the Serve config the operator would
push, with the operator flags that chart render gives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rayleigh_api.loading import load_model_deployment
from rayleigh_operator.run import operator
from rayleigh_serving.config import build_serve_config
from tests.chart.helpers import CHART, K8S_VERSION, ROOT, helm

pytestmark = pytest.mark.timeout(60)

ARGOCD = ROOT / "manifests" / "argocd"


def applications() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((ARGOCD / "application.yaml").read_text()) if d]
    return {d["metadata"]["name"]: d for d in docs}


def chart_render(tmp_path: Path) -> list[dict[str, Any]]:
    app = applications()["rayleigh"]
    values = tmp_path / "values.json"
    values.write_text(json.dumps(app["spec"]["source"]["helm"]["valuesObject"]))
    out = helm(
        "template",
        app["spec"]["source"]["helm"]["releaseName"],
        str(ROOT / app["spec"]["source"]["path"]),
        "--namespace",
        app["spec"]["destination"]["namespace"],
        "--kube-version",
        K8S_VERSION,
        "-f",
        str(values),
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def model_files() -> list[Path]:
    app = applications()["rayleigh-models"]
    folder = ROOT / app["spec"]["source"]["path"]
    return sorted(folder.glob(app["spec"]["source"]["directory"]["include"]))


def test_replicas_are_ignored_on_the_application_that_holds_the_model_deployments() -> None:
    apps = applications()
    assert "ignoreDifferences" not in apps["rayleigh"]["spec"], "the chart Application holds no ModelDeployment"
    models = apps["rayleigh-models"]["spec"]
    assert {"group": "serving.rayleigh.dev", "kind": "ModelDeployment", "jsonPointers": ["/spec/replicas"]} in models[
        "ignoreDifferences"
    ]
    # Without it, a sync would still write Git's replicas over the HPA's.
    assert "RespectIgnoreDifferences=true" in models["syncPolicy"]["syncOptions"]
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in model_files()}
    assert kinds == {"ModelDeployment"}


def test_chart_application_renders_valid_objects_without_lookup_secrets(tmp_path: Path) -> None:
    docs = chart_render(tmp_path)
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # `helm template` cannot read Secrets back: a generated key store or Redis password would change
    # on every render (perpetual OutOfSync, and a new password for half the pods).
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == []


def test_the_models_applications_sources_resolve_with_the_operator_the_chart_application_installs(
    tmp_path: Path,
) -> None:
    docs = chart_render(tmp_path)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rayleigh-operator"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    local_base = operator.make_context("operator", list(args)).params["local_base"]
    files = model_files()
    assert files
    for path in files:
        md = load_model_deployment(path)
        # What the operator does with each model (raises ServeConfigError for a source it rejects).
        config = build_serve_config(md, local_base=local_base)
        source = config["applications"][0]["args"]["llm_config"]["model_loading_config"]["model_source"]
        assert source.startswith("/opt/rayleigh/"), source


def test_chart_application_values_pass_the_charts_schema(tmp_path: Path) -> None:
    import jsonschema

    from tests.chart.schema_values import effective_values

    values = effective_values(CHART, applications()["rayleigh"]["spec"]["source"]["helm"]["valuesObject"])
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(values))

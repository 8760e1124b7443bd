"""Every values document the schema accepts renders objects the API server accepts.

Documents are generated from values.schema.json itself (tests/chart/schema_values.py) and merged
over the chart's defaults the way Helm does. Those the schema accepts are rendered by the real helm
binary (`helm template`), and then every rendered object must pass the Kubernetes 1.34 OpenAPI
schemas (kubernetes-validate, strict), the operator and gateway containers' arguments must parse
with their real commands, and the gateway's config file must load with the gateway's own model.
A document the schema refuses must be refused by Helm too (the two validators agree).

Bounded: 25 examples, one `helm template` each (RAYLEIGH_SCHEMA_EXAMPLES raises it for a longer
hunt), no shrinking (each step would cost a helm run: a failure shows the whole document);
derandomized, so CI sees the same documents every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from rayleigh_gateway.routes import ConfigError, parse_config
from tests.chart.helpers import CHART, K8S_VERSION, NAMESPACE, helm
from tests.chart.schema_values import SchemaStrategies, effective_values, to_yaml

pytestmark = pytest.mark.timeout(180)

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
STRATEGIES = SchemaStrategies(SCHEMA)
EXAMPLES = int(os.environ.get("RAYLEIGH_SCHEMA_EXAMPLES", "25"))
# CRD kinds: not in the built-in schemas (their structure is checked by the other chart tests).
CRD_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/")
# Rules across two values that JSON Schema cannot state; the chart refuses them with these messages.
DELIBERATE_REFUSALS = (
    "gateway.pdb.minAvailable=",
    "gateway.metricsPort=",
    # Redis settings that contradict each other (rayleigh.redisValidate in _helpers.tpl).
    "redis.sentinel.",
    "redis.tls.",
    "redis.username is set, but the bundled Redis",
    "redis.url is a rediss://",
    "redis.url refers to $(REDIS_PASSWORD)",
)


def schema_errors(values: dict[str, Any]) -> list[str]:
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in STRATEGIES.validator.iter_errors(values)]


def check_rendered(docs: list[dict[str, Any]]) -> None:
    from rayleigh_gateway.cli import gateway
    from rayleigh_operator.run import operator

    assert docs, "nothing rendered"
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            assert isinstance(doc["metadata"]["name"], str)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kind, spec = doc["kind"], doc.get("spec") or {}
        pod = spec.get("template", {}).get("spec") if kind == "Deployment" else None
        for container in (pod or {}).get("containers", []):
            command = {"operator": operator, "gateway": gateway}.get(container["name"])
            if command is not None:
                command.make_context(container["name"], list(container["args"]))
        if kind == "ConfigMap" and "gateway.yaml" in doc.get("data", {}):
            parse_config(yaml.safe_load(doc["data"]["gateway.yaml"]), "gateway ConfigMap")


def distinct_routes(values: dict[str, Any]) -> bool:
    """The one rule the schema cannot state: route names are unique (the gateway's config model
    refuses a duplicate with a message naming it). A model served by two routes is valid: the
    gateway serves it from the oldest route and drops the other (tested in tests/gateway)."""
    routes = values.get("gateway", {}).get("routes", [])
    names = [(r.get("namespace", "default"), r["name"]) for r in routes]
    return len(set(names)) == len(names)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    # No shrinking: each step would cost a `helm template`; the failing document is shown whole.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(document=STRATEGIES.values(), data=st.data())
def test_values_the_schema_accepts_render_objects_the_api_server_accepts(
    document: dict[str, Any], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    values = effective_values(CHART, document)
    errors = schema_errors(values)
    path = Path(tmp_path_factory.mktemp("values")) / "values.yaml"
    path.write_text(to_yaml(document))
    args = ["template", "rayleigh", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    if data.draw(st.booleans(), label="cluster serves monitoring.coreos.com/v1"):
        args += ["--api-versions", "monitoring.coreos.com/v1"]
    result = helm(*args, "-f", str(path), check=False)
    shown = json.dumps(document, ensure_ascii=True)[:4000]
    if errors:
        assert result.returncode != 0, f"helm accepted values the schema refuses ({errors}): {shown}"
        assert "don't meet the specifications of the schema" in result.stderr, result.stderr
        event("refused by the schema")
        return
    if result.returncode != 0 and any(
        "execution error at" in result.stderr and m in result.stderr for m in DELIBERATE_REFUSALS
    ):
        event("refused by a cross-field check")
        return
    assert result.returncode == 0, f"schema-valid values failed to render: {result.stderr}\nvalues: {shown}"
    if not distinct_routes(values):
        with pytest.raises(ConfigError, match=r"duplicate route"):
            check_rendered([d for d in yaml.safe_load_all(result.stdout) if d])
        event("rendered; the gateway refuses the duplicate routes")
        return
    try:
        check_rendered([d for d in yaml.safe_load_all(result.stdout) if d])
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}\nvalues: {shown}") from exc
    event("rendered and valid")


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(redis=STRATEGIES.of(SCHEMA["properties"]["redis"]))
def test_redis_values_the_schema_accepts_render_or_are_refused_saying_why(
    redis: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The same, over the redis subtree alone (user, TLS Secrets, Sentinel, URL drawn together):
    whole documents rarely combine them. Every schema-valid combination renders a gateway the real
    command accepts, or is one the chart refuses with a message naming the redis.* values."""
    document = {"redis": redis}
    values = effective_values(CHART, document)
    path = Path(tmp_path_factory.mktemp("values")) / "values.yaml"
    path.write_text(to_yaml(document))
    args = ["template", "rayleigh", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    result = helm(*args, "-f", str(path), check=False)
    shown = json.dumps(document, ensure_ascii=True)
    if schema_errors(values):
        assert result.returncode != 0, f"helm accepted values the schema refuses: {shown}"
        event("refused by the schema")
        return
    if result.returncode != 0:
        assert "execution error at" in result.stderr and any(m in result.stderr for m in DELIBERATE_REFUSALS), (
            f"{result.stderr}\nvalues: {shown}"
        )
        event("refused by a cross-field check")
        return
    check_rendered([d for d in yaml.safe_load_all(result.stdout) if d])
    event("rendered and valid")


def test_the_generator_produces_the_strings_that_broke_the_chart() -> None:
    """The strategies are not vacuous: they produce the values that used to break the rendered YAML
    or turn into numbers (control characters in free text, a digits-only name), and documents that
    switch components off."""
    from hypothesis import find

    # No shrinking: any example that meets the condition shows the strategy is not vacuous (shrinking
    # the first one found took a minute of the suite).
    small = settings(
        max_examples=300,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    props = SCHEMA["properties"]
    find(
        STRATEGIES.of(props["gateway"]["properties"]["podAnnotations"]),
        lambda a: any(ord(c) < 32 for v in a.values() for c in v),
        settings=small,
    )
    find(STRATEGIES.of(props["nameOverride"]), lambda s: s.isdigit(), settings=small)
    find(
        STRATEGIES.of(props["operator"]["properties"]["serviceAccount"]),
        lambda s: s.get("name", "x").isdigit(),
        settings=small,
    )
    find(STRATEGIES.of(props["redis"]), lambda r: r.get("enabled") is False and not r.get("url"), settings=small)
    find(
        STRATEGIES.of(props["redis"]),
        lambda r: (
            any(h.startswith("[") for h in r.get("sentinel", {}).get("hosts", [])) and r.get("tls", {}).get("enabled")
        ),
        # Two rare choices at once: 300 examples found it on most runs, not all (find stops at the first).
        settings=settings(small, max_examples=5000),
    )

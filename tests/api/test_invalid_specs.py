"""Each rule of the API rejects a spec that breaks it, with the field path in the message.

Every case is checked three ways: `rayleigh validate` (what a user runs) fails and names the field;
and the rule itself, as written in the CRD, rejects it: CEL rules evaluated by cel-python on the
defaulted object, OpenAPI rules by a JSON-schema validator on the CRD's openAPIV3Schema. What
cannot be checked offline is the API server running them: that belongs to the kind e2e workflow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from rayleigh_api import crd
from rayleigh_api.cli import main
from rayleigh_api.validation import apply_defaults, evaluate_rule

from .helpers import gpu_model, tiny

Doc = dict[str, Any]


@dataclass(frozen=True)
class Case:
    id: str
    base: Callable[[], Doc]
    mutate: Callable[[Doc], None]
    path: str
    fragment: str
    layer: str  # "cel", "openapi", or "strict" (unknown fields: kubectl's strict field validation)


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        node = doc
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def _all(*mutations: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        for m in mutations:
            m(doc)

    return mutate


def _drop_served_name(doc: Doc) -> None:
    doc["spec"]["model"].pop("servedModelName", None)


def _drop_model(doc: Doc) -> None:
    del doc["spec"]["model"]


JWKS = {"issuer": "https://id.example.com/", "audience": "rayleigh", "jwksUrl": "https://id.example.com/jwks"}
HMAC_REF = {"name": "jwt-hmac"}

CASES = [
    Case("source-scheme", tiny, _set("spec.model.source", "ftp://models/x"), "spec.model.source", "hf://", "openapi"),
    Case(
        "quantization-enum",
        gpu_model,
        _set("spec.model.quantization", "int3"),
        "spec.model.quantization",
        "'awq'",
        "openapi",
    ),
    Case(
        "gpu-memory-utilization-range",
        tiny,
        _set("spec.engine.gpuMemoryUtilization", 1.5),
        "spec.engine.gpuMemoryUtilization",
        "less than or equal to 0.99",
        "openapi",
    ),
    Case(
        "negative-replicas", tiny, _set("spec.replicas", -1), "spec.replicas", "greater than or equal to 0", "openapi"
    ),
    Case(
        "tensor-parallel-zero",
        gpu_model,
        _set("spec.engine.tensorParallelSize", 0),
        "spec.engine.tensorParallelSize",
        "greater than or equal to 1",
        "openapi",
    ),
    Case(
        "jwks-url-not-https",
        gpu_model,
        _set("spec.gateway.auth", {"jwt": {**JWKS, "jwksUrl": "http://id.example.com/jwks"}}),
        "spec.gateway.auth.jwt.jwksUrl",
        "pattern",
        "openapi",
    ),
    Case(
        "adapter-from-an-unknown-store",
        gpu_model,
        _set("spec.adapters", [{"name": "sql", "source": "gs://bucket/sql-lora"}]),
        "spec.adapters[0].source",
        "pvc://",
        "openapi",
    ),
    Case(
        "adapter-secret-on-a-volume-source",
        gpu_model,
        _set("spec.adapters", [{"name": "sql", "source": "pvc://loras/sql", "secretRef": "creds"}]),
        "spec.adapters[0].secretRef",
        "needs an hf:// or s3:// source",
        "cel",
    ),
    Case(
        "adapter-s3-options-on-a-hub-source",
        gpu_model,
        _set("spec.adapters", [{"name": "sql", "source": "hf://org/sql", "s3": {"endpoint": "http://minio:9000"}}]),
        "spec.adapters[0].s3",
        "applies to s3:// sources only",
        "cel",
    ),
    Case("model-missing", tiny, _drop_model, "spec.model", "required", "openapi"),
    Case("unknown-field", tiny, _set("spec.modle", {"source": "hf://a/b"}), "spec.modle", "unknown field", "strict"),
    Case(
        "head-memory-not-a-quantity",
        tiny,
        _set("spec.resources.head", {"memory": "8 GB"}),
        "spec.resources.head.memory",
        "Kubernetes quantity",
        "openapi",
    ),
    Case(
        "head-cpu-not-a-quantity",
        tiny,
        _set("spec.resources.head", {"cpu": "two"}),
        "spec.resources.head.cpu",
        "Kubernetes quantity",
        "openapi",
    ),
    Case(
        "min-above-max-replicas",
        gpu_model,
        _set("spec.autoscaling", {"minReplicas": 4, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "less than or equal to maxReplicas",
        "cel",
    ),
    Case(
        "scale-to-zero-without-idle-seconds",
        gpu_model,
        _set("spec.autoscaling", {"minReplicas": 0, "maxReplicas": 2}),
        "spec.autoscaling.minReplicas",
        "minReplicas 0 (scale to zero) needs idleSeconds",
        "cel",
    ),
    Case(
        "idle-seconds-without-scale-to-zero",
        gpu_model,
        _set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 2, "idleSeconds": 600}),
        "spec.autoscaling.idleSeconds",
        "idleSeconds applies to scale to zero only",
        "cel",
    ),
    Case(
        "gpus-not-tp-times-pp",
        gpu_model,
        _set("spec.engine.tensorParallelSize", 2),
        "spec.resources.gpus",
        "tensorParallelSize x engine.pipelineParallelSize",
        "cel",
    ),
    Case(
        "cpu-with-tensor-parallel",
        tiny,
        _set("spec.engine.tensorParallelSize", 2),
        "spec.resources.gpus",
        "with gpus 0 (CPU) both must be 1",
        "cel",
    ),
    Case(
        "duplicate-adapter-names",
        gpu_model,
        _set("spec.adapters", [{"name": "a", "source": "pvc://x/a"}, {"name": "a", "source": "pvc://x/b"}]),
        "spec.adapters",
        "unique",
        "cel",
    ),
    Case(
        "adapter-shadows-base-model",
        gpu_model,
        _set("spec.adapters", [{"name": "qwen2.5-7b-instruct", "source": "pvc://x/a"}]),
        "spec.adapters",
        "differ from model.servedModelName",
        "cel",
    ),
    Case("awq-with-float32", gpu_model, _set("spec.model.dtype", "float32"), "spec.model.dtype", "awq/gptq", "cel"),
    Case(
        "fp8-with-float32", tiny, _set("spec.model.quantization", "fp8"), "spec.model.dtype", "fp8/bitsandbytes", "cel"
    ),
    Case(
        "token-secret-on-local-source",
        tiny,
        _set("spec.model.tokenSecretRef", {"name": "hf"}),
        "spec.model.tokenSecretRef",
        "hf:// or s3://",
        "cel",
    ),
    Case(
        "revision-on-pvc-source",
        tiny,
        _all(_set("spec.model.source", "pvc://models/qwen"), _set("spec.model.revision", "main")),
        "spec.model.revision",
        "needs an hf:// source",
        "cel",
    ),
    Case(
        "yarn-without-original-length",
        gpu_model,
        _set("spec.model.ropeScaling", {"type": "yarn", "factor": 4.0}),
        "spec.model.ropeScaling.originalMaxPositionEmbeddings",
        "needs originalMaxPositionEmbeddings",
        "cel",
    ),
    Case(
        "max-model-len-beyond-rope",
        gpu_model,
        _all(
            _set("spec.model.ropeScaling", {"type": "yarn", "factor": 2, "originalMaxPositionEmbeddings": 4096}),
            _set("spec.model.maxModelLen", 16384),
        ),
        "spec.model.maxModelLen",
        "exceeds what ropeScaling provides",
        "cel",
    ),
    Case(
        "batched-tokens-below-seqs",
        gpu_model,
        _set("spec.engine.maxNumBatchedTokens", 8),
        "spec.engine.maxNumBatchedTokens",
        "at least maxNumSeqs",
        "cel",
    ),
    Case(
        "extra-args-override-port",
        tiny,
        _set("spec.engine.extraArgs", ["--swap-space=4", "--port=9000"]),
        "spec.engine.extraArgs",
        "must not set flags Rayleigh manages",
        "cel",
    ),
    Case(
        "kv-cache-target-above-one",
        gpu_model,
        _set("spec.autoscaling", {"maxReplicas": 4, "metric": "kvCacheUsage", "target": 80}),
        "spec.autoscaling.target",
        "between 0 and 1",
        "cel",
    ),
    Case(
        "jwt-two-key-sources",
        gpu_model,
        _set("spec.gateway.auth", {"jwt": {**JWKS, "hmacSecretRef": HMAC_REF, "algorithms": ["HS256"]}}),
        "spec.gateway.auth.jwt",
        "exactly one key source",
        "cel",
    ),
    Case(
        "jwt-hmac-with-rs256",
        gpu_model,
        _set(
            "spec.gateway.auth",
            {"jwt": {"issuer": "i", "audience": "a", "hmacSecretRef": HMAC_REF, "algorithms": ["HS256", "RS256"]}},
        ),
        "spec.gateway.auth.jwt.algorithms",
        "key-confusion",
        "cel",
    ),
    Case(
        "jwt-public-key-with-hs256",
        gpu_model,
        _set("spec.gateway.auth", {"jwt": {**JWKS, "algorithms": ["RS256", "HS256"]}}),
        "spec.gateway.auth.jwt.algorithms",
        "key-confusion",
        "cel",
    ),
    Case(
        "public-with-auth",
        gpu_model,
        _set("spec.gateway", {"public": True, "auth": {"apiKeys": True}}),
        "spec.gateway.auth",
        "public: true serves without credentials",
        "cel",
    ),
    Case(
        "auth-without-credentials",
        gpu_model,
        _set("spec.gateway", {"auth": {"apiKeys": False}}),
        "spec.gateway.auth",
        "no credential",
        "cel",
    ),
    Case(
        "bad-cidr",
        gpu_model,
        _set("spec.gateway.allowedCIDRs", ["10.0.0.0/8", "10.0.0.300/33"]),
        "spec.gateway.allowedCIDRs",
        "CIDR",
        "cel",
    ),
    Case(
        "rollout-cannot-progress",
        gpu_model,
        _set("spec.rollout", {"maxUnavailable": 0, "maxSurge": "0%"}),
        "spec.rollout.maxSurge",
        "cannot both be 0",
        "cel",
    ),
    Case(
        "replicas-outside-autoscaling",
        gpu_model,
        _all(_set("spec.replicas", 12), _set("spec.autoscaling", {"minReplicas": 1, "maxReplicas": 8})),
        "spec.replicas",
        "within autoscaling.minReplicas..maxReplicas",
        "cel",
    ),
    Case(
        "traffic-weight-above-100",
        tiny,
        _all(_set("spec.model.servedModelName", "tiny"), _set("spec.traffic", {"weight": 150})),
        "spec.traffic.weight",
        "100",
        "openapi",
    ),
    Case(
        "traffic-weight-negative",
        tiny,
        _all(_set("spec.model.servedModelName", "tiny"), _set("spec.traffic", {"weight": -1})),
        "spec.traffic.weight",
        "0",
        "openapi",
    ),
    Case(
        "traffic-weight-not-an-integer",
        tiny,
        _all(_set("spec.model.servedModelName", "tiny"), _set("spec.traffic", {"weight": 12.5})),
        "spec.traffic.weight",
        "integer",
        "openapi",
    ),
    Case(
        "traffic-weight-missing",
        tiny,
        _all(_set("spec.model.servedModelName", "tiny"), _set("spec.traffic", {"sticky": True})),
        "spec.traffic.weight",
        "required",
        "openapi",
    ),
    Case(
        "traffic-without-served-model-name",
        tiny,
        _all(_drop_served_name, _set("spec.traffic", {"weight": 50})),
        "spec.traffic",
        "traffic needs model.servedModelName",
        "cel",
    ),
]


def _broken(case: Case) -> Doc:
    doc = case.base()
    case.mutate(doc)
    return doc


def test_there_is_at_least_one_case_per_rule_and_fifteen_in_all() -> None:
    assert len(CASES) >= 15
    cel_messages = {
        r["message"] for node in _schema_nodes(crd.openapi_schema()) for r in node.get("x-kubernetes-validations", [])
    }
    covered = {m for m in cel_messages for c in CASES if c.layer == "cel" and c.fragment in m}
    assert covered == cel_messages, f"rules without a test case: {cel_messages - covered}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_rayleigh_validate_rejects_with_the_field_path(case: Case, tmp_path: Any) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(_broken(case)))
    result = CliRunner().invoke(main, ["validate", "-f", str(path)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip().startswith(f"- {case.path}:")]
    assert lines, f"no problem reported at {case.path}:\n{result.output}"
    assert any(case.fragment in line for line in lines), result.output


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_base_document_of_each_case_is_valid(case: Case, tmp_path: Any) -> None:
    """So that each rejection is caused by the case's own change."""
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(case.base()))
    result = CliRunner().invoke(main, ["validate", "-f", str(path)])
    assert result.exit_code == 0, result.output


def _schema_nodes(schema: dict[str, Any]) -> list[dict[str, Any]]:
    out = [schema]
    for sub in schema.get("properties", {}).values():
        out.extend(_schema_nodes(sub))
    if isinstance(schema.get("items"), dict):
        out.extend(_schema_nodes(schema["items"]))
    return out


def _failing_cel_rules(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    """(path, message) of every CRD CEL rule that cel-python evaluates to false."""
    out = []
    for rule in schema.get("x-kubernetes-validations", []):
        if evaluate_rule(rule["rule"], value) is False:
            out.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out.extend(_failing_cel_rules(sub, value[name], f"{path}.{name}"))
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(_failing_cel_rules(schema["items"], item, f"{path}[{i}]"))
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.layer == "cel"], ids=lambda c: c.id)
def test_the_crd_cel_rule_itself_rejects_it(case: Case) -> None:
    schema = crd.openapi_schema()
    spec_schema = schema["properties"]["spec"]
    bad = apply_defaults(schema, copy.deepcopy(_broken(case)))["spec"]
    good = apply_defaults(schema, copy.deepcopy(case.base()))["spec"]
    assert _failing_cel_rules(spec_schema, good, "spec") == []
    failing = _failing_cel_rules(spec_schema, bad, "spec")
    assert any(p == case.path and case.fragment in m for p, m in failing), failing


@pytest.mark.parametrize("case", [c for c in CASES if c.layer == "openapi"], ids=lambda c: c.id)
def test_the_crd_openapi_schema_itself_rejects_it(case: Case) -> None:
    schema = crd.openapi_schema()
    validator = jsonschema.Draft4Validator(schema)
    assert list(validator.iter_errors(case.base())) == []
    errors = list(validator.iter_errors(_broken(case)))
    assert errors, "the CRD schema accepted the broken document"

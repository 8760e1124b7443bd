"""Adapter sources: URI parsing, spec validation, and the Serve config split (no Ray, no vLLM)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rayleigh_api import ModelDeployment
from rayleigh_api.validation import SpecError, validate_document
from rayleigh_serving.adapter_sources import AdapterSourceError, AdapterSpec, parse_adapter_source
from rayleigh_serving.config import ServeConfigError, build_serve_config

BASE: dict[str, Any] = {
    "apiVersion": "serving.rayleigh.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "llm"},
    "spec": {"model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"}},
}


def doc_with(adapters: list[dict[str, Any]], **engine: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"]["adapters"] = adapters
    if engine:
        doc["spec"]["engine"] = engine
    return doc


def parse(source: str, local_base: Path | None = None) -> AdapterSpec:
    return parse_adapter_source("a", source, field="spec.adapters[0].source", pvc_root="/pvc", local_base=local_base)


def test_hf_source_without_revision() -> None:
    assert parse("hf://org/sql-lora") == AdapterSpec("a", "hf", "org/sql-lora")


def test_hf_source_with_revision() -> None:
    assert parse("hf://org/sql-lora@v1.2") == AdapterSpec("a", "hf", "org/sql-lora", revision="v1.2")


def test_s3_source_splits_bucket_and_prefix() -> None:
    assert parse("s3://my-bucket/loras/sql/") == AdapterSpec("a", "s3", "my-bucket", prefix="loras/sql")


def test_pvc_source_is_a_path_under_the_mount_root() -> None:
    assert parse("pvc://adapters/sql") == AdapterSpec("a", "pvc", "/pvc/adapters/sql")


def test_relative_file_source_resolves_in_local_mode_only(tmp_path: Path) -> None:
    assert parse("file://loras/a", local_base=tmp_path).location == str(tmp_path / "loras/a")
    with pytest.raises(AdapterSourceError, match=r"spec.adapters\[0\].source: relative file://"):
        parse("file://loras/a")


@pytest.mark.parametrize("source", ["hf://just-a-name", "hf://org/name@", "s3://A_Bucket/x", "gs://bucket/x"])
def test_malformed_source_names_the_field(source: str) -> None:
    with pytest.raises(AdapterSourceError) as exc:
        parse(source)
    assert exc.value.problems[0].path == "spec.adapters[0].source"


@pytest.mark.parametrize(
    "source", ["hf://just-a-name", "hf://org/name@", "s3://x", "gs://bucket/x", "http://example.com/lora"]
)
def test_schema_rejects_malformed_adapter_source_with_field_path(source: str) -> None:
    with pytest.raises(SpecError) as exc:
        validate_document(doc_with([{"name": "a", "source": source}]))
    [problem] = exc.value.problems
    assert problem.path == "spec.adapters[0].source"
    assert "hf://org/name[@revision]" in problem.message


def test_schema_rejects_secret_ref_on_a_path_source() -> None:
    with pytest.raises(SpecError) as exc:
        validate_document(doc_with([{"name": "a", "source": "pvc://c/a", "secretRef": "creds"}]))
    assert [p.path for p in exc.value.problems] == ["spec.adapters[0].secretRef"]


def test_schema_rejects_s3_options_on_an_hf_source() -> None:
    with pytest.raises(SpecError) as exc:
        validate_document(doc_with([{"name": "a", "source": "hf://o/n", "s3": {"endpoint": "http://minio:9000"}}]))
    assert [p.path for p in exc.value.problems] == ["spec.adapters[0].s3"]


def test_schema_rejects_an_endpoint_that_is_not_a_url() -> None:
    with pytest.raises(SpecError) as exc:
        validate_document(doc_with([{"name": "a", "source": "s3://bkt/a", "s3": {"endpoint": "minio:9000"}}]))
    [problem] = exc.value.problems
    assert problem.path == "spec.adapters[0].s3.endpoint"
    assert "http://" in problem.message


def test_schema_accepts_hf_and_s3_adapters_with_credentials() -> None:
    validate_document(
        doc_with(
            [
                {"name": "sql", "source": "hf://org/sql-lora@main", "secretRef": "hf-token"},
                {"name": "tone", "source": "s3://bkt/tone", "secretRef": "s3", "s3": {"endpoint": "http://m:9000"}},
            ]
        )
    )


def app_of(doc: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = build_serve_config(ModelDeployment.model_validate(doc))["applications"][0]
    return app


def test_adapter_list_travels_in_user_config_not_in_engine_args() -> None:
    app = app_of(doc_with([{"name": "sql", "source": "hf://org/sql@v2", "secretRef": "hf"}]))
    assert "lora_modules" not in app["args"]["llm_config"]["engine_kwargs"]
    [deployment] = app["deployments"]
    assert deployment["name"] == "LLMServer"
    assert deployment["user_config"] == {
        "base_model": "m",
        "adapters": [
            {
                "name": "sql",
                "kind": "hf",
                "location": "org/sql",
                "revision": "v2",
                "prefix": "",
                "secret": "hf",
                "endpoint": None,
                "region": None,
            }
        ],
    }


def test_adding_or_removing_adapters_leaves_the_restarting_parts_unchanged() -> None:
    one = app_of(doc_with([{"name": "a", "source": "pvc://c/a"}]))
    three = app_of(
        doc_with(
            [
                {"name": "a", "source": "pvc://c/a"},
                {"name": "b", "source": "hf://o/b"},
                {"name": "c", "source": "s3://bkt/c", "s3": {"endpoint": "http://m:9000"}},
            ]
        )
    )
    assert {k: v for k, v in one.items() if k != "deployments"} == {
        k: v for k, v in three.items() if k != "deployments"
    }
    assert one["deployments"] != three["deployments"]


def test_lora_engine_knobs_are_fixed_while_adapters_exist() -> None:
    kw = app_of(doc_with([{"name": "a", "source": "pvc://c/a"}]))["args"]["llm_config"]["engine_kwargs"]
    assert (kw["enable_lora"], kw["max_loras"], kw["max_lora_rank"], kw["max_cpu_loras"]) == (True, 4, 16, 32)


def test_no_adapters_and_no_max_loras_keeps_lora_off() -> None:
    app = app_of(doc_with([]))
    assert "enable_lora" not in app["args"]["llm_config"]["engine_kwargs"]
    assert app["deployments"][0]["user_config"]["adapters"] == []


def test_max_loras_keeps_lora_on_without_adapters_so_the_first_add_is_hot() -> None:
    empty = app_of(doc_with([], maxLoras=2, maxLoraRank=64))
    first = app_of(doc_with([{"name": "a", "source": "pvc://c/a"}], maxLoras=2, maxLoraRank=64))
    assert empty["args"] == first["args"]
    kw = empty["args"]["llm_config"]["engine_kwargs"]
    assert (kw["enable_lora"], kw["max_loras"], kw["max_lora_rank"]) == (True, 2, 64)


def test_serve_config_error_names_the_adapter_field() -> None:
    md = ModelDeployment.model_validate(doc_with([{"name": "a", "source": "file://relative/x"}]))
    with pytest.raises(ServeConfigError) as exc:
        build_serve_config(md)
    assert exc.value.problems[0].path == "spec.adapters[0].source"

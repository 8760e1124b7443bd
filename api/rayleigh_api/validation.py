"""Offline validation of ModelDeployments with the same rules the API server enforces.

Two layers, both read from one place:
- the OpenAPI part (types, enums, bounds, patterns, unknown fields) through the pydantic models;
- the CEL part by evaluating the CRD's own `x-kubernetes-validations` with cel-python against the
  object after schema defaulting, exactly as the API server does.
Every problem is reported (not just the first) with the field path a user can find in the YAML.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from pydantic import ValidationError

import rayleigh_api as api
from rayleigh_api import crd
from rayleigh_api.errors import FieldErrors, Problem


class SpecError(FieldErrors):
    """A ModelDeployment that the API server would reject; lists every problem."""


def _is_cidr(value: celtypes.Value) -> celtypes.BoolType:
    """Kubernetes CEL library's isCIDR(), for offline evaluation."""
    try:
        text = str(value)
        if "/" not in text:
            return celtypes.BoolType(False)
        ipaddress.ip_network(text, strict=False)
        return celtypes.BoolType(True)
    except ValueError:
        return celtypes.BoolType(False)


CEL_FUNCTIONS: dict[str, Any] = {"isCIDR": _is_cidr}


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=CEL_FUNCTIONS)


def evaluate_rule(rule: str, self_value: Any) -> bool | None:
    """True/False for the rule on `self_value`; None when it cannot be evaluated (a type error the
    OpenAPI layer already reports)."""
    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(self_value)})
    except Exception:
        return None
    if isinstance(result, celtypes.BoolType):
        return bool(result)
    return None


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting, as the API server does before validation.

    Integers in `number` fields become floats, since CEL sees every `number` as a double there.
    """
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _cel_problems(schema: dict[str, Any], value: Any, path: str) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(value, dict | list):
        for rule in schema.get("x-kubernetes-validations", []):
            if evaluate_rule(rule["rule"], value) is False:
                out.append(Problem(path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                out.extend(_cel_problems(sub, value[name], f"{path}.{name}"))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out.extend(_cel_problems(schema["items"], item, f"{path}[{i}]"))
    return out


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "lax-or-strict")):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


PATTERN_HINTS = {
    api.SOURCE_PATTERN: "expected hf://org/name, pvc://claim/path, s3://bucket/prefix or file:///path",
    api.ADAPTER_SOURCE_PATTERN: "expected pvc://claim/path or file:///path (adapters load from a path on the replica)",
    api.MODEL_NAME_PATTERN: "expected a model name of letters, digits and . _ : / - (at most 128 characters)",
    api.QUANTITY_PATTERN: "expected a Kubernetes quantity such as '8', '500m' or '32Gi'",
}


def _pydantic_problems(err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling and indentation; see `kubectl explain modeldeployment.spec`)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "string_pattern_mismatch":
            pattern = str((e.get("ctx") or {}).get("pattern", ""))
            msg = f"{PATTERN_HINTS.get(pattern, msg)} (got {e['input']!r})"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        out.append(Problem(_loc_to_path(e["loc"]), msg))
    return out


def problems(doc: dict[str, Any]) -> list[Problem]:
    """Everything wrong with a ModelDeployment document, in YAML order of discovery."""
    found: list[Problem] = []
    if doc.get("apiVersion") != api.API_VERSION:
        found.append(Problem("apiVersion", f"expected {api.API_VERSION!r}, got {doc.get('apiVersion')!r}"))
    if doc.get("kind") != api.KIND:
        found.append(Problem("kind", f"expected {api.KIND!r}, got {doc.get('kind')!r}"))
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        found.append(Problem("metadata.name", "required: a DNS-1035 label such as 'qwen-7b'"))
    elif not _is_dns_label(name):
        found.append(
            Problem("metadata.name", f"{name!r} must be a DNS label: lowercase letters, digits, '-', at most 42 chars")
        )
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    try:
        api.ModelDeployment.model_validate(body)
    except ValidationError as err:
        found.extend(_pydantic_problems(err))
    schema = crd.cached_openapi_schema()
    defaulted = apply_defaults(schema, copy.deepcopy(doc))
    if isinstance(defaulted.get("spec"), dict):
        found.extend(_cel_problems(schema["properties"]["spec"], defaulted["spec"], "spec"))
    return found


def _is_dns_label(name: str) -> bool:
    # Children append suffixes such as "-head-svc" and "-workers", so names stay well under 63.
    return len(name) <= 42 and re.fullmatch(api.DNS_LABEL_PATTERN, name) is not None


def validate_document(doc: dict[str, Any]) -> api.ModelDeployment:
    """The validated, defaulted ModelDeployment, or SpecError with every problem."""
    found = problems(doc)
    if found:
        raise SpecError(found)
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    return api.ModelDeployment.model_validate(body)

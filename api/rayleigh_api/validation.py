"""Offline validation of ModelDeployments with the same rules the API server enforces.

Two layers, both read from one place:
- the OpenAPI part (types, enums, bounds, patterns, unknown fields) through the pydantic models;
- the CEL part by evaluating the CRD's own `x-kubernetes-validations` with cel-python against the
  object after schema defaulting, exactly as the API server does: a rule that cannot be evaluated
  (no such key, division by zero...) rejects the object, naming the rule and the field; transition
  rules (`oldSelf`) run on updates only, against the correlated old value (`cel_failures(old=...)`,
  which the tests' API emulator uses for admission).
Every problem is reported (not just the first) with the field path a user can find in the YAML.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
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


class RuleEvaluationError(Exception):
    """A CEL rule that could not be evaluated (no such key, division by zero, a type mismatch...).

    The API server rejects the object then: a rule that throws is a failed rule, never a passed one
    (apiextensions-apiserver pkg/apiserver/schema/cel/validation.go, `validateExpressions`:
    `field.Invalid(fldPath, sts.Type, "<err> evaluating rule: <rule>")`).
    """


_OLD_SELF = re.compile(r"\boldSelf\b")


def uses_old_self(rule: str) -> bool:
    """Whether a rule is a transition rule (refers to `oldSelf`)."""
    return _OLD_SELF.search(rule) is not None


def _to_cel(value: Any) -> Any:
    return celpy.json_to_cel(value)


@functools.lru_cache(maxsize=8192)
def _evaluate_cached(rule: str, self_json: str, old_json: str | None) -> bool:
    activation = {"self": _to_cel(json.loads(self_json))}
    if old_json is not None:
        activation["oldSelf"] = _to_cel(json.loads(old_json))
    try:
        result = _program(rule).evaluate(activation)
    except Exception as exc:  # cel-python raises CELEvalError, or Python errors from the library
        raise RuleEvaluationError(_error_text(exc)) from None
    if isinstance(result, celpy.CELEvalError):
        raise RuleEvaluationError(_error_text(result))
    if not isinstance(result, celtypes.BoolType):
        raise RuleEvaluationError(f"rule returned {type(result).__name__}, not a bool")
    return bool(result)


# cel-python's wording -> cel-go's (what the API server reports).
_CEL_GO_ERRORS = (
    (re.compile(r"^no such member in mapping: '(.*)'$"), r"no such key: \1"),
    (re.compile(r"^modulus or divide by zero$"), "division by zero"),
)


def _error_text(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    text = args[0] if args and isinstance(args[0], str) else (str(exc) or type(exc).__name__)
    for pattern, replacement in _CEL_GO_ERRORS:
        text = pattern.sub(replacement, text)
    return text


def check_rule(rule: str, self_value: Any, old_self: Any = None, *, has_old: bool = False) -> bool:
    """The rule's verdict on `self_value` (and `old_self` for a transition rule).

    Raises RuleEvaluationError when the rule cannot be evaluated; callers count that as a failure,
    as the API server does. Results are cached by (rule, value): the same spec is checked once.
    """
    self_json = json.dumps(self_value, sort_keys=True)
    old_json = json.dumps(old_self, sort_keys=True) if has_old else None
    return _evaluate_cached(rule, self_json, old_json)


def evaluate_rule(rule: str, self_value: Any) -> bool | None:
    """True/False for the rule on `self_value`; None when it cannot be evaluated."""
    try:
        return check_rule(rule, self_value)
    except RuleEvaluationError:
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
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name in value:
            value[name] = apply_defaults(schema["additionalProperties"], value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


_ABSENT: Any = object()


@dataclass(frozen=True)
class RuleFailure:
    """One `x-kubernetes-validations` rule that rejects a value, with what the API server reports.

    `path` is where the error is reported (the rule's node, plus its `fieldPath` when the rule
    evaluated to false); `node_path` is the node the rule sits on; `node_type` its schema type (the
    API server reports it as the "value" of the field error); `reason` the rule's `reason`
    (FieldValueInvalid when unset); `error` is set when the rule could not be evaluated.
    """

    path: str
    node_path: str
    node_type: str
    rule: str
    message: str
    reason: str | None = None
    error: str | None = None
    transition: bool = False

    def problem(self) -> Problem:
        return Problem(self.path, self.message)


def _rule_text(rule: dict[str, Any]) -> str:
    """The API server's `ruleErrorString`: the rule's message, else the rule itself."""
    return str(rule.get("message") or rule["rule"]).strip()


def _message(rule: dict[str, Any], self_value: Any, old: Any, has_old: bool) -> str:
    expression = rule.get("messageExpression")
    if expression:
        activation = {"self": _to_cel(self_value)}
        if has_old:
            activation["oldSelf"] = _to_cel(old)
        try:
            result = _program(expression).evaluate(activation)
            if isinstance(result, str) and result.strip() and "\n" not in result:
                return str(result).strip()
        except Exception:  # a failing messageExpression falls back to the message, as in the API server
            pass
    if rule.get("message"):
        return str(rule["message"]).strip()
    return f"failed rule: {rule['rule'].strip()}"


def _correlated_items(schema: dict[str, Any], items: list[Any], old: Any) -> list[Any]:
    """Old values of list items: only lists of type map correlate (by their keys), as in the API server."""
    old_list = old if isinstance(old, list) else None
    if old_list is None or schema.get("x-kubernetes-list-type") != "map":
        return [_ABSENT] * len(items)
    keys = schema.get("x-kubernetes-list-map-keys") or []

    def key(item: Any) -> tuple[Any, ...] | None:
        return tuple(item.get(k) for k in keys) if isinstance(item, dict) else None

    by_key = {key(o): o for o in old_list if key(o) is not None}
    return [by_key.get(key(item), _ABSENT) for item in items]


def cel_failures(schema: dict[str, Any], value: Any, path: str, old: Any = _ABSENT) -> list[RuleFailure]:
    """Every `x-kubernetes-validations` rule under `schema` that rejects `value` (already defaulted).

    `old` is the value before an update (absent on create): transition rules (`oldSelf`) run only
    where an old value correlates (apiextensions-apiserver pkg/apiserver/schema/cel/validation.go:
    `validateExpressions` skips them otherwise; `validateMap` correlates object properties and map
    keys, `validateArray` only items of `x-kubernetes-list-type: map` lists, by their keys).
    A rule that cannot be evaluated is a failure, reported at the rule's node.
    """
    out: list[RuleFailure] = []
    if value is None:
        return out
    has_old = old is not _ABSENT and old is not None
    node_type = str(schema.get("type") or ("string" if schema.get("x-kubernetes-int-or-string") else "object"))
    for rule in schema.get("x-kubernetes-validations", []):
        transition = uses_old_self(rule["rule"])
        if transition and not has_old:
            continue
        try:
            ok = check_rule(rule["rule"], value, old if has_old else None, has_old=transition)
        except RuleEvaluationError as exc:
            out.append(
                RuleFailure(
                    path=path,
                    node_path=path,
                    node_type=node_type,
                    rule=rule["rule"],
                    message=f"{exc} evaluating rule: {_rule_text(rule)} (rule: {rule['rule'].strip()})",
                    error=str(exc),
                    transition=transition,
                )
            )
            continue
        if not ok:
            out.append(
                RuleFailure(
                    path=path + rule.get("fieldPath", ""),
                    node_path=path,
                    node_type=node_type,
                    rule=rule["rule"],
                    message=_message(rule, value, old, has_old and transition),
                    reason=rule.get("reason"),
                    transition=transition,
                )
            )
    if isinstance(value, dict):
        old_map = old if isinstance(old, dict) else {}
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, child in value.items():
            sub = props.get(name) if name in props else (extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            child_path = f"{path}.{name}" if name in props else f"{path}[{name}]"
            out.extend(cel_failures(sub, child, child_path, old_map.get(name, _ABSENT)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, (item, old_item) in enumerate(zip(value, _correlated_items(schema, value, old), strict=True)):
            out.extend(cel_failures(schema["items"], item, f"{path}[{i}]", old_item))
    return out


def _cel_problems(schema: dict[str, Any], value: Any, path: str) -> list[Problem]:
    return [f.problem() for f in cel_failures(schema, value, path)]


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
    api.ADAPTER_SOURCE_PATTERN: "expected hf://org/name[@revision], s3://bucket/prefix, pvc://claim/path or "
    "file:///path",
    api.S3_ENDPOINT_PATTERN: "expected an http:// or https:// URL such as 'http://minio.storage:9000'",
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
        schema_problems = bool(found)
        for failure in cel_failures(schema["properties"]["spec"], defaulted["spec"], "spec"):
            # A rule that cannot be evaluated rejects the object. When the schema layer already
            # rejected a field, the evaluation error is most likely that problem seen again (a
            # string where the rule compares numbers), so it is not listed twice; the API server
            # likewise skips CEL once the schema check failed.
            if failure.error is None or not schema_problems:
                found.append(failure.problem())
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

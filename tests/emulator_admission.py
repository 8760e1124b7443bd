"""Admission of custom resources in the emulated Kubernetes API (tests/kube_emulator.py).

kube-apiserver does this to an object of a CustomResourceDefinition's kind before storing it, read
from its source (kubernetes/kubernetes, staging/src/k8s.io/apiextensions-apiserver unless named):

1. Unknown fields. A server-side apply whose body has a field the schema does not declare fails
   with HTTP 500 `failed to create typed patch object (NS/NAME; GROUP/VERSION, Kind=KIND):
   .spec.x: field not declared in schema` (staging/src/k8s.io/apimachinery/pkg/util/managedfields/
   internal/structuredmerge.go `structuredMergeManager.Apply`; the 500 is kubernetes#122480). Other
   writes follow the `fieldValidation` parameter (staging/src/k8s.io/apiserver/pkg/endpoints/
   handlers/rest.go `fieldValidation`; default Warn): Strict answers 400 `KIND in version "V" cannot
   be handled as a KIND: strict decoding error: unknown field "spec.x"`, Warn drops the field with
   a `Warning: unknown field "spec.x"` header, Ignore drops it silently. Dropping is structural
   pruning (pkg/apiserver/schema/pruning/algorithm.go `PruneWithOptions`): every field the schema
   does not declare goes, except under `x-kubernetes-preserve-unknown-fields: true`.
2. Defaulting: a missing property with a `default` gets it, also inside list items and map values
   (pkg/apiserver/schema/defaulting/algorithm.go `Default`); the stored object keeps the defaults.
3. The OpenAPI schema: type (and int-or-string, nullable), required, enum, minimum/maximum
   (exclusive), minLength/maxLength, pattern, minItems/maxItems, uniqueItems, min/maxProperties,
   converted to field errors by pkg/apiserver/validation/validation.go
   `kubeOpenAPIResultToFieldErrors` with kube-openapi's messages (`spec.replicas in body should be
   greater than or equal to 0`); metadata.name must be a DNS subdomain
   (staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go `ValidateObjectMetaAccessor`).
4. The CEL rules (`x-kubernetes-validations`) with the project's own evaluator
   (rayleigh_api.validation.cel_failures: cel-python, Kubernetes' isCIDR, transition rules with
   `oldSelf` against the correlated old value on update, a rule that cannot be evaluated is a
   failure), skipped with `some validation rules were not checked because the object was invalid`
   when the schema check found a blocking error (pkg/registry/customresource/strategy.go
   `customResourceStrategy.Validate`, `hasBlockingErr`); messages per pkg/apiserver/schema/cel/
   validation.go `validateExpressions` (`Invalid value: "object": <message>` at path + fieldPath).
5. Ratcheting on update (pkg/apiserver/validation/ratcheting.go; cel/validation.go
   `shouldRatchetError`): an error about a value that did not change is not a rejection, except for
   transition rules. So the operator's status writes are not refused for a spec written before a
   rule existed.

Every error goes into one 422 `Invalid` Status as the API server builds it
(staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go `NewInvalid`): message
`KIND.GROUP "NAME" is invalid: <errors>` and `details.causes[]` with `reason`, `message`, `field`.
The same applies on /status and /scale writes, which update the whole object.

Not modelled: `format`, `x-kubernetes-embedded-resource`, list-type `set`/`map` uniqueness, CEL cost
budgets, conversion webhooks, `messageExpression` cost, validating admission webhooks.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rayleigh_api import validation

OMIT: Any = object()

# field.ErrorType strings (staging/src/k8s.io/apimachinery/pkg/util/validation/field/errors.go).
TYPE_STRINGS = {
    "FieldValueNotFound": "Not found",
    "FieldValueRequired": "Required value",
    "FieldValueDuplicate": "Duplicate value",
    "FieldValueInvalid": "Invalid value",
    "FieldValueNotSupported": "Unsupported value",
    "FieldValueForbidden": "Forbidden",
    "FieldValueTooLong": "Too long",
    "FieldValueTooMany": "Too many",
    "InternalError": "Internal error",
    "FieldValueTypeInvalid": "Invalid value",
}
# Errors after which the CEL rules are not run (strategy.go hasBlockingErr).
BLOCKING = {
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
}

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def go_value(value: Any) -> str:
    """How field.Error.ErrorBody prints a bad value: strings quoted, numbers and bools plain."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_number(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value, sort_keys=True)


def go_number(value: float | int) -> str:
    """Go's %v of a float64: no trailing .0 (2 not 2.0), exponent for large ones."""
    if isinstance(value, bool | int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class FieldError:
    """field.Error: a type, the field path, the bad value (OMIT: not shown) and a detail."""

    type: str
    field: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        """field.Error.ErrorBody."""
        text = TYPE_STRINGS[self.type]
        if self.type not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong", "InternalError") and (
            self.value is not OMIT
        ):
            text += f": {go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def error(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.type, "message": self.body(), "field": self.field}


class AdmissionError(Exception):
    """A Status the API server answers instead of storing the object."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


def invalid_status(kind: str, group: str, name: str, errors: list[FieldError]) -> dict[str, Any]:
    """errors.NewInvalid(GroupKind, name, errs): message with the aggregate, one cause per error."""
    messages: list[str] = []
    for e in errors:  # utilerrors.NewAggregate de-duplicates identical messages
        if e.error() not in messages:
            messages.append(e.error())
    aggregate = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{qualified} "{name}" is invalid: {aggregate}',
        "reason": "Invalid",
        "details": {"name": name, "group": group, "kind": kind, "causes": [e.cause() for e in errors]},
        "code": 422,
    }


# --- structural schema: unknown fields, pruning, defaulting -------------------------------------


def _child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_map(schema: dict[str, Any]) -> bool:
    return isinstance(schema.get("additionalProperties"), dict)


def unknown_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Paths (`spec.modle`) of fields the schema does not declare."""
    out: list[str] = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None and not _is_map(schema):
            return out if schema.get("type") != "object" else [_child(path, k) for k in value]
        for key, child in value.items():
            if props is not None and key in props:
                out.extend(unknown_fields(props[key], child, _child(path, key)))
            elif _is_map(schema):
                out.extend(unknown_fields(schema["additionalProperties"], child, f"{path}[{key}]"))
            else:
                out.append(_child(path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            out.extend(unknown_fields(schema["items"], item, f"{path}[{i}]"))
    return out


def prune(schema: dict[str, Any], value: Any) -> Any:
    """pruning.PruneWithOptions: drop what the schema does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is None and not _is_map(schema):
            return {} if schema.get("type") == "object" else value
        out = {}
        for key, child in value.items():
            if props is not None and key in props:
                out[key] = prune(props[key], child)
            elif _is_map(schema):
                out[key] = prune(schema["additionalProperties"], child)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], item) for item in value]
    return value


def default(schema: dict[str, Any], value: Any) -> Any:
    """defaulting.Default: fill missing properties that have a default, recursively."""
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = default(sub, value[key])
        if _is_map(schema):
            for key in value:
                value[key] = default(schema["additionalProperties"], value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [default(schema["items"], item) for item in value]
    return value


# --- OpenAPI validation -------------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(schema: dict[str, Any], value: Any) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return _json_type(value) in ("integer", "string")
    want = schema.get("type")
    have = _json_type(value)
    if not want:
        return True
    if want == "number":
        return have in ("number", "integer")
    if want == "integer" and have == "number":
        return float(value).is_integer()
    return want == have


def validate_schema(schema: dict[str, Any], value: Any, path: str) -> list[FieldError]:
    """kube-openapi's SchemaValidator through kubeOpenAPIResultToFieldErrors."""
    errors: list[FieldError] = []
    if not _type_ok(schema, value):
        if value is None:
            return (
                errors
                if schema.get("nullable")
                else [
                    FieldError(
                        "FieldValueTypeInvalid",
                        path,
                        "null",
                        f'{path} in body must be of type {schema.get("type")}: "null"',
                    )
                ]
            )
        want = "integer,string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        return [
            FieldError(
                "FieldValueTypeInvalid", path, value, f'{path} in body must be of type {want}: "{_json_type(value)}"'
            )
        ]
    if value is None:
        return errors
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(json.dumps(v) for v in schema["enum"])
        errors.append(FieldError("FieldValueNotSupported", path, value, f"supported values: {supported}"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if schema.get("exclusiveMinimum") and value <= low:
                errors.append(
                    FieldError(
                        "FieldValueInvalid", path, value, f"{path} in body should be greater than {go_number(low)}"
                    )
                )
            elif value < low:
                errors.append(
                    FieldError(
                        "FieldValueInvalid",
                        path,
                        value,
                        f"{path} in body should be greater than or equal to {go_number(low)}",
                    )
                )
        if "maximum" in schema:
            high = schema["maximum"]
            if schema.get("exclusiveMaximum") and value >= high:
                errors.append(
                    FieldError(
                        "FieldValueInvalid", path, value, f"{path} in body should be less than {go_number(high)}"
                    )
                )
            elif value > high:
                errors.append(
                    FieldError(
                        "FieldValueInvalid",
                        path,
                        value,
                        f"{path} in body should be less than or equal to {go_number(high)}",
                    )
                )
        if "multipleOf" in schema and value % schema["multipleOf"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    path,
                    value,
                    f"{path} in body should be a multiple of {go_number(schema['multipleOf'])}",
                )
            )
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(
                FieldError("FieldValueTooLong", path, value, f"may not be more than {schema['maxLength']} bytes")
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    path,
                    value,
                    f"{path} in body should be at least {schema['minLength']} chars long",
                )
            )
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(
                FieldError("FieldValueInvalid", path, value, f"{path} in body should match '{schema['pattern']}'")
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(
                FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxItems']} items")
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid", path, OMIT, f"{path} in body should have at least {schema['minItems']} items"
                )
            )
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(value):
            errors.append(FieldError("FieldValueInvalid", path, OMIT, f"{path} in body shouldn't contain duplicates"))
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors.extend(validate_schema(schema["items"], item, f"{path}[{i}]"))
    if isinstance(value, dict):
        for name in schema.get("required") or []:
            if name not in value:
                errors.append(FieldError("FieldValueRequired", _child(path, name)))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(
                FieldError("FieldValueTooMany", path, len(value), f"must have at most {schema['maxProperties']} items")
            )
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    path,
                    OMIT,
                    f"{path} in body should have at least {schema['minProperties']} properties",
                )
            )
        props = schema.get("properties") or {}
        for name, child in value.items():
            if name in props:
                errors.extend(validate_schema(props[name], child, _child(path, name)))
            elif _is_map(schema):
                errors.extend(validate_schema(schema["additionalProperties"], child, f"{path}[{name}]"))
    return errors


# --- ratcheting ---------------------------------------------------------------------------------

_SEGMENT = re.compile(r"\.?([^.\[\]]+)|\[([^\]]*)\]")


def _resolve(schema: dict[str, Any], obj: Any, path: str) -> tuple[bool, Any]:
    """The value at a field path, following only correlatable steps (object keys, map keys, items of
    `x-kubernetes-list-type: map` lists by key); at an uncorrelatable list the list itself stands in,
    as the nearest correlatable parent does in the API server's ratcheting."""
    node, sub = obj, schema
    for match in _SEGMENT.finditer(path):
        name, index = match.group(1), match.group(2)
        if name is not None:
            if not isinstance(node, dict) or name not in node:
                return False, None
            props = sub.get("properties") or {}
            sub = props.get(name) or (sub.get("additionalProperties") if _is_map(sub) else {}) or {}
            node = node[name]
        else:
            if isinstance(node, dict):
                if index not in node:
                    return False, None
                sub = sub.get("additionalProperties") or {}
                node = node[index]
            else:
                return True, node  # list index: only the whole list correlates
    return True, node


def _unchanged(schema: dict[str, Any], new: Any, old: Any, path: str) -> bool:
    found_new, value_new = _resolve(schema, new, path)
    found_old, value_old = _resolve(schema, old, path)
    return found_new and found_old and value_new == value_old


# --- the admission chain ------------------------------------------------------------------------


@dataclass
class Version:
    kind: str
    group: str
    version: str
    schema: dict[str, Any]


@dataclass
class CRDAdmission:
    """Schemas of the registered CRDs, by (group, plural), and the admission chain for their objects."""

    versions: dict[tuple[str, str], dict[str, Version]] = field(default_factory=dict)
    enabled: bool = True

    def register(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural = spec.get("group", ""), names.get("plural", "")
        by_version: dict[str, Version] = {}
        for v in spec.get("versions") or []:
            schema = ((v.get("schema") or {}).get("openAPIV3Schema")) or None
            if schema is not None:
                by_version[v["name"]] = Version(names.get("kind", ""), group, v["name"], schema)
        self.versions[(group, plural)] = by_version

    def schema_for(self, group: str, plural: str, api_version: str | None) -> Version | None:
        by_version = self.versions.get((group, plural))
        if not by_version:
            return None
        version = (api_version or "").rsplit("/", 1)[-1]
        return by_version.get(version) or next(iter(by_version.values()))

    def admit(
        self,
        group: str,
        plural: str,
        new: dict[str, Any],
        old: dict[str, Any] | None,
        *,
        field_validation: str = "Warn",
        apply_body: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """The object to store (pruned, defaulted) and the Warning headers; AdmissionError to refuse."""
        v = self.schema_for(group, plural, new.get("apiVersion"))
        if v is None or not self.enabled:
            return new, []
        meta = new.get("metadata") or {}
        name = str(meta.get("name") or "")
        body_schema = {
            **v.schema,
            "properties": {k: s for k, s in (v.schema.get("properties") or {}).items() if k != "metadata"},
        }
        warnings: list[str] = []
        if apply_body is not None:
            unknown = unknown_fields(
                body_schema, {k: x for k, x in apply_body.items() if k not in ("metadata", "apiVersion", "kind")}
            )
            if unknown:
                who = f"{meta.get('namespace')}/{name}" if meta.get("namespace") else f"/{name}"
                raise AdmissionError(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"failed to create typed patch object ({who}; {v.group}/{v.version}, Kind={v.kind}): "
                        f".{unknown[0]}: field not declared in schema",
                        "code": 500,
                    }
                )
        else:
            unknown = unknown_fields(
                body_schema, {k: x for k, x in new.items() if k not in ("metadata", "apiVersion", "kind")}
            )
            if unknown and field_validation == "Strict":
                detail = ", ".join(f'unknown field "{u}"' for u in unknown)
                raise AdmissionError(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f'{v.kind} in version "{v.version}" cannot be handled as a {v.kind}: '
                        f"strict decoding error: {detail}",
                        "reason": "BadRequest",
                        "code": 400,
                    }
                )
            if unknown and field_validation != "Ignore":
                warnings.extend(f'unknown field "{u}"' for u in unknown)
        obj = {k: x for k, x in new.items() if k in ("metadata", "apiVersion", "kind")}
        obj.update(prune(body_schema, {k: x for k, x in new.items() if k not in ("metadata", "apiVersion", "kind")}))
        obj = default(body_schema, obj)
        errors = self._errors(v, body_schema, obj, old, name)
        if errors:
            raise AdmissionError(invalid_status(v.kind, v.group, name, errors))
        return obj, warnings

    def _errors(
        self, v: Version, schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None, name: str
    ) -> list[FieldError]:
        errors: list[FieldError] = []
        if old is None and (len(name) > 253 or not DNS1123_SUBDOMAIN.match(name)):
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "metadata.name",
                    name,
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                )
            )
        body = {k: x for k, x in obj.items() if k != "metadata"}
        old_body = None if old is None else {k: x for k, x in old.items() if k != "metadata"}
        schema_errors = validate_schema(schema, body, "")
        if old_body is not None:
            schema_errors = [e for e in schema_errors if not _unchanged(schema, body, old_body, e.field)]
        errors.extend(schema_errors)
        if any(e.type in BLOCKING for e in errors):
            errors.append(
                FieldError(
                    "FieldValueInvalid",
                    "<nil>",
                    None,
                    "some validation rules were not checked because the object was invalid; correct the existing "
                    "errors to complete validation",
                )
            )
            return errors
        errors.extend(self._cel_errors(schema, body, old_body))
        return errors

    @staticmethod
    def _cel_errors(schema: dict[str, Any], body: dict[str, Any], old_body: dict[str, Any] | None) -> list[FieldError]:
        # CEL sees `number` fields as doubles: the same conversion `rayleigh validate` makes.
        new_cel = validation.apply_defaults(schema, copy.deepcopy(body))
        old_cel = None if old_body is None else validation.apply_defaults(schema, copy.deepcopy(old_body))
        out: list[FieldError] = []
        for key, sub in (schema.get("properties") or {}).items():
            if key not in new_cel:
                continue
            old_value = validation._ABSENT if old_cel is None or key not in old_cel else old_cel[key]
            if old_cel is not None and old_value == new_cel[key] and not _has_transition_rules(sub):
                continue  # unchanged: any error would be ratcheted
            for f in validation.cel_failures(sub, new_cel[key], key, old_value):
                if old_cel is not None and not f.transition and _unchanged(schema, new_cel, old_cel, f.node_path):
                    continue  # ratcheted
                out.append(_cel_field_error(f))
        for rule in schema.get("x-kubernetes-validations") or []:  # rules on the object's root
            for f in validation.cel_failures(
                {"x-kubernetes-validations": [rule], "type": "object"}, new_cel, "", old_cel
            ):
                out.append(_cel_field_error(f))
        return out


def _has_transition_rules(schema: Any) -> bool:
    if isinstance(schema, dict):
        if any(validation.uses_old_self(r.get("rule", "")) for r in schema.get("x-kubernetes-validations") or []):
            return True
        return any(_has_transition_rules(v) for v in schema.values() if isinstance(v, dict | list))
    if isinstance(schema, list):
        return any(_has_transition_rules(v) for v in schema)
    return False


def _cel_field_error(f: validation.RuleFailure) -> FieldError:
    """cel/validation.go fieldErrorForReason: Invalid (the node's type as value) unless `reason` says
    Forbidden, Required or Duplicate; an evaluation error is Invalid at the rule's node."""
    path = f.path or "<nil>"
    if f.error is None and f.reason == "FieldValueForbidden":
        return FieldError("FieldValueForbidden", path, OMIT, f.message)
    if f.error is None and f.reason == "FieldValueRequired":
        return FieldError("FieldValueRequired", path, OMIT, f.message)
    if f.error is None and f.reason == "FieldValueDuplicate":
        return FieldError("FieldValueDuplicate", path, f.node_type)
    return FieldError("FieldValueInvalid", path, f.node_type, f.message)


def warning_headers(warnings: Iterable[str]) -> list[str]:
    """RFC 7234 Warning headers as the API server sends them (code 299, agent `-`)."""
    return [f"299 - {json.dumps(w)}" for w in warnings]


# --- ValidatingAdmissionPolicy ------------------------------------------------------------------
#
# staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating (`dispatcher.Dispatch`,
# `validator.Validate`) and .../policy/matching (`Matcher.Matches`): a policy applies to a request
# its matchConstraints.resourceRules match (apiGroups, apiVersions, operations, resources with
# `*` and `resource/subresource`), then its matchConditions must all be true, then every validation
# expression must be true; `variables` are evaluated in order and read as `variables.NAME`. A
# binding (`policyName`) with `Deny` turns a failed validation into a 422 `Invalid` (the
# validation's `reason` changes the code) with the message `KIND "NAME" is forbidden:
# ValidatingAdmissionPolicy 'P' with binding 'B' denied request: <message>`; `Warn` adds a warning.
# An expression that cannot be evaluated fails the request with failurePolicy Fail (the default).
# Not modelled: namespaceSelector/objectSelector, paramKind/paramRef, binding matchResources,
# auditAnnotations, the `authorizer` and `namespaceObject` variables, type checking.

VAP_GROUP = "admissionregistration.k8s.io"
VAP_PLURALS = ("validatingadmissionpolicies", "validatingadmissionpolicybindings")


@dataclass(frozen=True)
class AdmissionRequest:
    operation: str  # CREATE, UPDATE, DELETE
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    username: str
    groups: tuple[str, ...]
    uid: str = ""


def _rule_matches(rule: dict[str, Any], req: AdmissionRequest) -> bool:
    def has(values: list[str] | None, value: str) -> bool:
        return bool(values) and ("*" in values or value in values)  # type: ignore[operator]

    if not (has(rule.get("apiGroups"), req.group) and has(rule.get("apiVersions"), req.version)):
        return False
    if not has(rule.get("operations"), req.operation):
        return False
    combined = f"{req.resource}/{req.subresource}" if req.subresource else req.resource
    resources = rule.get("resources") or []
    return any(
        r == combined
        or (r == "*" and not req.subresource)
        or (r == "*/*")
        or (r == f"*/{req.subresource}" and req.subresource)
        for r in resources
    )


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    """Evaluate with cel-python; `activation` holds JSON values, except `variables` (CEL values)."""
    from celpy import celtypes

    cel = {k: validation._to_cel(v) for k, v in activation.items() if k != "variables"}
    if "variables" in activation:
        cel["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in activation["variables"].items()})
    try:
        result = validation._program(expression).evaluate(cel)
    except Exception as exc:  # cel-python raises its own errors and Python ones
        raise validation.RuleEvaluationError(validation._error_text(exc)) from None
    if isinstance(result, Exception):
        raise validation.RuleEvaluationError(validation._error_text(result))
    return result


@dataclass
class PolicyAdmission:
    """The ValidatingAdmissionPolicies and bindings stored in the emulator, by name."""

    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def observe(self, plural: str, name: str, obj: dict[str, Any] | None) -> None:
        target = self.policies if plural == VAP_PLURALS[0] else self.bindings
        if obj is None:
            target.pop(name, None)
        else:
            target[name] = obj

    def validate(self, req: AdmissionRequest, obj: dict[str, Any] | None, old: dict[str, Any] | None) -> list[str]:
        """Warnings; AdmissionError when a Deny binding's policy refuses the request."""
        warnings: list[str] = []
        for binding in self.bindings.values():
            spec = binding.get("spec") or {}
            policy = self.policies.get(spec.get("policyName", ""))
            if policy is None:
                continue
            message = self._denial(policy, req, obj, old)
            if message is None:
                continue
            text = f"ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding '{binding['metadata']['name']}' denied request: {message[0]}"
            actions = spec.get("validationActions") or []
            if "Deny" in actions:
                reason = message[1] or "Invalid"
                qualified = f"{req.resource}.{req.group}" if req.group else req.resource
                raise AdmissionError(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f'{qualified} "{req.name}" is forbidden: {text}',
                        "reason": reason,
                        "details": {
                            "name": req.name,
                            "group": req.group,
                            "kind": req.resource,
                            "causes": [{"message": text}],
                        },
                        "code": {
                            "Unauthorized": 401,
                            "Forbidden": 403,
                            "Invalid": 422,
                            "RequestEntityTooLarge": 413,
                        }.get(reason, 422),
                    }
                )
            if "Warn" in actions:
                warnings.append(
                    f"Validation failed for ValidatingAdmissionPolicy '{policy['metadata']['name']}' with binding '{binding['metadata']['name']}': {message[0]}"
                )
        return warnings

    @staticmethod
    def _denial(
        policy: dict[str, Any], req: AdmissionRequest, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> tuple[str, str | None] | None:
        spec = policy.get("spec") or {}
        rules = (spec.get("matchConstraints") or {}).get("resourceRules") or []
        if not any(_rule_matches(r, req) for r in rules):
            return None
        fail = spec.get("failurePolicy", "Fail") == "Fail"
        activation: dict[str, Any] = {
            "object": obj,
            "oldObject": old,
            "request": {
                "operation": req.operation,
                "name": req.name,
                "namespace": req.namespace,
                "resource": {"group": req.group, "version": req.version, "resource": req.resource},
                "subResource": req.subresource,
                "userInfo": {"username": req.username, "groups": list(req.groups), "uid": req.uid},
            },
        }
        try:
            for condition in spec.get("matchConditions") or []:
                if not bool(_evaluate(condition["expression"], activation)):
                    return None
            variables: dict[str, Any] = {}
            activation["variables"] = variables
            for variable in spec.get("variables") or []:
                variables[variable["name"]] = _evaluate(variable["expression"], activation)
            for v in spec.get("validations") or []:
                if not bool(_evaluate(v["expression"], activation)):
                    return (str(v.get("message") or f"failed expression: {v['expression']}").strip(), v.get("reason"))
        except validation.RuleEvaluationError as exc:
            if fail:
                return (f"expression could not be evaluated: {exc}", None)
        return None

"""Generate the ModelDeployment CustomResourceDefinition from the pydantic API model.

Pydantic emits JSON Schema (draft 2020-12) with `$ref`s and `anyOf` nullables; a CRD needs a
*structural* OpenAPI v3.0 schema: everything inlined, one type per node, `x-kubernetes-*`
extensions for int-or-string and free-form objects, and CEL rules beside the object they
constrain. This module does that translation deterministically, so the checked-in CRD can be
compared byte for byte with a fresh generation.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import yaml
from pydantic import BaseModel

import rayleigh_api as api


def _model_classes(root: type[BaseModel]) -> dict[str, type[api.ApiModel]]:
    """Every ApiModel reachable from `root`, by class name (the `$defs` key pydantic uses)."""
    found: dict[str, type[api.ApiModel]] = {}
    stack: list[Any] = [root]
    while stack:
        cls = stack.pop()
        if not (isinstance(cls, type) and issubclass(cls, api.ApiModel)) or cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for field in cls.model_fields.values():
            stack.extend(_types_in(field.annotation))
    return found


def _types_in(annotation: Any) -> list[Any]:
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    out: list[Any] = []
    for arg in args:
        out.extend(_types_in(arg))
    return out


class _Translator:
    def __init__(self, defs: dict[str, Any], classes: dict[str, type[api.ApiModel]]) -> None:
        self.defs = defs
        self.classes = classes

    def node(self, schema: dict[str, Any], cls_name: str | None = None) -> dict[str, Any]:
        schema = copy.deepcopy(schema)
        if "$ref" in schema:
            name = schema.pop("$ref").rsplit("/", 1)[-1]
            resolved = self.node(self.defs[name], cls_name=name)
            # Field-level description and default win over the class docstring.
            resolved.update({k: v for k, v in schema.items() if k in ("description", "default")})
            return self._finish(resolved)
        if "anyOf" in schema:
            options = [o for o in schema.pop("anyOf") if o.get("type") != "null"]
            if schema.get("default", "absent") is None:
                del schema["default"]
            if len(options) == 1:
                inner = self.node(options[0])
                inner.update(schema)  # the field's own keywords (description, default, ...) win
                return self._finish(inner)
            types = sorted(o.get("type", "") for o in options)
            if types == ["integer", "string"]:
                schema.pop("x-kubernetes-int-or-string", None)
                out = {"x-kubernetes-int-or-string": True, **schema}
                return self._finish(out)
            raise ValueError(f"cannot express union {options} in a structural schema")

        if schema.get("default", "absent") is None:
            del schema["default"]
        # A typed map keeps its (translated) value schema; a free-form object preserves unknown
        # fields; `additionalProperties: false` (extra="forbid") is not allowed in a CRD: dropped.
        additional = schema.pop("additionalProperties", None)
        map_values = self.node(additional) if isinstance(additional, dict) and additional else None
        if schema.get("type") == "object" and (additional is True or additional == {}):
            schema["x-kubernetes-preserve-unknown-fields"] = True
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            schema["minimum"] = schema.pop("exclusiveMinimum")
            schema["exclusiveMinimum"] = True
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            schema["maximum"] = schema.pop("exclusiveMaximum")
            schema["exclusiveMaximum"] = True
        if "properties" in schema:
            schema["properties"] = {k: self.node(v) for k, v in schema["properties"].items()}
        if "items" in schema:
            schema["items"] = self.node(schema["items"])
        if cls_name and cls_name in self.classes:
            rules = self.classes[cls_name].RULES
            if rules:
                schema["x-kubernetes-validations"] = [r.to_crd() for r in rules]
        schema = self._finish(schema)
        if map_values is not None:
            schema["additionalProperties"] = map_values
        return schema

    @staticmethod
    def _finish(schema: dict[str, Any]) -> dict[str, Any]:
        schema.pop("title", None)
        if "const" in schema:
            schema["enum"] = [schema.pop("const")]
        return schema


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one API model (with its CEL rules)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    translator = _Translator(defs, _model_classes(model))
    return translator.node(raw, cls_name=model.__name__)


def openapi_schema() -> dict[str, Any]:
    """The ModelDeployment's openAPIV3Schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(cached_openapi_schema())


@functools.cache
def cached_openapi_schema() -> dict[str, Any]:
    """The same schema built once per process (about 45 ms): read-only, shared by validation."""
    spec = object_schema(api.ModelDeploymentSpec)
    status = object_schema(api.ModelDeploymentStatus)
    return {
        "type": "object",
        "description": (api.ModelDeployment.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "serving.rayleigh.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ModelDeployment"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.source", "description": "Model source."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas", "description": "Desired replicas."},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas", "description": "Ready replicas."},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "description": "OpenAI base URL."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "rayleigh", "app.kubernetes.io/part-of": "rayleigh"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `rayleigh crd` from rayleigh_operator/api.py. Do not edit by hand: run `make crd`.\n"


def crd_yaml() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)

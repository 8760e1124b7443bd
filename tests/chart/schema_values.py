"""Hypothesis strategies that generate values documents from the chart's values.schema.json.

A small, explicit interpreter of the JSON Schema subset the chart's schema uses (`$ref` to
`#/definitions/...`, `type` (one or a list), `properties` / `required` / `additionalProperties` /
`propertyNames`, `items` / `minItems` / `maxItems` / `uniqueItems`, `enum`, `const`, `pattern` /
`minLength` / `maxLength`, `minimum` / `maximum` / `exclusiveMinimum`, `oneOf`, `allOf` and
`if`/`then`), so that no extra dependency is needed. Strings without a pattern are drawn from all of
Unicode, control characters included: whatever the schema lets through must survive the templates.

Cross-field rules (`allOf`, `if`/`then`) are not generated constructively: `effective_values`
merges a document over the chart's defaults as Helm does, and callers keep the documents that the
full schema accepts (`jsonschema`, draft 7), the same check `helm template` makes.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import strategies as st

# Sizes: enough to reach every branch, small enough to keep one `helm template` per example fast.
MAX_ITEMS = 3
MAX_TEXT = 40
INT_BOUND = 2**31 - 1

Schema = dict[str, Any]


class SchemaStrategies:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.definitions: dict[str, Schema] = schema.get("definitions", {})
        self.validator = jsonschema.Draft7Validator(schema)

    def resolve(self, node: Schema) -> Schema:
        while "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/definitions/"), f"unsupported $ref {ref}"
            target = self.definitions[ref.removeprefix("#/definitions/")]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def values(self) -> st.SearchStrategy[dict[str, Any]]:
        """A values document: any subset of the schema's properties, each drawn from its schema."""
        strategy: st.SearchStrategy[dict[str, Any]] = self.of(self.schema)
        return strategy

    def of(self, node: Schema) -> st.SearchStrategy[Any]:
        node = self.resolve(node)
        if "const" in node:
            return st.just(node["const"])
        if "enum" in node:
            return st.sampled_from(node["enum"])
        if "oneOf" in node:
            return st.one_of([self.of(branch) for branch in node["oneOf"]])
        kind = node.get("type")
        if kind is None:
            kind = "object" if "properties" in node or "additionalProperties" in node else None
        if isinstance(kind, list):
            return st.one_of([self.of({**node, "type": k}) for k in kind])
        if kind == "object":
            return self.object(node)
        if kind == "array":
            return self.array(node)
        if kind == "string":
            return self.string(node)
        if kind == "integer":
            return st.integers(self._low(node, -INT_BOUND), int(node.get("maximum", INT_BOUND)))
        if kind == "number":
            low, high = self._low(node, -1e9), float(node.get("maximum", 1e9))
            return st.one_of(
                st.integers(int(low) + 1, int(high)),
                st.floats(low, high, allow_nan=False, allow_infinity=False, exclude_min="exclusiveMinimum" in node),
            )
        if kind == "boolean":
            return st.booleans()
        if kind == "null":
            return st.none()
        raise AssertionError(f"no strategy for schema {json.dumps(node)[:200]}")

    @staticmethod
    def _low(node: Schema, default: float) -> int:
        if "exclusiveMinimum" in node:
            return int(node["exclusiveMinimum"]) + 1
        return int(node.get("minimum", default))

    def object(self, node: Schema) -> st.SearchStrategy[dict[str, Any]]:
        props: dict[str, Schema] = node.get("properties", {})
        if props:
            required = set(node.get("required", []))
            return st.fixed_dictionaries(
                {k: self.of(v) for k, v in props.items() if k in required},
                optional={k: self.of(v) for k, v in props.items() if k not in required},
            )
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            keys = self.string({"type": "string", **node.get("propertyNames", {})})
            return st.dictionaries(keys, self.of(extra), max_size=MAX_ITEMS)
        # A free-form object (affinity, a route's auth): only the empty one is known to be meaningful.
        return st.just({})

    def array(self, node: Schema) -> st.SearchStrategy[list[Any]]:
        items = self.of(node.get("items", {"type": "string"}))
        low = int(node.get("minItems", 0))
        high = min(int(node.get("maxItems", MAX_ITEMS)), max(low, MAX_ITEMS))
        unique_by = (lambda v: json.dumps(v, sort_keys=True)) if node.get("uniqueItems") else None
        return st.lists(items, min_size=low, max_size=high, unique_by=unique_by)

    def string(self, node: Schema) -> st.SearchStrategy[str]:
        low, high = int(node.get("minLength", 0)), node.get("maxLength")
        excluded = set(node.get("not", {}).get("enum", []))
        if "pattern" in node:
            strategy = st.from_regex(node["pattern"], fullmatch=True)
            strategy = strategy.filter(lambda s: len(s) >= low and (high is None or len(s) <= high))
        else:
            strategy = st.text(min_size=low, max_size=min(high or MAX_TEXT, MAX_TEXT))
        if excluded:
            strategy = strategy.filter(lambda s: s not in excluded)
        return strategy


def coalesce(defaults: Any, overrides: Any) -> Any:
    """Helm's merge of a values file over the chart's values.yaml: maps merge key by key, anything
    else replaces, and null removes the key."""
    if not isinstance(defaults, dict) or not isinstance(overrides, dict):
        return copy.deepcopy(overrides)
    out = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif key in out:
            out[key] = coalesce(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _yaml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def to_yaml(value: Any) -> str:
    """A values file any YAML parser reads back exactly: flow style, every string double-quoted with
    each character outside printable ASCII escaped (YAML's \\u and \\U escapes; JSON's surrogate
    pairs and raw control characters are not YAML)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_string(str(k))}: {to_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_yaml(v) for v in value) + "]"
    if isinstance(value, str):
        return _yaml_string(value)
    return json.dumps(value)


def effective_values(chart: Path, document: dict[str, Any]) -> dict[str, Any]:
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    merged: dict[str, Any] = coalesce(defaults, document)
    return merged

"""The API's field reference, rendered from the CRD schema: `rayleigh explain` and docs/API.md.

Both read the same generated schema as `kubectl explain`, so the three never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from rayleigh_api import crd


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return "object (free-form)"
    kind = str(node.get("type", "?"))
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return kind


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {node['minimum']}")
    if "maximum" in node:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '<='} {node['maximum']}")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if "default" in node and node["default"] != {}:
        parts.append(f"default `{json.dumps(node['default'])}`")
    return "; ".join(parts)


def fields(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any], bool]]:
    """(path, node, required) for every field under `node`, depth first."""
    out: list[tuple[str, dict[str, Any], bool]] = []
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        sub_path = f"{path}.{name}"
        out.append((sub_path, sub, name in required))
        target = sub.get("items", sub) if sub.get("type") == "array" else sub
        out.extend(fields(target, sub_path + ("[]" if sub.get("type") == "array" else "")))
    return out


def lookup(path: str) -> dict[str, Any]:
    """The schema node at a dotted path such as `spec.model.source` (list items with or without [])."""
    node = crd.openapi_schema()
    parts = [p for p in path.replace("[]", "").split(".") if p]
    if parts and parts[0].lower() in ("modeldeployment", "md", "modeldeployments"):
        parts = parts[1:]
    walked: list[str] = []
    for part in parts:
        if node.get("type") == "array":
            node = node.get("items", {})
        props = node.get("properties", {})
        if part not in props:
            where = ".".join(walked) or "ModelDeployment"
            raise KeyError(f"field {part!r} does not exist in {where}; fields: {', '.join(props) or '(none)'}")
        node = props[part]
        walked.append(part)
    return node


def explain(path: str) -> str:
    node = lookup(path)
    lines = [f"FIELD: {path or 'ModelDeployment'} <{_type_of(node)}>", "", "DESCRIPTION:"]
    lines.append(f"    {node.get('description', '(none)')}")
    constraints = _constraints(node)
    if constraints:
        lines += ["", f"CONSTRAINTS: {constraints}"]
    target = node.get("items", node) if node.get("type") == "array" else node
    for rule in target.get("x-kubernetes-validations", []):
        lines.append(f"RULE: {rule['message']}")
    props = target.get("properties", {})
    if props:
        lines += ["", "FIELDS:"]
        required = set(target.get("required", []))
        for name, sub in props.items():
            flag = " -required-" if name in required else ""
            lines.append(f"  {name}\t<{_type_of(sub)}>{flag}")
            lines.append(f"    {sub.get('description', '')}")
    return "\n".join(lines)


def markdown() -> str:
    """docs/API.md: every spec and status field with its type, constraints and description."""
    schema = crd.openapi_schema()
    out = [
        "# ModelDeployment API reference (serving.rayleigh.dev/v1alpha1)",
        "",
        "Generated from `api/rayleigh_api/` by `make docs`; `rayleigh explain FIELD` and",
        "`kubectl explain modeldeployment.FIELD` print the same text. Do not edit by hand.",
        "",
    ]
    for top in ("spec", "status"):
        out += [f"## {top}", "", "| field | type | constraints | description |", "|---|---|---|---|"]
        for path, node, required in fields(schema["properties"][top], top):
            desc = str(node.get("description", "")).replace("|", "\\|").replace("\n", " ")
            cons = _constraints(node).replace("|", "\\|")
            req = " (required)" if required else ""
            out.append(f"| `{path}`{req} | {_type_of(node)} | {cons} | {desc} |")
        out.append("")
    out += ["## Validation rules (CEL, enforced by the API server and by `rayleigh validate`)", ""]
    spec = schema["properties"]["spec"]
    for path, node, _ in [("spec", spec, True), *fields(spec, "spec")]:
        for rule in node.get("x-kubernetes-validations", []):
            out.append(f"- `{path}{rule.get('fieldPath', '')}`: {rule['message']}")
    out.append("")
    return "\n".join(out)

"""The params of a component under test: defaults, validation, and the ``params_schema``
check (its JSON Schema is a valid schema)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .results import Status

if TYPE_CHECKING:
    from ..core.components import Component


def _default_params(component: Component) -> tuple[dict[str, Any] | None, str]:
    """``({}, "")`` when the params model validates without input, else (None, why)."""
    if component.params is None:
        return {}, ""
    from pydantic import ValidationError

    try:
        component.params.model_validate({})
    except ValidationError:
        fields = component.params.model_fields
        required = [name for name, info in fields.items() if info.is_required()]
        return None, "needs params: " + ", ".join(required or ["(a valid value)"])
    return {}, ""


def _invalid_params(component: Component, params: Mapping[str, Any]) -> str:
    """Why ``params`` do not validate against the component's params model ("" if they do)."""
    if component.params is None:
        return "" if not params else f"takes no params, got {sorted(params)}"
    from pydantic import ValidationError

    try:
        component.params.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid params: {problems}"
    return ""


_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "not", "additionalProperties", "if", "then", "else", "contains")


def _structural_problems(schema: Any) -> list[str]:
    """Problems of a JSON Schema found without ``jsonschema`` (empty: looks valid)."""
    if not isinstance(schema, dict):
        return [f"the schema is a {type(schema).__name__}, not an object"]
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append(f"top-level type is {schema.get('type')!r}, not 'object'")
    defs = schema.get("$defs", {})
    if not isinstance(defs, dict):
        problems.append("$defs is not an object")
        defs = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, bool):
            return
        if not isinstance(node, dict):
            problems.append(f"{path}: a schema must be an object or a boolean")
            return
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        for name in kinds:
            if name not in _TYPES:
                problems.append(f"{path}: unknown type {name!r}")
        ref = node.get("$ref")
        if ref is not None:
            target = ref.removeprefix("#/$defs/") if isinstance(ref, str) else None
            if not isinstance(ref, str) or (ref.startswith("#/") and target not in defs):
                problems.append(f"{path}: $ref {ref!r} does not resolve")
        props = node.get("properties")
        if props is not None:
            if not isinstance(props, dict):
                problems.append(f"{path}.properties is not an object")
            else:
                for key, sub in props.items():
                    walk(sub, f"{path}.properties.{key}")
        required = node.get("required")
        if required is not None:
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                problems.append(f"{path}.required is not a list of strings")
            elif isinstance(props, dict):
                missing = [r for r in required if r not in props]
                if missing:
                    problems.append(f"{path}.required names unknown properties {missing}")
        for key in _SUBSCHEMA_LISTS:
            subs = node.get(key)
            if subs is not None:
                if not isinstance(subs, list):
                    problems.append(f"{path}.{key} is not a list")
                else:
                    for i, sub in enumerate(subs):
                        walk(sub, f"{path}.{key}[{i}]")
        for key in _SUBSCHEMA_ONE:
            if key in node:
                walk(node[key], f"{path}.{key}")

    walk(schema, "$")
    for name, sub in defs.items():
        walk(sub, f"$defs.{name}")
    return problems


def _check_params_schema(component: Component) -> tuple[Status, str]:
    try:
        schema = component.params_schema()
    except Exception as exc:
        return "fail", f"no JSON Schema: {type(exc).__name__}: {exc}"
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        return "fail", f"the schema is not JSON-serialisable: {exc}"
    problems = _structural_problems(schema)
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        method = "structural; install jsonschema for a metaschema check"
    else:
        method = "metaschema"
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.insert(0, f"metaschema: {exc.message}")
    if problems:
        return "fail", "; ".join(problems)
    return "pass", f"valid ({method})"

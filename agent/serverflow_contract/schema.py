"""A small, strict JSON Schema subset for action parameters and protocol frames.

Supported keywords: type (string, integer, number, boolean, object, array, null, or a
list of them), properties, required, additionalProperties (bool or schema), items,
enum, const, minLength, maxLength, pattern (full match), minimum, maximum, minItems,
maxItems. Unknown keywords are refused when a schema is checked, so a schema never
silently means less than it says. Kept dependency-free: the agent must stay light.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

KNOWN = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "description",
    "title",
    "default",
}
TYPES = {"string", "integer", "number", "boolean", "object", "array", "null"}


class SchemaError(ValueError):
    """The value does not match; `path` says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '(root)'}: {problem}")
        self.path = path or "(root)"
        self.problem = problem


def check_schema(schema: dict[str, Any], path: str = "") -> None:
    """Refuse schemas that use keywords this validator does not implement."""
    if not isinstance(schema, dict):
        raise SchemaError(path, "schema must be an object")
    unknown = set(schema) - KNOWN
    if unknown:
        raise SchemaError(path, f"unsupported schema keywords: {', '.join(sorted(unknown))}")
    types = schema.get("type")
    for t in [types] if isinstance(types, str) else types or []:
        if t not in TYPES:
            raise SchemaError(path, f"unknown type {t!r}")
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        check_schema(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        check_schema(schema["items"], f"{path}[]")
    if "pattern" in schema:
        _compiled(schema["pattern"])


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _type_ok(value: Any, t: str) -> bool:
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    return value is None


def validate(value: Any, schema: dict[str, Any], path: str = "") -> None:
    """Raise SchemaError at the first mismatch."""
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_type_ok(value, t) for t in allowed):
            raise SchemaError(path, f"expected {' or '.join(allowed)}")
    if "const" in schema and value != schema["const"]:
        raise SchemaError(path, f"must be {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(path, f"must be one of {schema['enum']!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaError(path, f"shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaError(path, f"longer than {schema['maxLength']}")
        if "pattern" in schema and not _compiled(schema["pattern"]).fullmatch(value):
            raise SchemaError(path, "does not match the required pattern")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(path, f"less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(path, f"greater than {schema['maximum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise SchemaError(path, f"fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(path, f"more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                raise SchemaError(f"{path}.{name}" if path else name, "is required")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in props:
                validate(item, props[key], sub)
            elif extra is False:
                raise SchemaError(sub, "is not allowed")
            elif isinstance(extra, dict):
                validate(item, extra, sub)

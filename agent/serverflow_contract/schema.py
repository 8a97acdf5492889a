"""JSON Schema for action parameters and protocol frames: a guarded subset, validated by
fastjsonschema.

The schemas are standard JSON Schema: they are handed to MCP clients, which read them as
such. `check_schema` keeps them to the keywords below, so a schema never silently means
less than it says: type (string, integer, number, boolean, object, array, null, or a list
of them), properties, required, additionalProperties (bool or schema), items (one
schema), enum, const, minLength, maxLength, pattern, minimum, maximum, minItems, maxItems,
and the annotations description, title and default (never filled in).

A JSON Schema `pattern` matches anywhere in the string, so the guard wants it anchored,
`^...$`, with any alternation in a group (`^(?:a|b)$`): written that way it means the
same to every reader. It also refuses the regex escapes whose meaning differs between
Python's `re` (which runs them here) and the ECMA-262 dialect of JSON Schema (\\d, \\w,
\\s and \\b match more in Python; \\A, \\Z and inline flags are Python's own).

Two readings stricter than draft 2020-12, kept from the validator this replaces: a bool is
never an integer or a number, and 1.0 is not an integer (the code reading an "integer"
member expects an int). Each schema is checked and compiled once; validating is then a
call of the generated function.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
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
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems")
_BOUNDS = ("minimum", "maximum")
# Escapes whose meaning differs between Python's re and ECMA-262 (or that ECMA lacks).
_DIALECT_ESCAPES = set("dDwWsSbBAZz")
# After "(?": inline flags, comments and (?P...) groups are Python's own.
_PYTHON_GROUPS = set("aiLmsux-#P")


class SchemaError(ValueError):
    """The value does not match; `path` says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or '(root)'}: {problem}")
        self.path = path or "(root)"
        self.problem = problem


class UnsupportedSchema(SchemaError):
    """The schema itself is refused (outside the guarded subset, or not valid)."""


# -- the guard ------------------------------------------------------------------------


def check_schema(schema: dict[str, Any], path: str = "") -> None:
    """Refuse schemas outside the supported subset (keywords, their values, patterns)."""
    if not isinstance(schema, dict):
        raise SchemaError(path, "schema must be an object")
    unknown = set(schema) - KNOWN
    if unknown:
        raise SchemaError(path, f"unsupported schema keywords: {', '.join(sorted(unknown))}")
    types = schema.get("type")
    if types is not None:
        listed = [types] if isinstance(types, str) else types
        if not isinstance(listed, list) or not listed:
            raise SchemaError(path, "type must be a type name or a list of them")
        for t in listed:
            if t not in TYPES:
                raise SchemaError(path, f"unknown type {t!r}")
    for key in _COUNTS:
        if key in schema and not _is_int(schema[key], minimum=0):
            raise SchemaError(path, f"{key} must be a non-negative integer")
    for key in _BOUNDS:
        if key in schema and not _is_number(schema[key]):
            raise SchemaError(path, f"{key} must be a number")
    if "enum" in schema and not isinstance(schema["enum"], list):
        raise SchemaError(path, "enum must be a list")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(n, str) for n in required):
        raise SchemaError(path, "required must be a list of names")
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaError(path, "properties must be an object")
    for name, sub in properties.items():
        check_schema(sub, f"{path}.{name}" if path else name)
    extra = schema.get("additionalProperties", True)
    if isinstance(extra, dict):
        check_schema(extra, f"{path}.*")
    elif not isinstance(extra, bool):
        raise SchemaError(path, "additionalProperties must be true, false or a schema")
    if "items" in schema:
        check_schema(schema["items"], f"{path}[]")
    if "pattern" in schema:
        problem = _pattern_problem(schema["pattern"])
        if problem:
            raise SchemaError(path, problem)


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _pattern_problem(pattern: Any) -> str | None:
    if not isinstance(pattern, str):
        return "pattern must be a string"
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid pattern: {exc}"
    if not pattern.startswith("^"):
        return "pattern must be anchored: start with ^ and end with $"
    depth, in_class, class_start, end_anchor = 0, False, 0, False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1 : i + 2] in _DIALECT_ESCAPES:
                return (
                    f"\\{pattern[i + 1]} means something else in Python than in JSON Schema: "
                    "write the characters out (e.g. [0-9])"
                )
            i += 2
            continue
        if c == "$":
            # fastjsonschema reads every unescaped $ as the end of the string, and misses
            # the anchor in a final \\$.
            if i != n - 1 or in_class or pattern.endswith("\\$"):
                return "$ may only end the pattern, after anything but \\ (\\$ is a dollar sign)"
            end_anchor = True
        elif in_class:
            # "]" right after "[" or "[^" is a literal.
            in_class = not (c == "]" and i > class_start)
        elif c == "[":
            in_class = True
            class_start = i + 2 if pattern[i + 1 : i + 2] == "^" else i + 1
        elif c == "(":
            if pattern[i + 1 : i + 2] == "?" and pattern[i + 2 : i + 3] in _PYTHON_GROUPS:
                return "inline flags, (?#...) and (?P...) are Python's own: not in JSON Schema"
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return "an alternation must be grouped inside the anchors: ^(?:a|b)$"
        i += 1
    if not end_anchor:
        return "pattern must be anchored: start with ^ and end with $"
    return None


# -- validation -----------------------------------------------------------------------

Validator = Callable[[Any], Any]
_CACHE_SIZE = 1024
# id(schema) -> (schema, validator): holding the schema keeps its id from being reused, and
# the hot path is one dict look-up. Schemas are taken as immutable once used.
_by_id: dict[int, tuple[dict[str, Any], Validator]] = {}
# The schema's JSON text -> validator, for equal schemas built anew (e.g. parsed per request).
_by_text: dict[str, Validator] = {}


def compiled(schema: dict[str, Any]) -> Validator:
    """The checked, compiled validator of `schema` (cached)."""
    hit = _by_id.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    if not isinstance(schema, dict):
        raise UnsupportedSchema("", "schema must be an object")
    try:
        text = json.dumps(schema, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UnsupportedSchema("", f"schema is not JSON: {exc}") from exc
    validator = _by_text.get(text)
    if validator is None:
        try:
            validator = _compile(schema)
        except UnsupportedSchema:
            raise
        except SchemaError as exc:
            raise UnsupportedSchema(exc.path, exc.problem) from exc
        if len(_by_text) >= _CACHE_SIZE:
            _by_text.clear()
        _by_text[text] = validator
    if len(_by_id) >= _CACHE_SIZE:
        _by_id.clear()
    _by_id[id(schema)] = (schema, validator)
    return validator


@functools.cache
def _generator_class() -> type:
    # Imported here: processes that only build frames (action runners) never load it.
    from fastjsonschema.draft04 import CodeGeneratorDraft04
    from fastjsonschema.draft2019 import CodeGeneratorDraft2019

    class Generator(CodeGeneratorDraft2019):
        # Since draft 6 a float like 1.0 is an integer; draft 4's reading keeps it out
        # (and, like every draft, refuses a bool as an integer or a number).
        generate_type = CodeGeneratorDraft04.generate_type

    return Generator


def _compile(schema: dict[str, Any]) -> Validator:
    check_schema(schema)  # before any code is generated from it: no $ref, nothing fetched
    from fastjsonschema import JsonSchemaDefinitionException
    from fastjsonschema.ref_resolver import RefResolver

    # What fastjsonschema.compile does, with our generator (fastjsonschema>=2.19,<3).
    try:
        resolver = RefResolver.from_schema(schema, handlers={}, store={})
        generator = _generator_class()(
            schema, resolver=resolver, use_default=False, use_formats=False
        )
        state = generator.global_state
        exec(generator.func_code, state)  # noqa: S102 - code generated from a checked schema
    except JsonSchemaDefinitionException as exc:
        raise UnsupportedSchema("", f"invalid schema: {exc}") from exc
    validator: Validator = state[resolver.get_scope_name()]
    return validator


def validate(value: Any, schema: dict[str, Any], path: str = "") -> None:
    """Raise SchemaError at the first mismatch (or if the schema itself is refused)."""
    validator = compiled(schema)
    from fastjsonschema import JsonSchemaValueException

    try:
        validator(value)
    except JsonSchemaValueException as exc:
        where, problem = _explain(exc)
        raise SchemaError(_join(path, where), problem) from None


def _join(path: str, where: str) -> str:
    if not path:
        return where.removeprefix(".")
    return path + where


def _explain(exc: Any) -> tuple[str, str]:
    """(path relative to the root, written ".a.b[2].c" or "", problem) of an exception."""
    name: str = exc.name or "data"
    where = name.removeprefix("data")
    rule, limit, value = exc.rule, exc.rule_definition, exc.value
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    if rule == "type":
        types = [limit] if isinstance(limit, str) else list(limit or [])
        return where, f"expected {' or '.join(types)}"
    if rule == "required" and isinstance(value, dict):
        missing = next((n for n in limit if n not in value), "?")
        return f"{where}.{missing}", "is required"
    if rule == "additionalProperties" and isinstance(value, dict):
        props = definition.get("properties", {})
        extra = next((k for k in value if k not in props), "?")
        return f"{where}.{extra}", "is not allowed"
    problems = {
        "const": lambda: f"must be {limit!r}",
        "enum": lambda: f"must be one of {limit!r}",
        "minLength": lambda: f"shorter than {limit}",
        "maxLength": lambda: f"longer than {limit}",
        "pattern": lambda: "does not match the required pattern",
        "minimum": lambda: f"less than {limit}",
        "maximum": lambda: f"greater than {limit}",
        "minItems": lambda: f"fewer than {limit} items",
        "maxItems": lambda: f"more than {limit} items",
    }
    if rule in problems:
        return where, problems[rule]()
    return where, str(exc.message).removeprefix(name).strip()

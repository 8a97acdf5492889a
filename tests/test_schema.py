"""serverflow_contract.schema: the guard, and schemas that mean what a standard JSON Schema
reader (here the `jsonschema` package) takes them to mean."""

from __future__ import annotations

import contextlib
import copy
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serverflow_agent.plugins import AgentPlugins
from serverflow_contract import desired, protocol
from serverflow_contract.schema import SchemaError, check_schema, compiled, validate

sys.path.insert(0, str(Path(__file__).parent / "data" / "agent_test_plugin"))
from sf_agent_testkit.plugin import ACTIONS as TEST_PLUGIN_ACTIONS


def action_schemas() -> dict[str, dict[str, Any]]:
    schemas = {name: spec.params_schema for name, spec in _registered().items()}
    schemas.update({spec.name: spec.params_schema for spec in TEST_PLUGIN_ACTIONS})
    return schemas


def _registered() -> dict[str, Any]:
    plugins = AgentPlugins()
    return {name: plugins.actions.get(name) for name in plugins.actions.names()}


def message_schemas() -> dict[str, dict[str, Any]]:
    return {**protocol.BODY_SCHEMAS, "action description": protocol.ACTION_DESCRIPTION}


def patterns_in(schema: Any) -> list[str]:
    if isinstance(schema, dict):
        found = [schema["pattern"]] if isinstance(schema.get("pattern"), str) else []
        return found + [p for value in schema.values() for p in patterns_in(value)]
    if isinstance(schema, list):
        return [p for value in schema for p in patterns_in(value)]
    return []


ALL_PATTERNS = sorted(
    {p for s in [*action_schemas().values(), *message_schemas().values()] for p in patterns_in(s)}
)


def ours(value: Any, schema: dict[str, Any]) -> bool:
    try:
        validate(value, schema)
    except SchemaError:
        return False
    return True


def standard(value: Any, schema: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


# -- the guard ------------------------------------------------------------------------


def test_every_registered_action_schema_passes_the_guard() -> None:
    schemas = action_schemas()
    assert {"state.apply", "system.service_status", "pm2.status", "test.touch"} <= set(schemas)
    for name, schema in schemas.items():
        check_schema(schema)
        jsonschema.Draft202012Validator.check_schema(schema)  # and it is valid JSON Schema
        assert name


def test_every_message_schema_passes_the_guard() -> None:
    for schema in message_schemas().values():
        check_schema(schema)
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "string", "format": "email"}, "(root)"),
        ({"oneOf": [{"type": "string"}]}, "(root)"),
        ({"$ref": "https://example.com/schema.json"}, "(root)"),
        ({"type": "object", "properties": {"a": {"type": "string", "minimum": 1, "x": 1}}}, "a"),
        ({"type": "array", "items": {"uniqueItems": True}}, "[]"),
        ({"type": "object", "additionalProperties": {"patternProperties": {}}}, ".*"),
    ],
)
def test_guard_refuses_unknown_keywords(schema: dict[str, Any], where: str) -> None:
    with pytest.raises(SchemaError, match="unsupported schema keywords") as err:
        check_schema(schema)
    assert err.value.path == where
    # and validating against it is refused too, before any code is generated from it
    with pytest.raises(SchemaError, match="unsupported schema keywords"):
        validate("x", schema)


@pytest.mark.parametrize(
    "pattern",
    [
        "[a-z]+",  # unanchored: matches any string holding a letter
        "^[a-z]+",
        "[a-z]+$",
        "^a|b$",  # anchored on each side of the alternation only
        "^(?:a)|b$",
        r"^a\$",  # an escaped $ is a dollar sign, not an anchor
        r"^a\\$",  # fastjsonschema misses this anchor
        "^a$b$",
        "^[$]$",
    ],
)
def test_guard_refuses_an_unanchored_pattern(pattern: str) -> None:
    with pytest.raises(SchemaError) as err:
        check_schema({"type": "object", "properties": {"p": {"pattern": pattern}}})
    assert err.value.path == "p"
    assert "anchor" in err.value.problem or "$" in err.value.problem


@pytest.mark.parametrize(
    "pattern", [r"^\d+$", r"^\w+$", r"^a\b$", r"^\s$", "^(?i:a)$", "^(?P<x>a)$", "^(?#x)a$"]
)
def test_guard_refuses_python_only_regex(pattern: str) -> None:
    with pytest.raises(SchemaError):
        check_schema({"pattern": pattern})


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "strin"},
        {"type": []},
        {"required": "name"},
        {"minLength": -1},
        {"maxItems": True},
        {"maximum": "5"},
        {"enum": "ab"},
        {"items": [{"type": "string"}]},
        {"additionalProperties": "no"},
        {"properties": []},
        {"pattern": "^(unclosed$"},
        {"pattern": 5},
    ],
)
def test_guard_refuses_malformed_keyword_values(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        check_schema(schema)


@pytest.mark.parametrize(
    "pattern", ["^a$", "^(?:a|b)$", "^[]a]+$", r"^\$[0-9]+$", "^[a-z](?:-[a-z])*$", "^$"]
)
def test_guard_accepts_anchored_patterns(pattern: str) -> None:
    check_schema({"type": "string", "pattern": pattern})


# -- patterns mean what they mean to a standard reader ----------------------------------

SAMPLES = [
    "",
    "a",
    "web",
    "web-1",
    "web--1",
    "-web",
    "web-",
    "Web",
    "a_b",
    "a.b",
    "/",
    "/var/log",
    "var/log",
    " /var",
    "x" * 101,
    "0" * 40,
    "0" * 41,
    "0" * 64,
    "f" * 39 + "g",
    "r1-abc1234",
    ".hidden",
    "ssh.service",
    "user@1.service",
    "é",
    "a b",
    "a\tb",
    "a\nb",
    "\nweb",
    "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQ",
    "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w",
]


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_each_pattern_in_the_tree_means_the_same_as_for_a_standard_reader(pattern: str) -> None:
    schema = {"type": "string", "pattern": pattern}
    for value in [*SAMPLES, *(s + "!" for s in SAMPLES), *("!" + s for s in SAMPLES)]:
        assert ours(value, schema) == standard(value, schema), (pattern, value)
    # What the old validator meant by the same pattern, unanchored: a full match.
    core = pattern.removeprefix("^").removesuffix("$")
    for value in SAMPLES:
        assert ours(value, schema) == bool(re.fullmatch(core, value)), (pattern, value)


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_a_final_newline_does_not_slip_past_the_end_anchor(pattern: str) -> None:
    # ECMA-262's $ ends the string; Python's $ also matches before a final "\n" (which
    # the jsonschema package inherits from re.search). fastjsonschema reads $ as \Z.
    schema = {"type": "string", "pattern": pattern}
    for value in SAMPLES:
        if ours(value, schema):
            assert not ours(value + "\n", schema), (pattern, value)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*ALL_PATTERNS, "^(?:ab|cd)$", "^a[0-9]{2,3}$", "^/.*$"]),
    st.text(alphabet="abcdz019AZ_.-:/@ \n", max_size=12),
)
def test_patterns_agree_with_a_standard_reader_on_random_strings(pattern: str, text: str) -> None:
    if text.endswith("\n"):
        text += "x"  # the one place the jsonschema package is not ECMA-262 (see above)
    schema = {"type": "string", "pattern": pattern}
    assert ours(text, schema) == standard(text, schema)


# -- whole schemas ----------------------------------------------------------------------

APP = {
    "name": "web",
    "repo": "https://git.example/web.git",
    "commit": "a" * 40,
    "release": "r1-aaaaaaa",
    "build": [["npm", "ci"]],
    "start": ["node", "server.js"],
    "port": 3000,
    "env": {"A": "1"},
    "health": {"path": "/", "timeout_s": 30},
    "domains": ["web.example"],
    "tls": True,
    "keep_releases": 3,
}
DOCUMENT = {"version": 1, "hash": "0" * 64, "deployment": "d-1", "apps": [APP]}
REPLACEMENTS = st.sampled_from(
    [None, True, False, 0, -1, 1, 65536, 2.5, "", "x", "web", "a" * 64, "A" * 40, [], [""], {}]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(APP)),
    REPLACEMENTS,
    st.sampled_from(["set", "drop", "extra"]),
)
def test_state_apply_agrees_with_a_standard_reader(field: str, new: Any, how: str) -> None:
    document = copy.deepcopy(DOCUMENT)
    app = document["apps"][0]
    if how == "set":
        app[field] = new
    elif how == "drop":
        del app[field]
    else:
        document[field] = new
    before = copy.deepcopy(document)
    assert ours(document, desired.STATE_APPLY) == standard(document, desired.STATE_APPLY)
    assert document == before  # validating never changes the value


def test_frames_agree_with_a_standard_reader() -> None:
    frame = protocol.new_command(protocol.new_signing_key(), "srv-1", "system.info", {})
    body = dict(frame.body)
    schema = protocol.BODY_SCHEMAS["command"]
    variants: list[dict[str, Any]] = [body]
    for key in body:
        for new in ["", "x y", "a" * 65, "ok-1", -1, 2**53, True, None, {}]:
            variants.append({**body, key: new})
        variants.append({k: v for k, v in body.items() if k != key})
    variants.append({**body, "extra": 1})
    for variant in variants:
        assert ours(variant, schema) == standard(variant, schema), variant


# -- behaviour kept from the validator this replaces ------------------------------------

NESTED = {
    "type": "object",
    "properties": {
        "a": {
            "type": "object",
            "properties": {
                "b": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"c": {"type": "integer", "minimum": 0, "maximum": 5}},
                        "required": ["c"],
                        "additionalProperties": False,
                    },
                }
            },
        },
        "n": {"type": ["number", "null"]},
        "s": {"type": "string", "minLength": 2, "maxLength": 3, "pattern": "^[a-z]+$"},
        "e": {"enum": ["x", 1]},
        "k": {"const": "z"},
        "l": {"type": "array", "minItems": 1, "maxItems": 2},
        "m": {"type": "object", "additionalProperties": {"type": "string"}},
        "d": {"type": "integer", "default": 7},
    },
    "required": ["n"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"n": 1, "a": {"b": [{"c": 1}, {"c": 9}]}}, "a.b[1].c: greater than 5"),
        ({"n": 1, "a": {"b": [{"c": -1}]}}, "a.b[0].c: less than 0"),
        ({"n": 1, "a": {"b": [{"c": True}]}}, "a.b[0].c: expected integer"),
        ({"n": 1, "a": {"b": [{"c": 1.0}]}}, "a.b[0].c: expected integer"),
        ({"n": 1, "a": {"b": [{}]}}, "a.b[0].c: is required"),
        ({"n": 1, "a": {"b": [{"c": 1, "zz": 2, "yy": 3}]}}, "a.b[0].zz: is not allowed"),
        ({}, "n: is required"),
        ({"n": True}, "n: expected number or null"),
        ({"n": 1, "s": "a"}, "s: shorter than 2"),
        ({"n": 1, "s": "abcd"}, "s: longer than 3"),
        ({"n": 1, "s": "AB"}, "s: does not match the required pattern"),
        ({"n": 1, "s": "ab\n"}, "s: does not match the required pattern"),
        ({"n": 1, "e": "y"}, "e: must be one of ['x', 1]"),
        ({"n": 1, "k": "y"}, "k: must be 'z'"),
        ({"n": 1, "l": []}, "l: fewer than 1 items"),
        ({"n": 1, "l": [1, 2, 3]}, "l: more than 2 items"),
        ({"n": 1, "m": {"x": "1", "y": 2}}, "m.y: expected string"),
        ({"n": 1, "extra": 1, "other": 2}, "extra: is not allowed"),
        ([], "(root): expected object"),
    ],
)
def test_errors_keep_their_path_and_wording(value: Any, message: str) -> None:
    with pytest.raises(SchemaError) as err:
        validate(value, NESTED)
    assert str(err.value) == message
    assert f"{err.value.path}: {err.value.problem}" == message


def test_a_path_prefix_is_kept() -> None:
    with pytest.raises(SchemaError) as err:
        validate({"n": "1"}, NESTED, "params")
    assert err.value.path == "params.n"
    with pytest.raises(SchemaError) as err:
        validate({}, NESTED, "params")
    assert err.value.path == "params.n"


def test_defaults_are_not_filled_in() -> None:
    value = {"n": None}
    validate(value, NESTED)
    assert value == {"n": None}


def test_each_schema_is_compiled_once() -> None:
    schema = protocol.BODY_SCHEMAS["command"]
    assert compiled(schema) is compiled(schema)
    # an equal schema built anew (as the control plane parses agents' schemas) shares it
    assert compiled(copy.deepcopy(schema)) is compiled(schema)


def test_a_bool_is_not_a_number_and_floats_are_not_integers() -> None:
    for t in ("integer", "number"):
        assert not ours(True, {"type": t})
    assert not ours(1.0, {"type": "integer"})
    assert ours(1.0, {"type": "number"})
    assert ours(2**60, {"type": "integer"})


def test_control_plane_leaves_an_unsupported_agent_schema_to_the_agent() -> None:
    """An older agent's schema (unanchored pattern) is not a reason to refuse its action;
    a value that breaks a supported schema still is (ACT003)."""
    from types import SimpleNamespace

    from serverflow.agents.registry import check_action
    from serverflow.errors import InvalidInput

    old = {"type": "object", "properties": {"name": {"type": "string", "pattern": "[a-z]+"}}}
    new = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}}
    server: Any = SimpleNamespace(
        name="web-1",
        security_mode="full",
        inventory=[
            {"name": "old.act", "kind": "read", "params_schema": old},
            {"name": "new.act", "kind": "read", "params_schema": new},
        ],
    )
    assert check_action(server, "old.act", {"name": "abc"})["name"] == "old.act"
    assert check_action(server, "new.act", {"name": "abc"})["name"] == "new.act"
    with pytest.raises(InvalidInput) as refused:
        check_action(server, "new.act", {"name": "ABC"})
    assert refused.value.code == "ACT003"


CODE_LIKE = [
    '\\"+__import__("pathlib").Path(MARK).touch()+"',
    '"+__import__("pathlib").Path(MARK).touch()+"',
    "'+__import__('pathlib').Path(MARK).touch()+'",
    '\\\n__import__("pathlib").Path(MARK).touch()#',
    '{__import__("pathlib").Path(MARK).touch()}',
    '"]+__import__("pathlib").Path(MARK).touch()+["',
]


@pytest.mark.parametrize("text", CODE_LIKE)
def test_schema_strings_never_become_code(text: str, tmp_path: Path) -> None:
    """The control plane compiles the schemas agents report (fastjsonschema generates
    Python): a string in any slot of a schema stays data."""
    mark = tmp_path / "ran"
    text = text.replace("MARK", repr(str(mark)))
    schemas = [
        {"type": "object", "properties": {text: {"type": "string"}}},
        {"type": "object", "required": [text]},
        {"type": "object", "properties": {"x": {"enum": [text]}}},
        {"type": "object", "properties": {"x": {"const": text}}},
        {"type": "object", "properties": {"x": {"type": "string", "pattern": f"^{text}$"}}},
        {"type": "object", "properties": {"x": {"description": text, "title": text}}},
        {
            "type": "object",
            "properties": {"x": {"type": "object", "properties": {text: {"type": "integer"}}}},
            "additionalProperties": False,
        },
    ]
    for schema in schemas:
        with contextlib.suppress(SchemaError):
            validate({text: "v", "x": {text: 1}}, schema)
    assert not mark.exists()

"""The JSON-schema validator behind `response_format: json_schema`, checked against `jsonschema_rs` as an oracle."""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import pytest

from miniagent import Agent
from miniagent.errors import UnexpectedModelBehavior
from miniagent.server._openai_schema import SchemaError, check_schema, json_schema_type, schema_errors
from miniagent.testing import ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio

PERSON: dict[str, Any] = {
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[A-Z]"},
        "age": {"type": "integer", "minimum": 0, "exclusiveMaximum": 150},
        "score": {"type": "number", "multipleOf": 0.5},
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "maxItems": 3},
        "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2},
        "role": {"enum": ["admin", "user", 1, None]},
        "kind": {"const": "person"},
        "email": {"type": ["string", "null"], "format": "email"},
        "address": {"$ref": "#/$defs/Address"},
        "contact": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/Address"}]},
        "either": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]},
        "both": {"allOf": [{"type": "string"}, {"minLength": 2}]},
        "nothing": {"not": {"type": "string"}},
        "extra": {"type": "object", "additionalProperties": {"type": "integer"}, "maxProperties": 2},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
    "$defs": {
        "Address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "next": {"$ref": "#/$defs/Address"}},
            "required": ["city"],
            "additionalProperties": False,
        }
    },
}

INSTANCES: list[Any] = [
    {"name": "Ada", "age": 36},
    {"name": "Ada", "age": 36.0},
    {"name": "Ada", "age": 36.5},
    {"name": "ada", "age": 36},
    {"name": "", "age": 1},
    {"name": "Ada", "age": 150},
    {"name": "Ada", "age": -1},
    {"name": "Ada", "age": True},
    {"name": "Ada"},
    {"name": "Ada", "age": 1, "unknown": 1},
    {"name": "Ada", "age": 1, "score": 1.5},
    {"name": "Ada", "age": 1, "score": 1.25},
    {"name": "Ada", "age": 1, "tags": ["a", "b"]},
    {"name": "Ada", "age": 1, "tags": ["a", "a"]},
    {"name": "Ada", "age": 1, "tags": ["a", "b", "c", "d"]},
    {"name": "Ada", "age": 1, "tags": [1]},
    {"name": "Ada", "age": 1, "pair": ["a", 1]},
    {"name": "Ada", "age": 1, "pair": ["a", "b"]},
    {"name": "Ada", "age": 1, "pair": ["a", 1, {"any": "thing"}]},
    {"name": "Ada", "age": 1, "pair": ["a"]},
    {"name": "Ada", "age": 1, "role": "admin"},
    {"name": "Ada", "age": 1, "role": 1.0},
    {"name": "Ada", "age": 1, "role": True},
    {"name": "Ada", "age": 1, "role": None},
    {"name": "Ada", "age": 1, "role": "root"},
    {"name": "Ada", "age": 1, "kind": "person"},
    {"name": "Ada", "age": 1, "kind": "robot"},
    {"name": "Ada", "age": 1, "email": None},
    {"name": "Ada", "age": 1, "email": 3},
    {"name": "Ada", "age": 1, "address": {"city": "Paris", "next": {"city": "Lyon"}}},
    {"name": "Ada", "age": 1, "address": {"city": "Paris", "next": {"town": "Lyon"}}},
    {"name": "Ada", "age": 1, "contact": "ada@example.com"},
    {"name": "Ada", "age": 1, "contact": {"city": "Paris"}},
    {"name": "Ada", "age": 1, "contact": 7},
    {"name": "Ada", "age": 1, "either": 5},
    {"name": "Ada", "age": 1, "either": 12},
    {"name": "Ada", "age": 1, "either": 5.5},
    {"name": "Ada", "age": 1, "either": 12.5},
    {"name": "Ada", "age": 1, "both": "ab"},
    {"name": "Ada", "age": 1, "both": "a"},
    {"name": "Ada", "age": 1, "nothing": 1},
    {"name": "Ada", "age": 1, "nothing": "x"},
    {"name": "Ada", "age": 1, "extra": {"a": 1, "b": 2}},
    {"name": "Ada", "age": 1, "extra": {"a": 1, "b": 2, "c": 3}},
    {"name": "Ada", "age": 1, "extra": {"a": "x"}},
    [],
    "Ada",
    None,
]


@pytest.mark.parametrize("instance", INSTANCES, ids=[str(i) for i in range(len(INSTANCES))])
def test_agrees_with_jsonschema_rs(instance: Any) -> None:
    check_schema(PERSON)
    expected = jsonschema_rs.validator_for(PERSON).is_valid(instance)
    errors = schema_errors(instance, PERSON)
    assert (not errors) == expected, errors


def test_errors_say_where_and_what() -> None:
    errors = schema_errors({"name": "ada", "age": "x", "nope": 1, "address": {"city": 3}}, PERSON)
    assert errors == [
        "$.name: must match the pattern '^[A-Z]'",
        "$.age: expected integer, got string",
        "$.nope: is not an allowed property (allowed: address, age, both, contact, either, email, extra, kind, "
        "name, nothing, pair, role, score, tags)",
        "$.address.city: expected string, got integer",
    ]
    assert schema_errors([1] * 5, {"type": "array", "items": {"type": "string"}}) == [
        f"$[{i}]: expected string, got integer" for i in range(5)
    ]
    assert schema_errors({"a b": 1}, {"properties": {"a b": {"type": "string"}}}) == [
        "$['a b']: expected string, got integer"
    ]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ([], "must be a JSON object"),
        ({"type": "object", "if": {}}, "#: unsupported keyword(s) 'if'"),
        (
            {"properties": {"a": {"patternProperties": {}}}},
            "#/properties/a: unsupported keyword(s) 'patternProperties'",
        ),
        ({"type": "date"}, "#/type: must be one of"),
        ({"required": "a"}, "#/required: must be an array"),
        ({"enum": []}, "#/enum: must be a non-empty array"),
        ({"minimum": "1"}, "#/minimum: must be a number"),
        ({"multipleOf": 0}, "#/multipleOf: must be greater than 0"),
        ({"maxLength": -1}, "#/maxLength: must be a non-negative integer"),
        ({"uniqueItems": 1}, "#/uniqueItems: must be a boolean"),
        ({"pattern": "("}, "#/pattern: not a valid regular expression"),
        ({"pattern": 1}, "#/pattern: must be a string"),
        ({"$ref": "#/$defs/Missing"}, "does not resolve"),
        ({"$ref": "https://example.com/s.json"}, "only local references"),
        ({"$ref": 3}, "#/$ref: must be a string"),
        ({"anyOf": []}, "#/anyOf: must be a non-empty array"),
        ({"properties": []}, "#/properties: must be an object"),
        ({"items": 3}, "#/items: a subschema must be an object or a boolean"),
    ],
)
def test_unenforceable_schemas_are_refused_with_the_reason(schema: Any, message: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(message)):
        check_schema(schema)


def test_boolean_subschemas_and_pointer_escapes() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"free": True, "never": False, "ref": {"$ref": "#/$defs/a~1b"}},
        "$defs": {"a/b": {"type": "integer"}},
    }
    check_schema(schema)
    assert schema_errors({"free": [1], "ref": 1}, schema) == []
    assert schema_errors({"never": 1, "ref": "x"}, schema) == [
        "$.never: no value is allowed here",
        "$.ref: expected integer, got string",
    ]


async def test_the_output_type_shows_the_schema_and_sends_errors_back_to_the_model() -> None:
    model = ScriptedModel(
        [
            tool_call_response(("final_result", {"name": "Ada", "age": -3})),
            tool_call_response(("final_result", {"name": "Ada", "age": 36})),
        ]
    )
    agent: Agent[None, Any] = Agent(model, output_type=json_schema_type(PERSON))
    result = await agent.run("Who?")
    assert result.output == {"name": "Ada", "age": 36}
    assert model.calls[0].params.output_tools[0].parameters_json_schema == PERSON  # verbatim: refs, defs, titles
    assert "$.age: must be >= 0" in str(model.calls[1].messages[-1])


async def test_an_answer_that_never_fits_fails_the_run() -> None:
    model = ScriptedModel([tool_call_response(("final_result", {"name": 1, "age": 1}))] * 2)
    agent: Agent[None, Any] = Agent(model, output_type=json_schema_type(PERSON))
    with pytest.raises(UnexpectedModelBehavior, match=r"\$\.name: expected string"):
        await agent.run("Who?")


async def test_a_non_object_schema_is_wrapped_for_the_output_tool() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
    model = ScriptedModel([tool_call_response(("final_result", {"response": [1, 2]}))])
    agent: Agent[None, Any] = Agent(model, output_type=json_schema_type(schema))
    assert (await agent.run("Numbers?")).output == [1, 2]
    assert model.calls[0].params.output_tools[0].parameters_json_schema["properties"]["response"] == schema

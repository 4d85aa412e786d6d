"""`response_format: json_schema` as structured output: a JSON schema checked up front and enforced on the answer.

A client's JSON schema becomes an `output_type` the agent understands: the schema is what the model is shown (as the
`final_result` tool's parameters) and every answer is validated against it, so the content a client receives is
JSON the schema allows. The validator covers the JSON Schema keywords OpenAI's structured outputs accept (types,
objects, arrays, enums, `anyOf`/`oneOf`/`allOf`, local `$ref`s, numeric, string and array bounds); a schema using any
other keyword is refused when the request arrives, with the keyword named, instead of being half enforced.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic_core import core_schema

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import CoreSchema

__all__ = ["SchemaError", "check_schema", "json_object_type", "json_schema_type", "schema_errors"]

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "$schema",
        "$id",
        "deprecated",
        "readOnly",
        "writeOnly",
        "format",  # an annotation in JSON Schema 2020-12 unless a validator opts in; OpenAI treats it as a hint
        "contentMediaType",
        "contentEncoding",
    }
)
_SCHEMA_VALUED = frozenset({"additionalProperties", "items", "not"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions"})
_NUMBERS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"})
_COUNTS = frozenset({"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"})
_OTHER = frozenset({"type", "required", "enum", "const", "pattern", "uniqueItems", "$ref"})
_SUPPORTED = _ANNOTATIONS | _SCHEMA_VALUED | _SCHEMA_LISTS | _SCHEMA_MAPS | _NUMBERS | _COUNTS | _OTHER
_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_MAX_ERRORS = 20


class SchemaError(ValueError):
    """A JSON schema is invalid or uses a keyword this server cannot enforce; the message names where and what."""


def check_schema(schema: Any) -> None:
    """Check that `schema` is a JSON schema this validator fully enforces.

    Raises:
        SchemaError: the schema is not an object, a keyword is unsupported or malformed, or a `$ref` does not
            resolve; the message gives the JSON path of the problem.
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"the schema must be a JSON object, got {_json_type(schema)}")
    for path, node in _walk(schema, "#"):
        _check_node(node, path, schema)


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema of `node` with its JSON pointer (`True`/`False` subschemas are skipped: always valid)."""
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise SchemaError(f"{path}: a subschema must be an object or a boolean, got {_json_type(node)}")
    yield path, node
    for key, value in node.items():
        if key in _SCHEMA_VALUED:
            if key == "additionalProperties" and isinstance(value, bool):
                continue
            yield from _walk(value, f"{path}/{key}")
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or (not value and key != "prefixItems"):
                raise SchemaError(f"{path}/{key}: must be a non-empty array of schemas")
            for i, item in enumerate(value):
                yield from _walk(item, f"{path}/{key}/{i}")
        elif key in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise SchemaError(f"{path}/{key}: must be an object mapping names to schemas")
            for name, item in value.items():
                yield from _walk(item, f"{path}/{key}/{name}")


def _check_node(node: dict[str, Any], path: str, root: dict[str, Any]) -> None:
    unsupported = sorted(set(node) - _SUPPORTED)
    if unsupported:
        raise SchemaError(
            f"{path}: unsupported keyword(s) {', '.join(map(repr, unsupported))}; this server enforces "
            f"{', '.join(sorted(_SUPPORTED - _ANNOTATIONS))}"
        )
    kind = node.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(not isinstance(k, str) or k not in _TYPES for k in kinds):
            raise SchemaError(f"{path}/type: must be one of {', '.join(sorted(_TYPES))} (or a list of them)")
    required = node.get("required")
    if required is not None and (not isinstance(required, list) or not all(isinstance(r, str) for r in required)):
        raise SchemaError(f"{path}/required: must be an array of property names")
    enum = node.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        raise SchemaError(f"{path}/enum: must be a non-empty array")
    _check_bounds(node, path)
    if "pattern" in node:
        pattern = node["pattern"]
        if not isinstance(pattern, str):
            raise SchemaError(f"{path}/pattern: must be a string")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SchemaError(f"{path}/pattern: not a valid regular expression ({exc})") from exc
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str):
            raise SchemaError(f"{path}/$ref: must be a string")
        _resolve(ref, root, path)


def _check_bounds(node: dict[str, Any], path: str) -> None:
    for key in _NUMBERS & node.keys():
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(f"{path}/{key}: must be a number")
        if key == "multipleOf" and not value > 0:
            raise SchemaError(f"{path}/multipleOf: must be greater than 0")
    for key in _COUNTS & node.keys():
        value = node[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"{path}/{key}: must be a non-negative integer")
    if "uniqueItems" in node and not isinstance(node["uniqueItems"], bool):
        raise SchemaError(f"{path}/uniqueItems: must be a boolean")


def _resolve(ref: str, root: dict[str, Any], path: str) -> Any:
    """The subschema a local `$ref` (`#`, `#/$defs/Name`...) points at."""
    if ref != "#" and not ref.startswith("#/"):
        raise SchemaError(f"{path}/$ref: only local references ('#/$defs/...') are supported, got {ref!r}")
    node: Any = root
    for raw in ref[2:].split("/") if ref != "#" else []:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise SchemaError(f"{path}/$ref: {ref!r} does not resolve to a part of the schema")
    return node


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
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, kind: str) -> bool:
    actual = _json_type(value)
    if kind == "integer":
        return actual == "integer" or (actual == "number" and math.isfinite(value) and float(value).is_integer())
    if kind == "number":
        return actual in ("integer", "number")
    return actual == kind


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON means it: `1 == 1.0`, but `true != 1`, and containers compare element-wise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def schema_errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Where `instance` breaks `schema` (checked with `check_schema` first), as `$.path: what is wrong` lines.

    An empty list means the instance is valid. At most 20 errors are listed.
    """
    errors: list[str] = []
    _validate(instance, schema, schema, "$", errors)
    return errors[:_MAX_ERRORS]


def _validate(value: Any, node: Any, root: dict[str, Any], at: str, errors: list[str]) -> None:
    if node is True or node == {}:
        return
    if node is False:
        errors.append(f"{at}: no value is allowed here")
        return
    if "$ref" in node:
        _validate(value, _resolve(node["$ref"], root, "#"), root, at, errors)
    kind = node.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            errors.append(f"{at}: expected {' or '.join(kinds)}, got {_json_type(value)}")
            return
    if "enum" in node and not any(_json_equal(value, option) for option in node["enum"]):
        errors.append(f"{at}: must be one of {node['enum']!r}")
    if "const" in node and not _json_equal(value, node["const"]):
        errors.append(f"{at}: must be {node['const']!r}")
    _validate_combinators(value, node, root, at, errors)
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        _validate_number(value, node, at, errors)
    elif isinstance(value, str):
        _validate_string(value, node, at, errors)
    elif isinstance(value, list):
        _validate_array(value, node, root, at, errors)
    elif isinstance(value, dict):
        _validate_object(value, node, root, at, errors)


def _validate_combinators(value: Any, node: dict[str, Any], root: dict[str, Any], at: str, errors: list[str]) -> None:
    for sub in node.get("allOf", ()):
        _validate(value, sub, root, at, errors)
    if "anyOf" in node or "oneOf" in node:
        key = "anyOf" if "anyOf" in node else "oneOf"
        outcomes = []
        for sub in node[key]:
            found: list[str] = []
            _validate(value, sub, root, at, found)
            outcomes.append(found)
        matches = sum(1 for found in outcomes if not found)
        if matches == 0:
            closest = min(outcomes, key=len)
            errors.append(f"{at}: matches none of the {key} options ({'; '.join(closest[:3])})")
        elif key == "oneOf" and matches > 1:
            errors.append(f"{at}: matches {matches} of the oneOf options, exactly one is allowed")
    if "not" in node:
        found = []
        _validate(value, node["not"], root, at, found)
        if not found:
            errors.append(f"{at}: must not match the schema under 'not'")


def _validate_number(value: float, node: dict[str, Any], at: str, errors: list[str]) -> None:
    if "minimum" in node and value < node["minimum"]:
        errors.append(f"{at}: must be >= {node['minimum']}")
    if "maximum" in node and value > node["maximum"]:
        errors.append(f"{at}: must be <= {node['maximum']}")
    if "exclusiveMinimum" in node and value <= node["exclusiveMinimum"]:
        errors.append(f"{at}: must be > {node['exclusiveMinimum']}")
    if "exclusiveMaximum" in node and value >= node["exclusiveMaximum"]:
        errors.append(f"{at}: must be < {node['exclusiveMaximum']}")
    if "multipleOf" in node:
        quotient = value / node["multipleOf"]
        if not math.isfinite(quotient) or abs(quotient - round(quotient)) > 1e-9:
            errors.append(f"{at}: must be a multiple of {node['multipleOf']}")


def _validate_string(value: str, node: dict[str, Any], at: str, errors: list[str]) -> None:
    if "minLength" in node and len(value) < node["minLength"]:
        errors.append(f"{at}: must have at least {node['minLength']} characters")
    if "maxLength" in node and len(value) > node["maxLength"]:
        errors.append(f"{at}: must have at most {node['maxLength']} characters")
    if "pattern" in node and re.search(node["pattern"], value) is None:
        errors.append(f"{at}: must match the pattern {node['pattern']!r}")


def _validate_array(value: list[Any], node: dict[str, Any], root: dict[str, Any], at: str, errors: list[str]) -> None:
    if "minItems" in node and len(value) < node["minItems"]:
        errors.append(f"{at}: must have at least {node['minItems']} items")
    if "maxItems" in node and len(value) > node["maxItems"]:
        errors.append(f"{at}: must have at most {node['maxItems']} items")
    if node.get("uniqueItems"):
        for i in range(len(value)):
            if any(_json_equal(value[i], value[j]) for j in range(i)):
                errors.append(f"{at}[{i}]: repeats an earlier item; items must be unique")
                break
    prefix = node.get("prefixItems", [])
    for i, item in enumerate(value):
        if i < len(prefix):
            _validate(item, prefix[i], root, f"{at}[{i}]", errors)
        elif "items" in node:
            _validate(item, node["items"], root, f"{at}[{i}]", errors)


def _validate_object(
    value: dict[str, Any], node: dict[str, Any], root: dict[str, Any], at: str, errors: list[str]
) -> None:
    if "minProperties" in node and len(value) < node["minProperties"]:
        errors.append(f"{at}: must have at least {node['minProperties']} properties")
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        errors.append(f"{at}: must have at most {node['maxProperties']} properties")
    for name in node.get("required", ()):
        if name not in value:
            errors.append(f"{at}: the property {name!r} is required")
    properties: dict[str, Any] = node.get("properties", {})
    extra = node.get("additionalProperties", True)
    for name, item in value.items():
        where = f"{at}.{name}" if name.isidentifier() else f"{at}[{name!r}]"
        if name in properties:
            _validate(item, properties[name], root, where, errors)
        elif extra is False:
            errors.append(f"{where}: is not an allowed property (allowed: {', '.join(sorted(properties)) or 'none'})")
        elif isinstance(extra, dict):
            _validate(item, extra, root, where, errors)


def json_schema_type(schema: dict[str, Any]) -> type[Any]:
    """An `output_type` for an agent whose answer must be JSON that `schema` allows.

    The model is shown `schema` verbatim (as the output tool's parameters), and an answer that breaks it is sent back
    to the model with the errors, like any invalid structured output. The validated output is the JSON value itself
    (a dict, a list...), not an instance of the returned class.

    Raises:
        SchemaError: `schema` is invalid or uses a keyword this validator does not enforce.
    """
    check_schema(schema)
    own = copy.deepcopy(schema)

    def validate(value: Any) -> Any:
        errors = schema_errors(value, own)
        if errors:
            raise ValueError("the answer does not match the JSON schema: " + "; ".join(errors))
        return value

    class JsonSchemaOutput:
        """JSON that the request's schema allows."""

        __output_json_schema__ = copy.deepcopy(schema)  # read by the agent's `OutputSchema`: shown to the model as is

        @classmethod
        def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
            return core_schema.no_info_after_validator_function(validate, core_schema.any_schema())

    return JsonSchemaOutput


def json_object_type() -> Any:
    """An `output_type` for `response_format: json_object`: any JSON object."""
    return dict[str, Any]

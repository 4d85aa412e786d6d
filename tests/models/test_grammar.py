"""The JSON schema -> GBNF converter: the rules it writes, and what they accept (checked by a small GBNF matcher).

Every grammar built here is also handed to llama.cpp's own grammar parser when `llama_cpp` and the bundled model's
vocabulary are available.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from miniagent.models._grammar import GrammarLimits, gbnf_literal, reply_grammar, reply_text, schema_grammar

# ---- a small GBNF matcher, enough for the grammars miniagent writes --------------------------------------------


@dataclass(frozen=True)
class _Lit:
    text: str


@dataclass(frozen=True)
class _Class:
    negated: bool
    ranges: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Ref:
    name: str


@dataclass(frozen=True)
class _Alt:
    options: tuple[_Seq, ...]


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    node: _Node
    low: int
    high: int | None


_Node = _Lit | _Class | _Ref | _Alt | _Seq | _Rep

_ESC = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def ws(self, newlines: bool) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in (" \t\n" if newlines else " \t"):
            self.pos += 1

    def char(self) -> str:
        ch = self.text[self.pos]
        if ch != "\\":
            self.pos += 1
            return ch
        code = self.text[self.pos + 1]
        if code == "x":
            self.pos += 4
            return chr(int(self.text[self.pos - 2 : self.pos], 16))
        self.pos += 2
        return _ESC[code]

    def alternatives(self, nested: bool) -> _Alt:
        options = [self.sequence(nested)]
        while self.pos < len(self.text) and self.text[self.pos] == "|":
            self.pos += 1
            self.ws(True)
            options.append(self.sequence(nested))
        return _Alt(tuple(options))

    def sequence(self, nested: bool) -> _Seq:
        items: list[_Node] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            node: _Node
            if ch == '"':
                self.pos += 1
                chars = []
                while self.text[self.pos] != '"':
                    chars.append(self.char())
                self.pos += 1
                node = _Lit("".join(chars))
            elif ch == "[":
                self.pos += 1
                negated = self.text[self.pos] == "^"
                self.pos += negated
                ranges = []
                while self.text[self.pos] != "]":
                    first = self.char()
                    last = first
                    if self.text[self.pos] == "-" and self.text[self.pos + 1] != "]":
                        self.pos += 1
                        last = self.char()
                    ranges.append((first, last))
                self.pos += 1
                node = _Class(negated, tuple(ranges))
            elif ch == "(":
                self.pos += 1
                self.ws(True)
                node = self.alternatives(True)
                assert self.text[self.pos] == ")"
                self.pos += 1
            elif re.match(r"[a-zA-Z0-9-]", ch):
                match = re.compile(r"[a-zA-Z0-9-]+").match(self.text, self.pos)
                assert match is not None
                self.pos = match.end()
                node = _Ref(match.group())
            else:
                break
            self.ws(nested)
            while self.pos < len(self.text) and self.text[self.pos] in "?*+{":
                mark = self.text[self.pos]
                if mark == "{":
                    end = self.text.index("}", self.pos)
                    low_s, _, high_s = self.text[self.pos + 1 : end].partition(",")
                    has_comma = "," in self.text[self.pos + 1 : end]
                    low = int(low_s)
                    high = (int(high_s) if high_s else None) if has_comma else low
                    self.pos = end + 1
                else:
                    self.pos += 1
                    low, high = {"?": (0, 1), "*": (0, None), "+": (1, None)}[mark]
                node = _Rep(node, low, high)
                self.ws(nested)
            items.append(node)
        return _Seq(tuple(items))


def parse_gbnf(text: str) -> dict[str, _Alt]:
    rules: dict[str, _Alt] = {}
    for line in text.strip().splitlines():
        name, _, body = line.partition(" ::= ")
        parser = _Parser(body)
        rules[name] = parser.alternatives(False)
        assert parser.pos == len(body), f"unparsed GBNF in {name!r}: {body[parser.pos :]!r}"
    for rule in rules.values():
        for ref in _refs(rule):
            assert ref in rules, f"undefined rule {ref!r}"
    return rules


def _refs(node: _Node) -> Iterator[str]:
    if isinstance(node, _Ref):
        yield node.name
    elif isinstance(node, _Alt | _Seq):
        for child in node.options if isinstance(node, _Alt) else node.items:
            yield from _refs(child)
    elif isinstance(node, _Rep):
        yield from _refs(node.node)


def matcher(grammar: str) -> Callable[[str], bool]:
    """A function telling whether the whole of a text matches the grammar's `root`."""
    rules = parse_gbnf(grammar)

    def accepts(text: str) -> bool:
        @cache
        def rule_ends(name: str, pos: int) -> frozenset[int]:
            return ends(rules[name], pos)

        def ends(node: _Node, pos: int) -> frozenset[int]:
            if isinstance(node, _Lit):
                return frozenset({pos + len(node.text)}) if text.startswith(node.text, pos) else frozenset()
            if isinstance(node, _Class):
                if pos >= len(text):
                    return frozenset()
                inside = any(low <= text[pos] <= high for low, high in node.ranges)
                return frozenset({pos + 1}) if inside != node.negated else frozenset()
            if isinstance(node, _Ref):
                return rule_ends(node.name, pos)
            if isinstance(node, _Alt):
                return frozenset().union(*(ends(option, pos) for option in node.options))
            if isinstance(node, _Seq):
                current = frozenset({pos})
                for item in node.items:
                    current = frozenset().union(*(ends(item, p) for p in current)) if current else current
                return current
            result = frozenset({pos}) if node.low == 0 else frozenset()
            current, count = frozenset({pos}), 0
            while current and (node.high is None or count < node.high):
                current = frozenset().union(*(ends(node.node, p) for p in current))
                count += 1
                if count >= node.low:
                    result |= current
                if count > len(text) + 1:
                    break
            return result

        return len(text) in rule_ends("root", 0)

    return accepts


# ---- llama.cpp's own parser, when available ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_check() -> Callable[[str], bool] | None:
    try:
        import llama_cpp  # noqa: F401 (only whether it is installed)
    except ImportError:
        return None
    from miniagent.models.local import _import_llama_cpp, bundled_model_path, grammar_is_valid

    path = bundled_model_path()
    if path is None:
        return None
    llama = _import_llama_cpp().Llama(model_path=str(path), vocab_only=True, verbose=False)
    return lambda grammar: grammar_is_valid(llama, grammar)


def check(grammar: str, llama_check: Callable[[str], bool] | None) -> Callable[[str], bool]:
    if llama_check is not None:
        from llama_cpp.llama_grammar import LlamaGrammar

        assert LlamaGrammar.from_string(grammar, verbose=False) is not None
        assert llama_check(grammar), grammar
    return matcher(grammar)


def rules_of(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.strip().splitlines())


# ---- tests --------------------------------------------------------------------------------------------------------


def test_gbnf_literal_escapes_quotes_backslashes_and_control_characters() -> None:
    assert gbnf_literal('say "hi"\\') == r'"say \"hi\"\\"'
    assert gbnf_literal("a\nb\tc\x01") == r'"a\nb\tc\x01"'
    assert gbnf_literal("café") == '"café"'


def test_string_is_bounded_and_has_no_raw_control_characters(llama_check: Callable[[str], bool] | None) -> None:
    grammar = schema_grammar({"type": "string"}, GrammarLimits(max_string_length=12))
    assert rules_of(grammar)["string-0-12"] == '"\\"" char{0,12} "\\""'
    accepts = check(grammar, llama_check)
    assert accepts('"hello"')
    assert accepts(json.dumps('line\nbreak "quoted" \\ tab\t'[:12]))
    assert accepts('"\\u00e9t\\u00e9"')
    assert accepts('"été"')
    assert not accepts('"line\nbreak"')  # a raw newline
    assert not accepts('"' + "x" * 13 + '"')  # too long
    assert not accepts('"\\ud800"')  # a lone surrogate
    assert not accepts('"\\q"')  # not a JSON escape
    assert not accepts("hello")


def test_string_length_takes_the_smaller_of_max_length_and_the_limit(llama_check: Callable[[str], bool] | None) -> None:
    short = schema_grammar({"type": "string", "maxLength": 3, "minLength": 2})
    assert "char{2,3}" in short
    accepts = check(short, llama_check)
    assert accepts('"ab"')
    assert accepts('"abc"')
    assert not accepts('"a"')
    assert not accepts('"abcd"')
    capped = schema_grammar({"type": "string", "maxLength": 10_000}, GrammarLimits(max_string_length=50))
    assert "char{0,50}" in capped


def test_string_format_and_pattern_are_ignored(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(schema_grammar({"type": "string", "format": "date-time", "pattern": "^x$"}), llama_check)
    assert accepts('"not a date"')


def test_enum_of_any_json_values(llama_check: Callable[[str], bool] | None) -> None:
    grammar = schema_grammar({"enum": ["red", 'say "hi"', 3, None, True, {"a": [1]}]})
    accepts = check(grammar, llama_check)
    for value in ["red", 'say "hi"', 3, None, True, {"a": [1]}]:
        assert accepts(json.dumps(value)), value
    assert not accepts('"blue"')
    assert not accepts("4")


def test_string_enum_and_const(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(schema_grammar({"type": "string", "enum": ["C", "F"]}), llama_check)
    assert accepts('"C"')
    assert not accepts('"K"')
    const = check(schema_grammar({"const": "fixed"}), llama_check)
    assert const('"fixed"')
    assert not const('"other"')


def test_integers_and_numbers_have_bounded_digits(llama_check: Callable[[str], bool] | None) -> None:
    integer = check(schema_grammar({"type": "integer"}), llama_check)
    for good in ["0", "7", "-12", "1234567890123456"]:
        assert integer(good), good
    for bad in ["01", "1.5", "12345678901234567", "+1", "1e3", "-"]:
        assert not integer(bad), bad
    number = check(schema_grammar({"type": "number"}), llama_check)
    for good in ["0", "-3.25", "42", "0.5"]:
        assert number(good), good
    for bad in ["1.", ".5", "1e3", "NaN", "1." + "1" * 11]:
        assert not number(bad), bad


def test_non_negative_bounds_drop_the_minus_sign(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(schema_grammar({"type": "integer", "minimum": 0}), llama_check)
    assert accepts("5")
    assert not accepts("-5")
    exclusive = check(schema_grammar({"type": "number", "exclusiveMinimum": 0}), llama_check)
    assert exclusive("0.5")
    assert not exclusive("-0.5")


def test_boolean_and_null(llama_check: Callable[[str], bool] | None) -> None:
    boolean = check(schema_grammar({"type": "boolean"}), llama_check)
    assert boolean("true")
    assert boolean("false")
    assert not boolean("True")
    null = check(schema_grammar({"type": "null"}), llama_check)
    assert null("null")
    assert not null("None")


def test_arrays_are_bounded_by_max_items_and_the_limit(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(
        schema_grammar({"type": "array", "items": {"type": "integer"}}, GrammarLimits(max_array_items=3)), llama_check
    )
    assert accepts("[]")
    assert accepts("[1]")
    assert accepts("[1, 2,3]")
    assert not accepts("[1, 2, 3, 4]")
    assert not accepts("[1,  2]")  # two spaces
    assert not accepts("[1,\n2]")
    assert not accepts('["a"]')
    bounded = check(
        schema_grammar({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2}), llama_check
    )
    assert bounded("[true, false]")
    assert not bounded("[true]")
    assert not bounded("[true, true, true]")


def test_tuples_from_prefix_items(llama_check: Callable[[str], bool] | None) -> None:
    schema = {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2}
    accepts = check(schema_grammar(schema), llama_check)
    assert accepts('[1, "a"]')
    assert not accepts('["a", 1]')
    assert not accepts("[1]")


def test_objects_write_every_property_in_declared_order(llama_check: Callable[[str], bool] | None) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    }
    grammar = schema_grammar(schema)
    accepts = check(grammar, llama_check)
    assert accepts('{"city": "Paris", "days": 3, "unit": "C"}')
    assert accepts('{"city":"Paris","days":3,"unit":"C"}')
    assert not accepts('{"days": 3, "city": "Paris", "unit": "C"}')  # order
    assert not accepts('{"city": "Paris"}')  # every property is written
    assert not accepts('{ "city": "Paris", "days": 3, "unit": "C" }')
    assert not accepts('{"city": "Paris",\n"days": 3, "unit": "C"}')


def test_nested_objects_and_empty_objects(llama_check: Callable[[str], bool] | None) -> None:
    schema = {
        "type": "object",
        "properties": {
            "address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string"}}},
            "meta": {"type": "object", "properties": {}, "additionalProperties": False},
        },
    }
    accepts = check(schema_grammar(schema), llama_check)
    assert accepts('{"address": {"street": "Main St", "zip": "123"}, "meta": {}}')
    assert not accepts('{"address": {"street": "Main St"}, "meta": {}}')
    assert not accepts('{"address": {"street": "Main St", "zip": "123"}, "meta": {"x": 1}}')


def test_optional_through_any_of_and_type_lists(llama_check: Callable[[str], bool] | None) -> None:
    optional = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    accepts = check(schema_grammar(optional), llama_check)
    assert accepts('"x"')
    assert accepts("null")
    assert not accepts("1")
    listed = check(schema_grammar({"type": ["integer", "null"]}), llama_check)
    assert listed("3")
    assert listed("null")
    assert not listed('"3"')
    one_of = check(
        schema_grammar({"oneOf": [{"type": "boolean"}, {"type": "array", "items": {"type": "null"}}]}), llama_check
    )
    assert one_of("true")
    assert one_of("[null, null]")
    nullable = check(schema_grammar({"type": "integer", "nullable": True}), llama_check)
    assert nullable("null")
    assert nullable("1")


def test_refs_and_defs_including_recursion(llama_check: Callable[[str], bool] | None) -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
            }
        },
        "type": "object",
        "properties": {"root": {"$ref": "#/$defs/Node"}, "again": {"$ref": "#/$defs/Node"}},
    }
    grammar = schema_grammar(schema)
    rules = rules_of(grammar)
    assert rules["def-node"] == "def-node-value"  # one rule per definition, however often it is used
    assert "def-node-2" not in rules
    accepts = check(grammar, llama_check)
    leaf = '{"name": "b", "children": []}'
    assert accepts(f'{{"root": {{"name": "a", "children": [{leaf}]}}, "again": {leaf}}}')
    assert not accepts(f'{{"root": {{"name": "a"}}, "again": {leaf}}}')


def test_all_of_is_merged(llama_check: Callable[[str], bool] | None) -> None:
    schema = {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}},
            {"properties": {"b": {"type": "boolean"}}},
        ]
    }
    accepts = check(schema_grammar(schema), llama_check)
    assert accepts('{"a": 1, "b": true}')


def test_additional_properties_objects_are_bounded_maps(llama_check: Callable[[str], bool] | None) -> None:
    schema = {"type": "object", "additionalProperties": {"type": "integer"}}
    accepts = check(schema_grammar(schema, GrammarLimits(max_array_items=2)), llama_check)
    assert accepts("{}")
    assert accepts('{"a": 1}')
    assert accepts('{"a": 1, "b": 2}')
    assert not accepts('{"a": 1, "b": 2, "c": 3}')
    assert not accepts('{"a": "x"}')


def test_schemas_without_a_type_are_bounded_json(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(schema_grammar({}, GrammarLimits(max_depth=2)), llama_check)
    for good in ['"s"', "1.5", "true", "null", '[1, "a"]', '{"k": null}', "[]", "{}"]:
        assert accepts(good), good
    assert not accepts("[[1]]")  # deeper than max_depth
    assert not accepts('{"k": []}')
    assert check(schema_grammar({}), llama_check)("[[1]]")  # the default depth allows one more level
    generic_object = check(schema_grammar({"type": "object"}), llama_check)
    assert generic_object('{"any": {"thing": [1, 2]}}')


def test_unsupported_schemas_raise_value_error() -> None:
    with pytest.raises(ValueError, match="remote|local"):
        schema_grammar({"$ref": "https://example.com/schema.json"})
    with pytest.raises(ValueError, match="no such definition"):
        schema_grammar({"$ref": "#/$defs/Missing"})
    with pytest.raises(ValueError, match="type 'date'"):
        schema_grammar({"type": "date"})
    with pytest.raises(ValueError, match="needs at least one tool"):
        reply_grammar([], allow_answer=False)


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
PERSON = {
    "$defs": {"Pet": {"type": "object", "properties": {"name": {"type": "string"}}}},
    "type": "object",
    "properties": {"name": {"type": "string"}, "pets": {"type": "array", "items": {"$ref": "#/$defs/Pet"}}},
}


def test_reply_grammar_is_one_object_per_tool_plus_the_answer(llama_check: Callable[[str], bool] | None) -> None:
    grammar = reply_grammar([("get_weather", WEATHER), ("final_result", PERSON)], allow_answer=True)
    root = rules_of(grammar)["root"]
    assert root.count(" | ") == 2
    accepts = check(grammar, llama_check)
    assert accepts('{"tool": "get_weather", "arguments": {"city": "Paris"}}')
    assert accepts('{"tool":"final_result","arguments":{"name":"Ann","pets":[{"name":"Rex"}]}}')
    assert accepts('{"answer": "It is sunny.\\nEnjoy!"}')
    assert not accepts('{"tool": "get_weather", "arguments": {"name": "Ann", "pets": []}}')  # another tool's args
    assert not accepts('{"tool": "other", "arguments": {"city": "Paris"}}')
    assert not accepts('[{"tool": "get_weather", "arguments": {"city": "Paris"}}]')  # one object, not a list
    assert not accepts(
        '{"tool": "get_weather", "arguments": {"city": "Paris"}}{"tool": "get_weather", "arguments": {"city": "Paris"}}'
    )
    assert not accepts('{"answer": "It is sunny."} ')
    assert not accepts('{"answer": "line\nbreak"}')


def test_reply_grammar_without_answer_and_answer_length(llama_check: Callable[[str], bool] | None) -> None:
    accepts = check(reply_grammar([("get_weather", WEATHER)], allow_answer=False), llama_check)
    assert accepts('{"tool": "get_weather", "arguments": {"city": "Paris"}}')
    assert not accepts('{"answer": "hi"}')
    only_answer = reply_grammar([], allow_answer=True, limits=GrammarLimits(max_answer_length=5000))
    assert "char{0,2000}" in only_answer  # llama.cpp's repetition cap
    assert check(only_answer, llama_check)('{"answer": "hi"}')


def test_same_shapes_share_rules_and_tool_names_are_sanitized(llama_check: Callable[[str], bool] | None) -> None:
    grammar = reply_grammar(
        [("get_weather", WEATHER), ("get-weather", WEATHER), ("Ünïcode tool", WEATHER)], allow_answer=False
    )
    rules = rules_of(grammar)
    assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in rules)
    assert list(rules.values()).count('"\\"" char{0,300} "\\""') == 1
    accepts = check(grammar, llama_check)
    assert accepts('{"tool": "Ünïcode tool", "arguments": {"city": "x"}}')


@pytest.mark.parametrize(
    "arguments",
    [{"city": "Paris"}, {"city": 'a "quoted"\nname \\ é'}, {"name": "Ann", "pets": [{"name": "Rex"}, {"name": "Tom"}]}],
)
def test_reply_text_is_accepted_by_the_grammar(
    arguments: dict[str, Any], llama_check: Callable[[str], bool] | None
) -> None:
    accepts = check(reply_grammar([("get_weather", WEATHER), ("final_result", PERSON)], allow_answer=True), llama_check)
    tool = "get_weather" if "city" in arguments else "final_result"
    assert accepts(reply_text(tool=tool, arguments_json=json.dumps(arguments, ensure_ascii=False)))
    assert accepts(reply_text(answer='He said "ok"\nthen left.'))


def test_pydantic_schemas_compile(llama_check: Callable[[str], bool] | None) -> None:
    from datetime import date
    from enum import Enum
    from typing import Literal

    from pydantic import BaseModel, Field

    class Color(Enum):
        RED = "red"
        BLUE = "blue"

    class Item(BaseModel):
        sku: str = Field(max_length=8)
        qty: int = Field(ge=0)

    class Order(BaseModel):
        id: int
        color: Color
        when: date
        items: list[Item] = Field(max_length=2)
        note: str | None = None
        tags: dict[str, int] = {}
        pair: tuple[int, str]
        kind: Literal["a", "b"] = "a"
        price: float

    schema = Order.model_json_schema()
    accepts = check(schema_grammar(schema), llama_check)
    order = Order(
        id=1,
        color=Color.RED,
        when=date(2024, 1, 2),
        items=[Item(sku="AB", qty=2)],
        tags={"x": 1},
        pair=(1, "z"),
        price=2.5,
    )
    assert accepts(order.model_dump_json())
    assert accepts(json.dumps(json.loads(order.model_dump_json())))

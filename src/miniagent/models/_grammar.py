r"""The local model's JSON reply format: its GBNF grammar (from JSON schemas), its text, its parser and scanner.

All sans-I/O. The local provider constrains every tool call and structured answer with a grammar built here.
llama.cpp's own converter is not used: it lets raw newlines into strings, and a grammar with an unbounded array of
calls lets a small model repeat calls until it runs out of tokens. These grammars are bounded everywhere:

- strings have no control characters (escapes such as `\n` are allowed) and at most `maxLength` characters,
  capped by `GrammarLimits.max_string_length`;
- arrays have at most `maxItems` items, capped by `GrammarLimits.max_array_items`; objects without declared
  properties have at most that many keys;
- whitespace is at most one space after `:` and `,`, never a newline;
- integers and numbers have a bounded number of digits, and no exponent;
- a value whose schema says nothing (`{}`) is any JSON value nested at most `GrammarLimits.max_depth` deep.

An object with `properties` is written with every property, in declared order: valid whether a property is
required or optional, and simplest for a small model.

The reply of one response is one JSON object, see [`reply_grammar`][miniagent.models._grammar.reply_grammar]:
`{"tool": "<name>", "arguments": {...}}` for each offered tool, and `{"answer": "<text>"}` when plain text is
allowed. [`parse_reply`][miniagent.models._grammar.parse_reply] checks a finished reply, and
[`ReplyScanner`][miniagent.models._grammar.ReplyScanner] follows one while it streams.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from ._base import StreamChunk, TextChunk, ToolCallChunk, new_tool_call_id

__all__ = [
    "GrammarLimits",
    "InvalidReply",
    "Reply",
    "ReplyScanner",
    "gbnf_literal",
    "parse_reply",
    "reply_grammar",
    "reply_text",
    "schema_grammar",
]

# llama.cpp refuses repetitions above this bound (larger upper bounds silently become unbounded).
_MAX_REPETITION = 2000
_MAX_INT_DIGITS = 16
_MAX_FRACTION_DIGITS = 10
_MAX_KEY_LENGTH = 64

_PRIMITIVE_RULES = {
    "ws": '" "?',
    "char": r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" hex-no-surrogate)',
    # `\uD800`-`\uDFFF` are left out: a lone surrogate is valid JSON but not a valid Python `str` to encode.
    "hex-no-surrogate": "[0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}",
    "boolean": '"true" | "false"',
    "null": '"null"',
    "integer": f'"-"? ("0" | [1-9] [0-9]{{0,{_MAX_INT_DIGITS - 1}}})',
    "integer-nonneg": f'"0" | [1-9] [0-9]{{0,{_MAX_INT_DIGITS - 1}}}',
    "number": f'integer ("." [0-9]{{1,{_MAX_FRACTION_DIGITS}}})?',
    "number-nonneg": f'integer-nonneg ("." [0-9]{{1,{_MAX_FRACTION_DIGITS}}})?',
}
_PRIMITIVE_DEPENDENCIES = {
    "char": ("hex-no-surrogate",),
    "number": ("integer",),
    "number-nonneg": ("integer-nonneg",),
}


@dataclass(frozen=True, slots=True)
class GrammarLimits:
    """Bounds every grammar enforces, so a constrained reply always ends."""

    max_string_length: int = 300
    """Most characters of a string inside tool arguments or structured output (a smaller `maxLength` wins)."""
    max_array_items: int = 8
    """Most items of an array, and most keys of an object without declared properties."""
    max_answer_length: int = 2000
    """Most characters of a plain-text `answer` (llama.cpp caps repetitions at 2000)."""
    max_depth: int = 3
    """How deep a value with an empty schema (`{}`, any JSON) may nest."""


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal, quoted and escaped."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _json_literal(value: Any) -> str:
    return gbnf_literal(json.dumps(value, ensure_ascii=False))


def _rule_name(text: str) -> str:
    # GBNF rule names are letters, digits and dashes.
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower() or "x"


class _Builder:
    """Collects named rules; identical bodies share one rule, so repeated shapes cost nothing extra."""

    def __init__(self, limits: GrammarLimits) -> None:
        self.limits = limits
        self.rules: dict[str, str] = {}
        self._by_body: dict[str, str] = {}
        self._defs: dict[str, Any] = {}
        self._refs: dict[str, str] = {}

    def use_defs(self, schema: dict[str, Any]) -> None:
        """Resolve `$ref`s against the definitions of `schema` (each tool's schema has its own)."""
        self._defs = dict(schema.get("$defs") or schema.get("definitions") or {})
        self._refs = {}

    # -- rule bookkeeping ---------------------------------------------------------------------------------

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = _PRIMITIVE_RULES[name]
            for dep in _PRIMITIVE_DEPENDENCIES.get(name, ()):
                self.primitive(dep)
        return name

    def add(self, hint: str, body: str) -> str:
        """The name of a rule with `body`, adding one named after `hint` if no rule has that body yet."""
        existing = self._by_body.get(body)
        if existing is not None:
            return existing
        name = self._fresh(hint)
        self.rules[name] = body
        self._by_body[body] = name
        return name

    def _fresh(self, hint: str) -> str:
        base = _rule_name(hint)
        name, n = base, 1
        while name in self.rules or name in _PRIMITIVE_RULES or name == "root":
            n += 1
            name = f"{base}-{n}"
        return name

    def render(self, root_body: str) -> str:
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- schemas ------------------------------------------------------------------------------------------

    def string(self, min_length: int = 0, max_length: int | None = None, *, cap: int | None = None) -> str:
        """A string rule of `min_length` to `max_length` characters, never more than `cap` (the string limit)."""
        cap = self.limits.max_string_length if cap is None else cap
        upper = max(min(max_length if max_length is not None else cap, cap, _MAX_REPETITION), 0)
        lower = min(max(min_length, 0), upper)
        self.primitive("char")
        return self.add(f"string-{lower}-{upper}", f'"\\"" char{{{lower},{upper}}} "\\""')

    def value(self, schema: Any, hint: str) -> str:
        """The name of a rule matching JSON values valid for `schema`."""
        if schema is True or schema is None:
            schema = {}
        if schema is False or not isinstance(schema, dict):
            raise ValueError(f"cannot build a grammar for the schema {schema!r} at {hint!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return self.add(f"{hint}-const", _json_literal(schema["const"]))
        if "enum" in schema:
            return self.add(f"{hint}-enum", " | ".join(_json_literal(v) for v in schema["enum"]) or '"null"')
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.value(sub, f"{hint}-{i}") for i, sub in enumerate(schema[key])]
                return self.add(hint, " | ".join(dict.fromkeys(options)))
        if "allOf" in schema:
            return self.value(_merge_all_of(schema), hint)
        kind = schema.get("type")
        if isinstance(kind, list):
            options = [self.value({**schema, "type": t}, f"{hint}-{t}") for t in kind]
            return self.add(hint, " | ".join(dict.fromkeys(options)))
        if schema.get("nullable") is True:
            rest = {k: v for k, v in schema.items() if k != "nullable"}
            return self.add(hint, f"{self.value(rest, hint + '-value')} | {self.primitive('null')}")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return self.any_value(self.limits.max_depth)
        return self.typed(kind, schema, hint)

    def typed(self, kind: str, schema: dict[str, Any], hint: str) -> str:
        if kind == "string":
            return self.string(int(schema.get("minLength", 0)), schema.get("maxLength"))
        if kind == "integer":
            return self.primitive("integer-nonneg" if _non_negative(schema) else "integer")
        if kind == "number":
            return self.primitive("number-nonneg" if _non_negative(schema) else "number")
        if kind == "boolean":
            return self.primitive("boolean")
        if kind == "null":
            return self.primitive("null")
        if kind == "array":
            return self.array(schema, hint)
        if kind == "object":
            return self.object(schema, hint)
        raise ValueError(f"cannot build a grammar for the JSON schema type {kind!r} at {hint!r}")

    def ref(self, ref: str) -> str:
        if not ref.startswith("#/$defs/") and not ref.startswith("#/definitions/"):
            raise ValueError(f"only local `$defs` references are supported, got {ref!r}")
        key = ref.rsplit("/", 1)[-1]
        if key in self._refs:
            return self._refs[key]
        if key not in self._defs:
            raise ValueError(f"the schema references {ref!r} but has no such definition")
        name = self._fresh(f"def-{key}")
        self._refs[key] = name
        self.rules[name] = ""  # reserved now, so a recursive schema refers to it by name
        self.rules[name] = self.value(self._defs[key], f"def-{key}-value")
        return name

    def array(self, schema: dict[str, Any], hint: str) -> str:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:
            self.primitive("ws")
            items = [self.value(sub, f"{hint}-{i}") for i, sub in enumerate(prefix)]
            return self.add(hint, '"[" ' + ' "," ws '.join(items) + ' "]"')
        item = self.value(schema.get("items", {}), f"{hint}-item")
        cap = max(self.limits.max_array_items, 0)
        upper = int(schema.get("maxItems", cap))
        lower = int(schema.get("minItems", 0))
        upper = max(min(upper, cap), lower, 0)
        return self.add(hint, self._sequence('"["', '"]"', item, lower, upper, hint))

    def _sequence(self, open_: str, close: str, item: str, lower: int, upper: int, hint: str) -> str:
        self.primitive("ws")
        if upper == 0:
            return f"{open_} {close}"
        tail = self.add(f"{hint}-next", f'"," ws {item}')
        more = f" {tail}{{{max(lower - 1, 0)},{upper - 1}}}" if upper > 1 else ""
        filled = f"{open_} {item}{more} {close}"
        return filled if lower > 0 else f"{open_} {close} | {filled}"

    def object(self, schema: dict[str, Any], hint: str) -> str:
        properties: dict[str, Any] = schema.get("properties") or {}
        if properties:
            self.primitive("ws")
            fields = []
            for i, (key, sub) in enumerate(properties.items()):
                value = self.value(sub, f"{hint}-{key}")
                sep = "" if i == 0 else '"," ws '
                fields.append(f"{sep}{gbnf_literal(json.dumps(key, ensure_ascii=False) + ':')} ws {value}")
            return self.add(hint, '"{" ' + " ".join(fields) + ' "}"')
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return self.add(f"{hint}-empty", '"{" "}"')
        value = self.value(extra, f"{hint}-value")
        return self.map(value, hint)

    def map(self, value: str, hint: str) -> str:
        key = self.string(cap=min(_MAX_KEY_LENGTH, self.limits.max_string_length))
        self.primitive("ws")
        pair = self.add(f"{hint}-pair", f'{key} ":" ws {value}')
        return self.add(hint, self._sequence('"{"', '"}"', pair, 0, self.limits.max_array_items, hint))

    def any_value(self, depth: int) -> str:
        scalars = [self.string(), self.primitive("number"), self.primitive("boolean"), self.primitive("null")]
        body = " | ".join(scalars)
        if depth > 1:
            inner = self.any_value(depth - 1)
            array = self.add(
                f"json-array-{depth}",
                self._sequence('"["', '"]"', inner, 0, self.limits.max_array_items, f"json-array-{depth}"),
            )
            obj = self.map(inner, f"json-object-{depth}")
            body += f" | {array} | {obj}"
        return self.add(f"json-{depth}", body)


def _non_negative(schema: dict[str, Any]) -> bool:
    for key in ("minimum", "exclusiveMinimum"):
        bound = schema.get(key)
        if isinstance(bound, int | float) and not isinstance(bound, bool) and bound >= 0:
            return True
    return False


def _merge_all_of(schema: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in schema["allOf"]:
        if not isinstance(sub, dict):
            continue
        for key, value in sub.items():
            if key in ("properties", "$defs") and isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            elif key == "required" and isinstance(value, list):
                merged[key] = [*merged.get(key, []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def schema_grammar(schema: dict[str, Any], limits: GrammarLimits | None = None) -> str:
    """A GBNF grammar whose `root` matches the JSON values valid for `schema` (within the limits).

    Raises:
        ValueError: the schema uses something that cannot be turned into a grammar (a remote `$ref`).
    """
    builder = _Builder(limits or GrammarLimits())
    builder.use_defs(schema)
    return builder.render(builder.value(schema, "value"))


_TOOL_HEAD = gbnf_literal('{"tool":')
_ARGUMENTS_KEY = gbnf_literal('"arguments":')
_ANSWER_HEAD = gbnf_literal('{"answer":')


def reply_grammar(
    tools: Sequence[tuple[str, dict[str, Any]]], *, allow_answer: bool, limits: GrammarLimits | None = None
) -> str:
    """A GBNF grammar for one reply: a call of one of `tools` (`(name, arguments schema)`), or an answer.

    The reply is `{"tool": "<name>", "arguments": <object>}` for each tool, and `{"answer": "<text>"}` if
    `allow_answer`.

    Raises:
        ValueError: nothing is allowed (no tools and no answer), or a schema cannot be turned into a grammar.
    """
    if not tools and not allow_answer:
        raise ValueError("a reply grammar needs at least one tool or `allow_answer=True`")
    builder = _Builder(limits or GrammarLimits())
    ws = builder.primitive("ws")
    alternatives: list[str] = []
    for name, schema in tools:
        builder.use_defs(schema)
        args = builder.value(schema, f"{name}-args")
        alternatives.append(f'{_TOOL_HEAD} {ws} {_json_literal(name)} "," {ws} {_ARGUMENTS_KEY} {ws} {args} "}}"')
    if allow_answer:
        text = builder.string(cap=builder.limits.max_answer_length)
        alternatives.append(f'{_ANSWER_HEAD} {ws} {text} "}}"')
    return builder.render(" | ".join(alternatives))


def reply_text(*, tool: str | None = None, arguments_json: str = "{}", answer: str | None = None) -> str:
    """The canonical reply a grammar from [`reply_grammar`][miniagent.models._grammar.reply_grammar] accepts.

    Used to show the model its own earlier tool calls and answers in the format it must keep writing.
    """
    if tool is not None:
        return f'{{"tool": {json.dumps(tool, ensure_ascii=False)}, "arguments": {arguments_json}}}'
    return f'{{"answer": {json.dumps(answer or "", ensure_ascii=False)}}}'


# ---- parsing and scanning replies ---------------------------------------------------------------------------


class InvalidReply(ValueError):
    """A constrained reply that is not one of the allowed JSON objects (or was cut off)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed constrained reply: either an answer or one tool call."""

    answer: str | None = None
    """The answer text, for `{"answer": ...}`."""
    tool_name: str | None = None
    """The tool called, for `{"tool": ..., "arguments": ...}`."""
    arguments: dict[str, Any] = field(default_factory=dict)
    """The tool call's arguments."""


def parse_reply(text: str, *, tool_names: Collection[str], allow_answer: bool) -> Reply:
    """Parse and check one constrained reply.

    Raises:
        InvalidReply: the text is not JSON, or not one of the allowed objects.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidReply(f"the reply is not valid JSON ({exc.msg} at character {exc.pos}): {text[:200]!r}") from exc
    if isinstance(data, dict) and set(data) == {"answer"}:
        if not allow_answer:
            raise InvalidReply("the reply is a plain answer, but this request needs a tool call")
        if not isinstance(data["answer"], str):
            raise InvalidReply("the reply's 'answer' is not a string")
        return Reply(answer=data["answer"])
    if isinstance(data, dict) and set(data) == {"tool", "arguments"}:
        name, arguments = data["tool"], data["arguments"]
        if not isinstance(name, str) or name not in tool_names:
            raise InvalidReply(f"the reply calls {name!r}, which is not an offered tool ({', '.join(tool_names)})")
        if not isinstance(arguments, dict):
            raise InvalidReply(f"the reply's arguments for {name!r} are not a JSON object")
        return Reply(tool_name=name, arguments=arguments)
    raise InvalidReply(
        'the reply is not {"tool": ..., "arguments": {...}}' + (' or {"answer": ...}' if allow_answer else "")
    )


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WHITESPACE = " \t\r\n"
_ScanState: TypeAlias = Literal["start", "key_or_end", "key", "colon", "value", "answer", "name", "raw", "done"]


class ReplyScanner:
    """Follows a constrained reply as it is generated, and turns it into stream chunks (sans-I/O).

    Feed it text as it arrives. For `{"answer": "...`, it yields `TextChunk`s of the decoded string so far. For a
    tool call, it yields a `ToolCallChunk` with the tool name and a new call id once the name is complete, then
    `ToolCallChunk`s with the raw JSON text of `arguments` as it grows (never a character of the wrapper around it).
    All chunks are at index 0: a reply has one part.
    """

    def __init__(self) -> None:
        self.text = ""
        """Everything fed so far."""
        self.answer = ""
        """The decoded answer text so far."""
        self.tool_name: str | None = None
        """The tool's name, once complete."""
        self.tool_call_id: str | None = None
        """The id given to the tool call, once the name is complete."""
        self.arguments = ""
        """The raw JSON text of `arguments` so far."""
        self._state: _ScanState = "start"
        self._key = ""
        self._buf = ""
        self._escape: str | None = None
        self._high_surrogate: int | None = None
        self._depth = 0
        self._in_string = False
        self._scalar = False
        self._record = False

    @property
    def kind(self) -> Literal["answer", "tool"] | None:
        """What the reply is, as soon as it is known."""
        if self._key == "answer" and self._state in ("answer", "key_or_end", "done"):
            return "answer"
        return "tool" if self.tool_name is not None else None

    def feed(self, delta: str) -> list[StreamChunk]:
        """Take the next piece of the reply; return the chunks it completes."""
        self.text += delta
        text: list[str] = []
        args: list[str] = []
        chunks: list[StreamChunk] = []
        i = 0
        while i < len(delta):
            if self._step(delta[i], text, args, chunks):
                i += 1
        if text:
            chunks.append(TextChunk(0, "".join(text)))
        if args:
            chunks.append(ToolCallChunk(0, args_delta="".join(args)))
        return chunks

    def _step(self, ch: str, text: list[str], args: list[str], chunks: list[StreamChunk]) -> bool:  # noqa: C901 (one state machine, one branch per state)
        """Advance by `ch`; `False` when `ch` ends a bare value and must be read again in the next state."""
        state = self._state
        if state == "start":
            if ch == "{":
                self._state = "key_or_end"
        elif state == "key_or_end":
            if ch == '"':
                self._state, self._buf, self._escape = "key", "", None
            elif ch == "}":
                self._state = "done"
        elif state in ("key", "name"):
            if self._escape is not None:
                self._buf += ch
                self._escape = None
            elif ch == "\\":
                self._buf += ch
                self._escape = ""
            elif ch == '"':
                decoded = _decode_json_string(self._buf)
                if state == "key":
                    self._key, self._state = decoded, "colon"
                else:
                    self.tool_name, self.tool_call_id = decoded, new_tool_call_id()
                    chunks.append(ToolCallChunk(0, tool_name=decoded, tool_call_id=self.tool_call_id))
                    self._state = "key_or_end"
            else:
                self._buf += ch
        elif state == "colon":
            if ch == ":":
                self._state = "value"
        elif state == "value":
            if ch in _WHITESPACE:
                return True
            if ch == '"' and self._key == "answer":
                self._state, self._escape = "answer", None
            elif ch == '"' and self._key == "tool":
                self._state, self._buf, self._escape = "name", "", None
            else:
                self._state, self._depth, self._in_string, self._escape = "raw", 0, False, None
                self._scalar = ch not in '{["'
                self._record = self._key == "arguments"
                return False
        elif state == "answer":
            self._answer_char(ch, text)
        elif state == "raw":
            return self._raw_char(ch, args)
        return True

    def _answer_char(self, ch: str, text: list[str]) -> None:
        if self._escape is None:
            if ch == "\\":
                self._escape = ""
                return
            decoded = self._flush_surrogate()
            if ch == '"':
                self._state = "key_or_end"
            else:
                decoded += ch
            self._emit(decoded, text)
            return
        self._escape += ch
        if self._escape[0] != "u":
            decoded = self._flush_surrogate() + _ESCAPES.get(self._escape, self._escape)
        elif len(self._escape) < 5:
            return
        else:
            try:
                code = int(self._escape[1:], 16)
            except ValueError:
                code = 0xFFFD
            if 0xD800 <= code < 0xDC00:  # the first half of a pair: wait for the second
                decoded, self._high_surrogate = self._flush_surrogate(), code
            elif 0xDC00 <= code < 0xE000 and self._high_surrogate is not None:
                decoded = chr(0x10000 + ((self._high_surrogate - 0xD800) << 10) + (code - 0xDC00))
                self._high_surrogate = None
            else:
                decoded = self._flush_surrogate() + (chr(code) if not 0xD800 <= code < 0xE000 else "\ufffd")
        self._escape = None
        self._emit(decoded, text)

    def _flush_surrogate(self) -> str:
        if self._high_surrogate is None:
            return ""
        self._high_surrogate = None
        return "\ufffd"  # a lone surrogate cannot be part of a Python string that encodes

    def _emit(self, decoded: str, text: list[str]) -> None:
        if decoded:
            text.append(decoded)
            self.answer += decoded

    def _raw_char(self, ch: str, args: list[str]) -> bool:
        if self._scalar and (ch in _WHITESPACE or ch in ",}]"):
            self._state = "key_or_end"
            return False
        if self._record:
            args.append(ch)
            self.arguments += ch
        if self._in_string:
            if self._escape is not None:
                self._escape = None
            elif ch == "\\":
                self._escape = ""
            elif ch == '"':
                self._in_string = False
                if self._depth == 0:
                    self._state = "key_or_end"
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._state = "key_or_end"
        return True


def _decode_json_string(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except json.JSONDecodeError:
        return raw
    return value if isinstance(value, str) else raw

"""Structured output: the `final_result` tool, validation of the final answer, and partial objects while streaming."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import typing
from functools import cache
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args, get_origin

from ..errors import OutputTypeError
from ..models import ToolDefinition
from ..tools._function import _strip_titles

if TYPE_CHECKING:
    from pydantic import BaseModel, TypeAdapter

OutputT = TypeVar("OutputT")

OUTPUT_TOOL_NAME = "final_result"
OUTPUT_SCHEMA_ATTR = "__output_json_schema__"
"""A class attribute by which an output type gives its JSON schema verbatim (a dict), instead of pydantic's: for
schemas from outside Python (the OpenAI-compatible server's `response_format`), which its validator enforces."""
_TRAILING_NUMBER = re.compile(r"(?<=[:,\[])\s*-?[0-9][0-9.eE+-]*$")
_WRAP_KEY = "response"


def check_output_type(output_type: object) -> None:
    """Cheap check at agent construction: `output_type` must be a type (or a typing construct like `list[int]`)."""
    if isinstance(output_type, type) or get_origin(output_type) is not None:
        return
    if output_type in (typing.Any,):
        return
    raise OutputTypeError(
        f"`output_type` must be a type such as `str`, a pydantic model, a dataclass or `list[int]`; "
        f"got {output_type!r} ({type(output_type).__name__}). Pass the class itself, not an instance."
    )


class OutputSchema(Generic[OutputT]):
    """How a run's final answer is requested and validated; built once per agent, on first use."""

    __slots__ = ("output_type", "text", "tool", "_adapter", "_wrapped", "_is_model")

    def __init__(self, output_type: type[OutputT]) -> None:
        from pydantic import TypeAdapter
        from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

        check_output_type(output_type)
        self.output_type = output_type
        self.text = output_type is str
        self.tool: ToolDefinition | None = None
        self._wrapped = False
        self._is_model = _is_model_type(output_type)
        if self.text:
            self._adapter: TypeAdapter[Any] | None = None
            return
        given = getattr(output_type, OUTPUT_SCHEMA_ATTR, None)
        try:
            self._adapter = TypeAdapter(output_type)
            schema = copy.deepcopy(given) if isinstance(given, dict) else self._adapter.json_schema()
        except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
            raise OutputTypeError(
                f"`output_type` {output_type!r} cannot be described as a JSON schema ({exc}); use a pydantic model, "
                "a dataclass, a TypedDict or JSON-friendly types."
            ) from exc
        if given is None:  # pydantic's generated titles are noise; a schema given verbatim is kept as it is
            _strip_titles(schema)
        if schema.get("type") != "object" or "properties" not in schema:
            self._wrapped = True
            defs = schema.pop("$defs", None)
            schema = {"type": "object", "properties": {_WRAP_KEY: schema}, "required": [_WRAP_KEY]}
            if defs:
                schema["$defs"] = defs
        doc = getattr(output_type, "__doc__", None) if self._is_model or dataclasses.is_dataclass(output_type) else None
        description = "Give the final answer with this tool. " + (doc.strip() if doc else "")
        self.tool = ToolDefinition(OUTPUT_TOOL_NAME, description.strip(), schema, kind="output")

    def validate_tool_args(self, args: str | dict[str, Any]) -> OutputT:
        """Validate the output tool's arguments into the output type.

        Raises:
            pydantic.ValidationError: the arguments do not fit.
        """
        assert self._adapter is not None
        data: Any = json.loads(args or "{}") if isinstance(args, str) else args
        if self._wrapped:
            if not isinstance(data, dict) or _WRAP_KEY not in data:
                data = {_WRAP_KEY: data}
            data = data[_WRAP_KEY]
        result: OutputT = self._adapter.validate_python(data)
        return result

    def validate_text(self, text: str) -> OutputT:
        """Validate a plain-text answer: as is for `str` output, parsed as JSON for structured output.

        Raises:
            pydantic.ValidationError | ValueError: the text is not a valid output.
        """
        if self.text:
            return typing.cast(OutputT, text)
        stripped = text.strip()
        if stripped.startswith("```"):
            stripped = stripped.strip("`").removeprefix("json").strip()
        return self.validate_tool_args(stripped)

    def partial(self, args_so_far: str) -> OutputT | None:
        """A partially filled output from the output tool's arguments received so far, or `None` if none yet.

        Fields not yet received are `None` (or their default); values already received are validated.
        """
        if self._adapter is None or not args_so_far.strip():
            return None
        import pydantic_core
        from pydantic import BaseModel, ValidationError

        # A number at the very end may still be growing ("2100" of "2100000"): leave it out until it is complete.
        trailing = _TRAILING_NUMBER.search(args_so_far)
        if trailing is not None:
            args_so_far = args_so_far[: trailing.start()]
        try:
            data = pydantic_core.from_json(args_so_far, allow_partial="trailing-strings")
        except ValueError:
            return None
        if self._wrapped:
            if not isinstance(data, dict) or _WRAP_KEY not in data:
                return None
            data = data[_WRAP_KEY]
        if self._is_model and isinstance(data, dict):
            built = _construct_partial(typing.cast(type[BaseModel], self.output_type), data)
            return typing.cast(OutputT, built) if built.model_fields_set else None
        try:
            result: OutputT = self._adapter.validate_python(data, experimental_allow_partial=True)
        except ValidationError:
            return None
        return result


def _is_model_type(value: object) -> bool:
    from pydantic import BaseModel

    return isinstance(value, type) and issubclass(value, BaseModel)


@cache
def _adapter_for(annotation: Any) -> TypeAdapter[Any]:
    from pydantic import TypeAdapter

    return TypeAdapter(annotation)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _construct_partial(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    from pydantic import ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in data:
            values[name] = None if info.is_required() else info.get_default(call_default_factory=True)
            continue
        raw = data[key]
        nested = _model_in(info.annotation)
        origin = get_origin(info.annotation)
        if nested is not None and isinstance(raw, dict):
            values[name] = _construct_partial(nested, raw)
        elif nested is not None and origin is list and isinstance(raw, list):
            values[name] = [_construct_partial(nested, x) if isinstance(x, dict) else x for x in raw]
        else:
            if info.annotation is None:
                values[name] = raw
                continue
            try:
                values[name] = _adapter_for(typing.cast(Any, info.annotation)).validate_python(
                    raw, experimental_allow_partial=True
                )
            except (ValidationError, PydanticSchemaGenerationError, TypeError):
                values[name] = None
    return model.model_construct(_fields_set={k for k in values if values[k] is not None}, **values)

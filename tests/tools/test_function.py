from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ValidationError

from miniagent import RunContext, Tool
from miniagent.errors import ToolDefinitionError
from miniagent.models.test import EchoModel

pytestmark = pytest.mark.anyio


def google(city: str, days: int = 1) -> str:
    """Forecast for a city.

    Longer explanation.

    Args:
        city: The city's name.
        days: How many days ahead.
    """
    return city


def numpy_style(city: str, days: int = 1) -> str:
    """Forecast for a city.

    Parameters
    ----------
    city : str
        The city's name.
    days : int
        How many days ahead.
    """
    return city


def sphinx(city: str, days: int = 1) -> str:
    """Forecast for a city.

    :param city: The city's name.
    :param days: How many days ahead.
    """
    return city


@pytest.mark.parametrize("func", [google, numpy_style, sphinx])
def test_schema_from_signature_and_docstring_in_every_style(func: Callable[..., str]) -> None:
    definition = Tool(func).definition
    assert definition.name == func.__name__
    assert definition.description.startswith("Forecast for a city.")
    assert definition.parameters_json_schema == {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "city": {"type": "string", "description": "The city's name."},
            "days": {"type": "integer", "default": 1, "description": "How many days ahead."},
        },
        "required": ["city"],
    }


class Unit(Enum):
    C = "C"
    F = "F"


class Point(BaseModel):
    lat: float
    lon: float


@dataclass
class Window:
    start: str
    end: str


def test_rich_parameter_types() -> None:
    def plan(
        mode: Literal["fast", "slow"], unit: Unit, where: Point, window: Window, tags: list[str], extra: dict[str, int]
    ) -> None:
        """Plan."""

    schema = Tool(plan).definition.parameters_json_schema
    assert schema["properties"]["mode"] == {"enum": ["fast", "slow"], "type": "string"}
    assert schema["properties"]["tags"] == {"items": {"type": "string"}, "type": "array"}
    assert set(schema["$defs"]) == {"Point", "Unit", "Window"}
    assert "title" not in schema["$defs"]["Point"]


def test_validation_coerces_and_rejects() -> None:
    tool: Tool[None] = Tool(google)
    assert tool.validate_args('{"city": "Oslo", "days": "3"}') == {"city": "Oslo", "days": 3}
    assert tool.validate_args({"city": "Oslo"}) == {"city": "Oslo", "days": 1}
    with pytest.raises(ValidationError):
        tool.validate_args({"days": 2})
    with pytest.raises(ValidationError):
        tool.validate_args({"city": "x", "unexpected": 1})
    with pytest.raises(ValidationError):
        tool.validate_args("{not json")


def test_a_property_named_title_is_kept() -> None:
    def note(title: str) -> None:
        """Save a note."""

    assert "title" in Tool(note).definition.parameters_json_schema["properties"]


def test_unsupported_parameter_type_names_the_tool_and_the_fix() -> None:
    def bad(lock: threading.Lock) -> None:
        """Bad."""

    with pytest.raises(ToolDefinitionError, match=r"Tool 'bad' has a parameter type that cannot be described"):
        Tool(bad)


def test_signature_shapes_that_a_model_cannot_fill() -> None:
    def star(*args: int) -> None: ...

    def kw(**kwargs: int) -> None: ...

    def pos(a: int, /) -> None: ...

    def late(a: int, ctx: RunContext[None]) -> None: ...

    with pytest.raises(ToolDefinitionError, match=r"\*args/\*\*kwargs"):
        Tool(star)
    with pytest.raises(ToolDefinitionError, match=r"\*args/\*\*kwargs"):
        Tool(kw)
    with pytest.raises(ToolDefinitionError, match="positional-only"):
        Tool(pos)
    with pytest.raises(ToolDefinitionError, match="must be the first parameter"):
        Tool(late)
    with pytest.raises(ToolDefinitionError, match="not valid"):
        Tool(google, name="has space")
    with pytest.raises(ToolDefinitionError, match="must be a function"):
        Tool(42)  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match="timeout"):
        Tool(google, timeout=0)


def test_missing_annotation_is_any() -> None:
    def loose(x) -> None:  # type: ignore[no-untyped-def]
        """Anything."""

    assert Tool(loose).validate_args({"x": [1, {"a": 2}]}) == {"x": [1, {"a": 2}]}


async def test_sync_and_async_tools_are_called_with_validated_arguments() -> None:
    async def async_tool(ctx: RunContext[str], n: int) -> str:
        return f"{ctx.deps}:{n}"

    def sync_tool(n: int) -> int:
        return n * 2

    ctx: RunContext[str] = RunContext("deps", run_id="r", model=EchoModel())
    a: Tool[str] = Tool(async_tool)
    s: Tool[str] = Tool(sync_tool)
    assert a.is_async and a.takes_ctx
    assert not s.is_async and not s.takes_ctx
    assert await a.call(ctx, a.validate_args({"n": "2"})) == "deps:2"
    assert await s.call(ctx, s.validate_args({"n": 2})) == 4


def test_results_serialize_to_json_types() -> None:
    assert Tool.serialize_result(Point(lat=1, lon=2)) == {"lat": 1.0, "lon": 2.0}
    assert Tool.serialize_result(Window("a", "b")) == {"start": "a", "end": "b"}
    assert Tool.serialize_result("x") == "x"
    value: Any = Tool.serialize_result({1, 2})
    assert sorted(value) == [1, 2]

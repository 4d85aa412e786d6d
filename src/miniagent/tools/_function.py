"""Function tools: a signature and a docstring become a JSON schema and a pydantic validator."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, get_origin, get_type_hints

from ..context import DepsT, RunContext
from ..errors import ToolDefinitionError
from ..models import ToolDefinition

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..resilience import RetryPolicy

__all__ = ["Tool", "ToolFunc"]

ToolFunc: TypeAlias = Callable[..., Any]
"""A function that can become a tool: sync or async, optionally taking a `RunContext` first."""

_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(slots=True)
class _Schema:
    model: type[BaseModel]
    json_schema: dict[str, Any]
    param_names: list[str]


@dataclass(slots=True, init=False)
class Tool(Generic[DepsT]):
    """A function the model can call.

    Built by `@agent.tool` or `Tool(func)`. The JSON schema comes from the type hints and the docstring
    (Google, NumPy or Sphinx style; each parameter's description lands in its schema), and the model's
    arguments are validated by pydantic before the function runs. A call that raises becomes an error the model
    reads; `retry`, `breaker` and `fallback` make a flaky tool degrade gracefully (see `docs/resilience.md`).

    Example:
        ```python
        from miniagent import Tool

        def get_weather(city: str, unit: str = "C") -> str:
            '''Current weather for a city.

            :param city: The city's name.
            '''
            return f"18 {unit} in {city}"

        tool = Tool(get_weather)
        assert tool.definition.description == "Current weather for a city."
        assert tool.definition.parameters_json_schema["properties"]["city"]["description"] == "The city's name."
        ```
    """

    function: ToolFunc
    """The wrapped function."""
    name: str
    """The name the model calls it by."""
    description: str
    """What it does, for the model."""
    takes_ctx: bool
    """Whether the first parameter is a `RunContext`."""
    is_async: bool
    """Whether the function is a coroutine function (sync functions run in a worker thread)."""
    retries: int | None
    """Validation retries allowed for this tool; `None` takes the agent's `retries`."""
    timeout_s: float | None
    """Timeout of one call in seconds; `None` takes the agent's default (never unbounded)."""
    retry: RetryPolicy | None
    """How a failed call is tried again (only for an idempotent tool); `None` never retries."""
    breaker: bool
    """Whether the tool has a circuit breaker (upstream `tool:<name>`): after repeated failures it is not called for
    a while, and the model is told when it may work again."""
    fallback: str | Literal["last-good"] | None
    """What answers when the tool fails for good: another tool's name (called with the same arguments), or
    `'last-good'`: the tool's last successful result for the same arguments, with its age."""
    idempotent: bool
    """Whether calling it twice with the same arguments is harmless; a tool that is not is never retried."""
    definition: ToolDefinition
    """What the model is told."""
    _schema: _Schema = field(repr=False)

    def __init__(
        self,
        function: ToolFunc,
        *,
        name: str | None = None,
        description: str | None = None,
        retries: int | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        breaker: bool = False,
        fallback: str | Literal["last-good"] | None = None,
        idempotent: bool = True,
    ) -> None:
        if not callable(function):
            raise ToolDefinitionError(f"A tool must be a function, got {type(function).__name__}: {function!r}.")
        self.function = function
        self.name = name or str(getattr(function, "__name__", ""))
        if not _NAME_RE.match(self.name):
            raise ToolDefinitionError(
                f"Tool name {self.name!r} is not valid: use 1-64 letters, digits, '_' or '-' (pass `name=`)."
            )
        if retries is not None and retries < 0:
            raise ToolDefinitionError(f"Tool {self.name!r}: `retries` must be >= 0, got {retries!r}.")
        if timeout is not None and not timeout > 0:
            raise ToolDefinitionError(
                f"Tool {self.name!r}: `timeout` must be a positive number of seconds, got {timeout!r}."
            )
        self.retries = retries
        self.timeout_s = timeout
        self.retry, self.breaker, self.fallback, self.idempotent = _check_policies(
            self.name, retry, breaker, fallback, idempotent
        )
        self.is_async = inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "__call__", None)  # noqa: B004 (an async __call__ makes an object an async callable)
        )
        doc_description, param_docs = _parse_docstring(function)
        self.description = description if description is not None else doc_description
        self.takes_ctx, self._schema = _build_schema(function, self.name, param_docs)
        self.definition = ToolDefinition(self.name, self.description, self._schema.json_schema)

    def validate_args(self, args: str | dict[str, Any]) -> dict[str, Any]:
        """The validated arguments as keyword arguments.

        Raises:
            pydantic.ValidationError: the arguments do not fit the schema (sent back to the model as a retry).
        """
        schema = self._schema
        if isinstance(args, str):
            validated = schema.model.__pydantic_validator__.validate_json(args or "{}")
        else:
            validated = schema.model.__pydantic_validator__.validate_python(args)
        return {name: getattr(validated, name) for name in schema.param_names}

    async def call(self, ctx: RunContext[DepsT], kwargs: dict[str, Any]) -> Any:
        """Run the function with validated `kwargs`; sync functions run in a worker thread."""
        if self.is_async:
            coro: Awaitable[Any] = self.function(ctx, **kwargs) if self.takes_ctx else self.function(**kwargs)
            return await coro
        call = (
            functools.partial(self.function, ctx, **kwargs)
            if self.takes_ctx
            else functools.partial(self.function, **kwargs)
        )
        import anyio.to_thread

        # A thread cannot be killed: on timeout or cancellation the run moves on and the thread finishes alone.
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    @staticmethod
    def serialize_result(value: Any) -> Any:
        """A tool's return value as JSON-compatible data (pydantic models, dataclasses, dates...)."""
        if value is None or isinstance(value, str | int | float | bool):
            return value
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value, fallback=str)


def _check_policies(
    name: str, retry: object, breaker: object, fallback: object, idempotent: object
) -> tuple[RetryPolicy | None, bool, str | None, bool]:
    from ..resilience import RetryPolicy

    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ToolDefinitionError(f"Tool {name!r}: `retry` must be a RetryPolicy or None, got {type(retry).__name__}.")
    if not isinstance(breaker, bool) or not isinstance(idempotent, bool):
        raise ToolDefinitionError(f"Tool {name!r}: `breaker` and `idempotent` must be True or False.")
    if retry is not None and retry.max_attempts > 1 and not idempotent:
        raise ToolDefinitionError(
            f"Tool {name!r} is not idempotent, so it is never retried automatically (a second call could repeat its "
            "effect): drop `retry=`, or declare `idempotent=True` if calling it twice is harmless."
        )
    if fallback is not None:
        if not isinstance(fallback, str) or not (fallback == "last-good" or _NAME_RE.match(fallback)):
            raise ToolDefinitionError(
                f"Tool {name!r}: `fallback` must be another tool's name or 'last-good', got {fallback!r}."
            )
        if fallback == name:
            raise ToolDefinitionError(f"Tool {name!r} cannot fall back to itself; name another tool or 'last-good'.")
        if fallback == "last-good" and not idempotent:
            raise ToolDefinitionError(
                f"Tool {name!r} is not idempotent, so an earlier result cannot stand in for a new call: drop "
                "`fallback='last-good'`, or declare `idempotent=True`."
            )
    return retry, breaker, fallback, idempotent


def _parse_docstring(function: ToolFunc) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(function)
    if not doc:
        return "", {}
    import docstring_parser

    parsed = docstring_parser.parse(doc)
    parts = [p for p in (parsed.short_description, parsed.long_description) if p]
    params = {p.arg_name: p.description for p in parsed.params if p.description}
    if not parsed.params and not parts:
        return doc, {}
    return "\n\n".join(parts), params


def _type_hints(function: ToolFunc) -> dict[str, Any]:
    try:
        return get_type_hints(function, include_extras=True)
    except NameError:
        # Under `from __future__ import annotations`, a tool defined inside a function may name types that are local
        # to that function: look them up in the calling frames, as pydantic does for locally defined models.
        localns: dict[str, Any] = {}
        frame = inspect.currentframe()
        for _ in range(12):
            if frame is None:
                break
            frame = frame.f_back
            if frame is not None:
                localns = {**frame.f_locals, **localns}
        return get_type_hints(function, localns=localns, include_extras=True)


def _is_run_context(annotation: Any) -> bool:
    return annotation is RunContext or get_origin(annotation) is RunContext


def _build_schema(function: ToolFunc, name: str, param_docs: dict[str, str]) -> tuple[bool, _Schema]:
    from pydantic import ConfigDict, Field, create_model
    from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"Tool {name!r}: cannot read the function's signature ({exc}).") from exc
    try:
        hints = _type_hints(function)
    except Exception as exc:
        raise ToolDefinitionError(
            f"Tool {name!r}: its type hints cannot be resolved ({exc}); import the names they use at module level."
        ) from exc
    params = list(signature.parameters.values())
    takes_ctx = bool(params) and _is_run_context(hints.get(params[0].name, params[0].annotation))
    if takes_ctx:
        params = params[1:]
    fields: dict[str, Any] = {}
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"Tool {name!r}: parameter {param.name!r} is *args/**kwargs, which a model cannot fill; "
                "declare each parameter explicitly."
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolDefinitionError(
                f"Tool {name!r}: parameter {param.name!r} is positional-only; tools are called by keyword, "
                "remove the '/'."
            )
        annotation = hints.get(param.name, Any)
        if _is_run_context(annotation):
            raise ToolDefinitionError(
                f"Tool {name!r}: `RunContext` must be the first parameter, found it at {param.name!r}."
            )
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, Field(default, description=param_docs.get(param.name)))
    try:
        model: type[BaseModel] = create_model(f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields)
        json_schema = model.model_json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise ToolDefinitionError(
            f"Tool {name!r} has a parameter type that cannot be described to a model as JSON ({exc}). "
            "Use JSON-friendly types: str, int, float, bool, Literal, Enum, lists, dicts, pydantic models, dataclasses."
        ) from exc
    _strip_titles(json_schema)
    json_schema.setdefault("properties", {})
    return takes_ctx, _Schema(model, json_schema, list(fields))


def _strip_titles(schema: Any) -> None:
    """Drop pydantic's generated `title`s (noise for a model) but keep property names that happen to be `title`."""
    if isinstance(schema, dict):
        title = schema.get("title")
        if isinstance(title, str):
            del schema["title"]
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict):
                for sub in value.values():
                    _strip_titles(sub)
            else:
                _strip_titles(value)
    elif isinstance(schema, list):
        for item in schema:
            _strip_titles(item)

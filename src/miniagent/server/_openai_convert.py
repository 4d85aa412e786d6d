"""From an OpenAI chat request to an agent run, and from the run back to OpenAI's answer: sans-I/O functions.

The conversation maps onto miniagent's messages: `system`/`developer` messages become system parts after the agent's
own instructions, user messages user parts (text and images), assistant messages model responses (text and tool
calls) and `tool` messages the results of those calls. The client's `tools` become external tools of the run (the
model's calls to them end the run and go back to the client), and `response_format` becomes the run's output type.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ..errors import UserError
from ..messages import (
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ..models import ModelSettings, ToolDefinition
from ._errors import ApiError
from ._openai_schema import SchemaError, json_object_type, json_schema_type
from ._openai_types import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    RefusalPart,
    SystemMessage,
    ToolMessage,
    UserMessage,
)

if TYPE_CHECKING:
    from ..agent import Agent
    from ..usage import Usage

__all__ = [
    "FinishReason",
    "RunPlan",
    "chunk",
    "completion",
    "finish_reason",
    "output_content",
    "plan_run",
    "tool_call_dicts",
    "usage_dict",
]

FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter"]
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def invalid(message: str, *, param: str | None = None, code: str = "invalid_request") -> ApiError:
    """A 400 `invalid_request_error` naming the parameter at fault, as OpenAI answers a request it cannot use."""
    return ApiError(400, code, message, param=param)


@dataclass(slots=True)
class RunPlan:
    """What an agent run needs to answer a chat request."""

    agent: Agent[Any, Any]
    """The agent for this request: the served one with the client's tools and output type."""
    history: list[ModelMessage]
    """The whole conversation as miniagent messages, ending with a request (the user's message or tool results)."""
    settings: ModelSettings | None
    """The sampling settings the client asked for."""
    structured: Literal["text", "json_object", "json_schema"] = "text"
    """How the answer is formatted: plain text, or JSON text of the structured output."""
    client_tools: frozenset[str] = field(default_factory=frozenset)
    """The names of the client's tools."""


def plan_run(served: Agent[Any, Any], body: ChatCompletionRequest) -> RunPlan:
    """Map a validated chat request onto a run of `served`.

    Raises:
        ApiError: 400 for a request the agent cannot answer (e.g. `n` > 1, a conversation that does not end with
            a user or tool message, a tool result for an unknown call, a schema it cannot enforce).
    """
    if body.n is not None and body.n != 1:
        raise invalid(f"`n` must be 1 (got {body.n}): this server returns one answer per request.", param="n")
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice) or choice == "required":
        raise invalid(
            "`tool_choice` 'required' and named functions are not supported: the agent decides when to call tools. "
            "Send 'auto' (the default) or 'none'.",
            param="tool_choice",
        )
    definitions = [] if choice == "none" else _client_tools(body)
    output_type: Any = str
    structured: Literal["text", "json_object", "json_schema"] = "text"
    fmt = body.response_format
    if isinstance(fmt, JsonObjectFormat):
        output_type, structured = json_object_type(), "json_object"
    elif isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.json_schema
        structured = "json_schema"
        try:
            output_type = json_schema_type(schema) if schema is not None else json_object_type()
        except SchemaError as exc:
            raise invalid(
                f"`response_format.json_schema.schema` cannot be enforced: {exc}.", param="response_format"
            ) from None
    try:
        agent = served._variant(output_type=output_type, external_tools=definitions)
    except UserError as exc:  # a client tool named like one of the agent's own tools
        raise invalid(str(exc), param="tools") from None
    history = _history(served.instructions, body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    settings = None
    if any(v is not None for v in (max_tokens, body.temperature, body.top_p, body.seed)):
        settings = ModelSettings(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    return RunPlan(agent, history, settings, structured=structured, client_tools=frozenset(d.name for d in definitions))


def _client_tools(body: ChatCompletionRequest) -> list[ToolDefinition]:
    definitions: list[ToolDefinition] = []
    seen: set[str] = set()
    for i, tool in enumerate(body.tools or ()):
        fn = tool.function
        if fn.name in seen:
            raise invalid(f"Two tools are named {fn.name!r}; tool names must be unique.", param=f"tools.{i}")
        seen.add(fn.name)
        parameters = fn.parameters if fn.parameters is not None else _EMPTY_OBJECT
        properties = parameters.get("properties", {})
        required = parameters.get("required", [])
        if (
            parameters.get("type", "object") != "object"
            or not isinstance(properties, dict)
            or not all(isinstance(p, dict | bool) for p in properties.values())
            or not isinstance(required, list)
            or not all(isinstance(r, str) for r in required)
        ):
            raise invalid(
                f"The parameters of tool {fn.name!r} must be a JSON schema of an object (`properties` an object of "
                "schemas, `required` a list of names).",
                param=f"tools.{i}.function.parameters",
            )
        definitions.append(ToolDefinition(fn.name, fn.description or "", parameters, kind="external"))
    return definitions


def _text(content: str | list[Any] | None) -> str:
    """The text of a message's content: a string, or its text parts joined by newlines."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if isinstance(part, RefusalPart):  # an earlier refusal, which the model should see as what it said
            texts.append(part.refusal)
        else:
            texts.append(part.text)
    return "\n".join(texts)


def _user_part(message: UserMessage, param: str) -> UserPromptPart:
    if isinstance(message.content, str):
        return UserPromptPart(message.content)
    texts: list[str] = []
    images: list[ImageUrl] = []
    for part in message.content:
        if isinstance(part, ImagePart):
            url = part.image_url.url
            if not url.startswith(("https://", "http://", "data:")):
                raise invalid(
                    f"An image URL must be an http(s) or data: URL, got {url[:40]!r}.", param=f"{param}.content"
                )
            images.append(ImageUrl(url))
        else:
            texts.append(part.text)
    return UserPromptPart("\n".join(texts), attachments=list(images))


def _history(instructions: str | None, body: ChatCompletionRequest) -> list[ModelMessage]:
    """The conversation as miniagent messages: system parts first, then the turns in order."""
    system: list[ModelRequestPart] = [SystemPromptPart(instructions)] if instructions else []
    turns: list[ModelMessage] = []
    calls: dict[str, str] = {}  # tool call id -> tool name, from the assistant messages so far
    answered: set[str] = set()
    pending: dict[str, int] = {}  # calls of the last assistant message not answered yet -> its index
    last = len(body.messages) - 1
    for i, message in enumerate(body.messages):
        param = f"messages.{i}"
        if pending and not isinstance(message, ToolMessage | SystemMessage | DeveloperMessage):
            _unanswered(pending)
        if isinstance(message, SystemMessage | DeveloperMessage):
            system.append(SystemPromptPart(_text(message.content)))
        elif isinstance(message, UserMessage):
            _add_request_part(turns, _user_part(message, param))
        elif isinstance(message, AssistantMessage):
            turns.append(_response(message, param, calls))
            pending = {call.id: i for call in message.tool_calls or ()}
        elif isinstance(message, ToolMessage):
            name = calls.get(message.tool_call_id)
            if name is None:
                raise invalid(
                    f"The tool message answers call {message.tool_call_id[:64]!r}, which no earlier assistant message "
                    "made; send the assistant message with its `tool_calls` before the results.",
                    param=f"{param}.tool_call_id",
                )
            if message.tool_call_id in answered:
                raise invalid(f"Call {message.tool_call_id[:64]!r} is answered twice.", param=f"{param}.tool_call_id")
            answered.add(message.tool_call_id)
            pending.pop(message.tool_call_id, None)
            content = _text(message.content)
            _add_request_part(turns, ToolReturnPart(name, content, message.tool_call_id))
        if i == last and not isinstance(message, UserMessage | ToolMessage):
            raise invalid(
                f"The last message must be the user's (or the results of tool calls), not {message.role!r}.",
                param=param,
            )
    if pending:
        _unanswered(pending)
    if system:
        if turns and isinstance(turns[0], ModelRequest):
            turns[0] = ModelRequest([*system, *turns[0].parts])
        else:
            turns.insert(0, ModelRequest(system))
    return turns


def _unanswered(pending: dict[str, int]) -> None:
    call_id, index = next(iter(pending.items()))
    raise invalid(
        f"Tool call {call_id[:64]!r} of messages.{index} has no result: every tool call of an assistant message needs "
        "a `tool` message answering it right after it.",
        param=f"messages.{index}",
    )


def _add_request_part(turns: list[ModelMessage], part: ModelRequestPart) -> None:
    """Append `part` to the last request, or start a request after a response (consecutive messages merge)."""
    if turns and isinstance(turns[-1], ModelRequest):
        turns[-1].parts.append(part)
    else:
        turns.append(ModelRequest([part]))


def _response(message: AssistantMessage, param: str, calls: dict[str, str]) -> ModelResponse:
    parts: list[ModelResponsePart] = []
    text = _text(message.content) or message.refusal or ""
    if not text and not message.tool_calls:
        raise invalid(f"An assistant message needs `content` or `tool_calls` ({param}).", param=param)
    if text:
        parts.append(TextPart(text))
    for j, call in enumerate(message.tool_calls or ()):
        try:
            args = json.loads(call.function.arguments or "{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise invalid(
                f"The arguments of tool call {call.id[:64]!r} must be a JSON object as text.",
                param=f"{param}.tool_calls.{j}.function.arguments",
            )
        calls[call.id] = call.function.name
        parts.append(ToolCallPart(call.function.name, call.function.arguments or "{}", call.id))
    return ModelResponse(parts, finish_reason="tool_call" if message.tool_calls else "stop")


# ---- the answer --------------------------------------------------------------------------------------------


def usage_dict(usage: Usage) -> dict[str, Any]:
    """A run's usage as OpenAI's `usage` object."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def output_content(output: Any, structured: str) -> str:
    """The answer's `content`: the text, or the structured output as JSON text."""
    if structured == "text":
        return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)
    return json.dumps(output, ensure_ascii=False, default=str)


def finish_reason(last: ModelResponse | None, *, tool_calls: bool) -> FinishReason:
    """OpenAI's `finish_reason` for an answer that ends with `last` (or with calls of the client's tools)."""
    if tool_calls:
        return "tool_calls"
    reason = last.finish_reason if last is not None else None
    if reason == "length":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "stop"


def tool_call_dicts(calls: list[ToolCallPart]) -> list[dict[str, Any]]:
    """Calls of the client's tools, as OpenAI's `tool_calls` (with `index`, which streamed chunks need)."""
    return [
        {
            "index": i,
            "id": c.tool_call_id,
            "type": "function",
            "function": {"name": c.tool_name, "arguments": c.args_json()},
        }
        for i, c in enumerate(calls)
    ]


def completion(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str | None,
    tool_calls: list[ToolCallPart],
    reason: FinishReason,
    usage: Usage,
) -> dict[str, Any]:
    """A `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in tool_call_dicts(tool_calls)]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
        "usage": usage_dict(usage),
        "system_fingerprint": None,
    }


def chunk(
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    *,
    reason: FinishReason | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """A `chat.completion.chunk`: a delta (with a finish reason in the last one), or the usage with no choices."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage_dict(usage)
    return body


def now() -> int:
    """Seconds since the epoch, as OpenAI's `created`."""
    return int(time.time())

"""The OpenAI Chat Completions wire format: request bodies (validated) and response bodies (documented).

The request models mirror OpenAI's so any OpenAI SDK's request validates; fields this server does not use are
tolerated (ignored), as OpenAI's own API tolerates new fields. The response models are what `/docs` shows; answers are
built as plain dicts of the same shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "DeveloperMessage",
    "ErrorResponse",
    "FunctionTool",
    "ImagePart",
    "JsonSchemaFormat",
    "ModelList",
    "ModelObject",
    "NamedToolChoice",
    "RefusalPart",
    "SystemMessage",
    "TextPart",
    "ToolMessage",
    "UserMessage",
]

_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class _Open(BaseModel):
    """A request object: unknown fields are accepted and ignored (clients send newer fields than we know)."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    """A piece of text in a message's content."""

    type: Literal["text"]
    """Always `text`."""
    text: str
    """The text."""


class ImageUrl(_Open):
    """Where an image is: an `https://` URL or a `data:` URL."""

    url: str = Field(min_length=1)
    """The image's URL."""
    detail: Literal["auto", "low", "high"] | None = None
    """How closely the model should look (accepted; the agent's model decides)."""


class ImagePart(_Open):
    """An image in a user message."""

    type: Literal["image_url"]
    """Always `image_url`."""
    image_url: ImageUrl
    """The image."""


class RefusalPart(_Open):
    """A refusal the assistant gave earlier."""

    type: Literal["refusal"]
    """Always `refusal`."""
    refusal: str
    """The refusal text."""


UserContentPart: TypeAlias = Annotated[TextPart | ImagePart, Field(discriminator="type")]
AssistantContentPart: TypeAlias = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class SystemMessage(_Open):
    """Instructions from the client, added to the agent's own."""

    role: Literal["system"]
    """Always `system`."""
    content: str | list[TextPart]
    """The instructions."""
    name: str | None = None
    """An optional participant name (ignored)."""


class DeveloperMessage(_Open):
    """Instructions from the client (the newer name of a system message), added to the agent's own."""

    role: Literal["developer"]
    """Always `developer`."""
    content: str | list[TextPart]
    """The instructions."""
    name: str | None = None
    """An optional participant name (ignored)."""


class UserMessage(_Open):
    """What the user said: text, and images."""

    role: Literal["user"]
    """Always `user`."""
    content: str | list[UserContentPart]
    """The text, or parts of text and images."""
    name: str | None = None
    """An optional participant name (ignored)."""


class FunctionCall(_Open):
    """The function an assistant's tool call names, and its arguments as JSON text."""

    name: str = Field(min_length=1)
    """The function's name."""
    arguments: str
    """The arguments, a JSON object as text."""


class ToolCall(_Open):
    """A tool call the assistant made earlier."""

    id: str = Field(min_length=1)
    """The call's id, echoed by the `tool` message that answers it."""
    type: Literal["function"] = "function"
    """Always `function`."""
    function: FunctionCall
    """What was called."""


class AssistantMessage(_Open):
    """An earlier answer of the assistant: text and/or tool calls."""

    role: Literal["assistant"]
    """Always `assistant`."""
    content: str | list[AssistantContentPart] | None = None
    """The text, if any."""
    tool_calls: list[ToolCall] | None = None
    """The tool calls, if any."""
    refusal: str | None = None
    """A refusal, if the assistant refused."""
    name: str | None = None
    """An optional participant name (ignored)."""


class ToolMessage(_Open):
    """The result of a tool call the client ran."""

    role: Literal["tool"]
    """Always `tool`."""
    content: str | list[TextPart]
    """The result."""
    tool_call_id: str = Field(min_length=1)
    """The id of the assistant's tool call this answers."""


ChatMessage: TypeAlias = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]
"""One message of the conversation, told apart by its `role`."""


class FunctionDefinition(_Open):
    """A function the client offers the model."""

    name: str = Field(pattern=_NAME)
    """The function's name (letters, digits, `_` and `-`, at most 64)."""
    description: str | None = None
    """What it does, for the model."""
    parameters: dict[str, Any] | None = None
    """A JSON schema of its arguments (an object); none means no arguments."""
    strict: bool | None = None
    """Accepted; arguments are passed to the client as the model wrote them."""


class FunctionTool(_Open):
    """A tool the client runs itself: when the model calls it, the call is returned to the client."""

    type: Literal["function"]
    """Always `function`."""
    function: FunctionDefinition
    """The function."""


class NamedFunction(_Open):
    """The function a named tool choice forces."""

    name: str
    """Its name."""


class NamedToolChoice(_Open):
    """Force a call of one function (not supported by this server: the agent decides)."""

    type: Literal["function"]
    """Always `function`."""
    function: NamedFunction
    """The function."""


class TextFormat(_Open):
    """Answer in plain text (the default)."""

    type: Literal["text"]
    """Always `text`."""


class JsonObjectFormat(_Open):
    """Answer with a JSON object."""

    type: Literal["json_object"]
    """Always `json_object`."""


class JsonSchemaSpec(_Open):
    """A named JSON schema the answer must match."""

    name: str = Field(pattern=_NAME)
    """The schema's name."""
    description: str | None = None
    """What the answer is."""
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    """The JSON schema (`schema` on the wire); none means any JSON object."""
    strict: bool | None = None
    """Accepted; the answer is always validated against the schema."""


class JsonSchemaFormat(_Open):
    """Answer with JSON that a schema allows (structured output)."""

    type: Literal["json_schema"]
    """Always `json_schema`."""
    json_schema: JsonSchemaSpec
    """The schema."""


ResponseFormat: TypeAlias = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StreamOptions(_Open):
    """Options of a streamed answer."""

    include_usage: bool | None = None
    """Send one more chunk with the usage (and no choices) before `[DONE]`."""


class ChatCompletionRequest(_Open):
    """`POST /v1/chat/completions`: the conversation so far, and how to answer."""

    model: str = Field(min_length=1)
    """A served agent's name or a pass-through model's string (see `GET /v1/models`)."""
    messages: list[ChatMessage] = Field(min_length=1)
    """The conversation; the last message is the user's (or tool results the client ran)."""
    tools: list[FunctionTool] | None = None
    """Tools the client runs itself: the model's calls to them end the answer with `finish_reason: tool_calls`."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """`auto` (default) or `none` (the client's tools are not offered)."""
    parallel_tool_calls: bool | None = None
    """Accepted; the model may call several tools at once."""
    response_format: ResponseFormat | None = None
    """`text`, `json_object` (any JSON object) or `json_schema` (JSON that the schema allows)."""
    stream: bool | None = None
    """Stream the answer as server-sent `chat.completion.chunk` events."""
    stream_options: StreamOptions | None = None
    """Options of a streamed answer."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate per model response (older name of `max_completion_tokens`)."""
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """Most tokens to generate per model response."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature."""
    top_p: float | None = Field(default=None, ge=0, le=1)
    """Nucleus sampling mass."""
    seed: int | None = None
    """Seed for models that sample deterministically."""
    user: str | None = Field(default=None, max_length=256)
    """The end user, for the client's bookkeeping (kept as metadata in the logs only)."""
    n: int | None = Field(default=None, ge=1)
    """How many answers: only 1 is supported."""


class ResponseToolCall(BaseModel):
    """A call of a client tool: run it and send the result back in a `tool` message."""

    id: str
    """The call's id."""
    type: Literal["function"]
    """Always `function`."""
    function: FunctionCall
    """The function and its arguments (JSON text)."""


class ResponseMessage(BaseModel):
    """The assistant's answer."""

    role: Literal["assistant"]
    """Always `assistant`."""
    content: str | None
    """The text (JSON text for `json_object`/`json_schema`), or null when only tools are called."""
    refusal: str | None = None
    """Always null."""
    tool_calls: list[ResponseToolCall] | None = None
    """Calls of the client's tools, if the model made any."""


class Choice(BaseModel):
    """The one answer."""

    index: int
    """Always 0."""
    message: ResponseMessage
    """The answer."""
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]
    """Why it ended: `stop`, `length` (token limit), `tool_calls` (client tools to run), `content_filter`."""
    logprobs: None = None
    """Always null."""


class PromptTokensDetails(BaseModel):
    """Details of the prompt tokens."""

    cached_tokens: int
    """Prompt tokens read from the provider's cache."""


class CompletionTokensDetails(BaseModel):
    """Details of the completion tokens."""

    reasoning_tokens: int
    """Completion tokens spent on hidden reasoning."""


class CompletionUsage(BaseModel):
    """Tokens the whole agent run used (every model request of it, tool steps included)."""

    prompt_tokens: int
    """Input tokens."""
    completion_tokens: int
    """Output tokens."""
    total_tokens: int
    """Their sum."""
    prompt_tokens_details: PromptTokensDetails
    """Cached input tokens."""
    completion_tokens_details: CompletionTokensDetails
    """Reasoning tokens."""


class ChatCompletion(BaseModel):
    """A whole answer (`stream` false)."""

    id: str
    """`chatcmpl-<run id>`."""
    object: Literal["chat.completion"]
    """Always `chat.completion`."""
    created: int
    """When it was created, in seconds since the epoch."""
    model: str
    """The agent (or pass-through model) that answered."""
    choices: list[Choice]
    """The one answer."""
    usage: CompletionUsage
    """What the run used."""
    system_fingerprint: None = None
    """Always null."""


class DeltaToolCall(BaseModel):
    """A client tool call in a streamed answer (sent whole, in one chunk)."""

    index: int
    """Its position among the answer's tool calls."""
    id: str
    """The call's id."""
    type: Literal["function"]
    """Always `function`."""
    function: FunctionCall
    """The function and its arguments."""


class Delta(BaseModel):
    """What a chunk adds to the answer."""

    role: Literal["assistant"] | None = None
    """In the first chunk only."""
    content: str | None = None
    """New text."""
    tool_calls: list[DeltaToolCall] | None = None
    """Client tool calls."""


class ChunkChoice(BaseModel):
    """The answer's new piece."""

    index: int
    """Always 0."""
    delta: Delta
    """The new piece."""
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None
    """Set in the last chunk."""
    logprobs: None = None
    """Always null."""


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer (`data: {...}`); the stream ends with `data: [DONE]`."""

    id: str
    """`chatcmpl-<run id>`, the same in every chunk."""
    object: Literal["chat.completion.chunk"]
    """Always `chat.completion.chunk`."""
    created: int
    """When the answer started."""
    model: str
    """The agent (or pass-through model)."""
    choices: list[ChunkChoice]
    """The new piece (empty in the usage chunk)."""
    usage: CompletionUsage | None = None
    """In the usage chunk only (with `stream_options.include_usage`)."""
    system_fingerprint: None = None
    """Always null."""


class ModelObject(BaseModel):
    """A served agent or a pass-through model, as OpenAI's API lists a model."""

    id: str
    """The agent's name, or the pass-through model's string (`openai:gpt-4o-mini`): pass it as `model`."""
    object: Literal["model"]
    """Always `model`."""
    created: int
    """When the server started, in seconds since the epoch."""
    owned_by: str
    """`miniagent` for an agent, `miniagent-passthrough` for a pass-through model."""


class ModelList(BaseModel):
    """The served agents, then the pass-through models."""

    object: Literal["list"]
    """Always `list`."""
    data: list[ModelObject]
    """One entry per agent, then one per pass-through model."""


class ErrorDetail(BaseModel):
    """What went wrong."""

    message: str
    """A human message saying what to do."""
    type: str
    """`invalid_request_error`, `authentication_error`, `not_found_error`, `rate_limit_error`, `server_error`..."""
    param: str | None
    """The request parameter at fault, if any."""
    code: str | None
    """A machine-readable code, e.g. `model_not_found`."""


class ErrorResponse(BaseModel):
    """An error answer, in OpenAI's shape."""

    error: ErrorDetail
    """The error."""

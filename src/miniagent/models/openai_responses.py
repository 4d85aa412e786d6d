"""OpenAI's Responses API (`POST /v1/responses`), the API OpenAI's reasoning models are built around.

Model string: `'openai-responses:gpt-5-mini'` (key from `OPENAI_API_KEY`). Requests are stateless (`store=False`):
the whole conversation is sent each time, and reasoning is carried between requests in its encrypted form.
This module imports the `openai` SDK; `import miniagent` never imports this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeAlias, cast

from ..errors import (
    ModelAPIError,
    ModelRateLimited,
    ModelTimeout,
    OptionalDependencyError,
    UserError,
)
from ..messages import (
    FinishReason,
    ImageUrl,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ..usage import Usage
from ._base import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    StreamChunk,
    StreamDone,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
    ToolDefinition,
    endpoint_upstream,
    new_tool_call_id,
)
from ._http import body_was_cut, error_class_for, parse_retry_after, transport_detail

try:
    import openai
    from openai import AsyncOpenAI, AsyncStream, Omit, omit
    from openai.types.responses import (
        FunctionToolParam,
        Response,
        ResponseCompletedEvent,
        ResponseCreatedEvent,
        ResponseErrorEvent,
        ResponseFailedEvent,
        ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent,
        ResponseFunctionToolCall,
        ResponseIncompleteEvent,
        ResponseInputItemParam,
        ResponseInputMessageContentListParam,
        ResponseOutputItemAddedEvent,
        ResponseOutputItemDoneEvent,
        ResponseOutputMessage,
        ResponseOutputText,
        ResponseReasoningItem,
        ResponseReasoningItemParam,
        ResponseReasoningSummaryPartAddedEvent,
        ResponseReasoningSummaryTextDeltaEvent,
        ResponseReasoningTextDeltaEvent,
        ResponseRefusalDeltaEvent,
        ResponseStreamEvent,
        ResponseTextDeltaEvent,
    )
    from openai.types.shared_params import Reasoning
except ImportError as _exc:  # pragma: no cover (the extra is installed wherever tests run)
    raise OptionalDependencyError("`OpenAIResponsesModel`", "openai", missing=_exc.name) from _exc

# The client pool, key handling, redaction and the small request helpers are OpenAIChatModel's, reused as they are.
# They are private there; they should move to a shared `_openai_client` module (reported to the lead).
from .openai_chat import (
    _NO_SETTINGS,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    OpenAIChatModel,
    _describe_body,
    _given,
    _status_advice,
)

if TYPE_CHECKING:
    import httpx2

    from ..settings import Settings

__all__ = ["OpenAIResponsesModel", "ReasoningEffort", "ReasoningSummary"]

ReasoningEffort: TypeAlias = Literal["none", "minimal", "low", "medium", "high", "xhigh"]
"""How hard a reasoning model thinks before it answers (`reasoning.effort`)."""

ReasoningSummary: TypeAlias = Literal["auto", "concise", "detailed"]
"""Whether and how a reasoning model summarizes its reasoning (`reasoning.summary`); summaries become thinking parts."""

_PROVIDER: Final = "openai"

_REASONING_MODELS = re.compile(r"^(o\d|gpt-5|gpt-oss|codex)", re.IGNORECASE)
"""Model families that reason; only they accept `include=['reasoning.encrypted_content']`."""

_INCOMPLETE_REASONS: dict[str, FinishReason] = {"max_output_tokens": "length", "content_filter": "content_filter"}

# In-stream errors (an `error` event, `response.failed`) arrive after HTTP 200 with only a code: the status each
# code stands for picks the error class, so a rate limit in a stream is retried like a 429.
_CODE_STATUS: dict[str, int] = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "overloaded": 503,
    "server_is_overloaded": 503,
    "context_length_exceeded": 400,
    "invalid_prompt": 400,
    "invalid_request_error": 400,
    "invalid_image": 400,
    "invalid_image_url": 400,
    "image_too_large": 400,
}


class OpenAIResponsesModel(Model):
    """A model served over OpenAI's Responses API.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.models.openai_responses import OpenAIResponsesModel

        # The key: `api_key=`, or OPENAI_API_KEY in the environment.
        model = OpenAIResponsesModel("gpt-5-mini", api_key="sk-...", reasoning_effort="low", reasoning_summary="auto")
        agent = Agent(model=model, instructions="Be brief.")
        ```

    Requests are stateless (`store=False`): nothing is kept on OpenAI's side between requests, and a reasoning
    model's reasoning is requested in encrypted form (`include=['reasoning.encrypted_content']`) and sent back
    with the next request, so a tool-calling turn keeps its chain of thought. Each instance holds one HTTP
    connection pool per event loop; the SDK's own retries are off (`max_retries=0`).

    Args:
        model_name: The model to ask for, e.g. `'gpt-5-mini'` or `'gpt-4o'`.
        base_url: The API root; `None` for OpenAI's (or `OPENAI_BASE_URL`).
        api_key: The key; `None` reads `OPENAI_API_KEY`.
        client: A configured `openai.AsyncOpenAI` to use as it is (it is not closed by `aclose`).
        http_client: An `httpx2.AsyncClient` for the SDK to use (it is not closed by `aclose`).
        reasoning_effort: `reasoning.effort` for reasoning models; `None` leaves the model's default.
        reasoning_summary: `reasoning.summary` for reasoning models; `None` asks for no summaries.
        encrypted_reasoning: Whether to ask for (and send back) encrypted reasoning; `None` decides from the model
            name (`o1`, `o3`, `o4-mini`, `gpt-5*`, `gpt-oss*`, `codex*`) and from the two reasoning options.
        timeout_s: Longest wait for a response, and between two pieces of a stream, in seconds.
        connect_timeout_s: Longest wait to connect, in seconds.

    Raises:
        MissingCredentialError: no key is given or set.
        UserError: an empty `model_name`, or a timeout that is not a positive number.
    """

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncOpenAI | None = None,
        http_client: httpx2.AsyncClient | None = None,
        reasoning_effort: ReasoningEffort | None = None,
        reasoning_summary: ReasoningSummary | None = None,
        encrypted_reasoning: bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if not model_name:
            raise UserError("`model_name` must name a model, e.g. 'gpt-5-mini'.")
        # The Chat model owns the per-loop client pool, the key lookup and redaction; this model borrows them.
        self._clients = OpenAIChatModel(
            model_name,
            base_url=base_url,
            api_key=api_key,
            client=client,
            http_client=http_client,
            provider="openai",
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
        )
        self._model_name = model_name
        reasoning: Reasoning = {}
        if reasoning_effort is not None:
            reasoning["effort"] = reasoning_effort
        if reasoning_summary is not None:
            reasoning["summary"] = reasoning_summary
        self._reasoning: Reasoning | Omit = reasoning or omit
        if encrypted_reasoning is None:
            encrypted_reasoning = bool(_REASONING_MODELS.match(model_name) or reasoning)
        self._encrypted_reasoning = encrypted_reasoning
        self._tools_for: tuple[ModelRequestParameters, list[FunctionToolParam]] | None = None

    @classmethod
    def from_spec(cls, name: str, settings: Settings | None = None) -> OpenAIResponsesModel:
        """The model a registry string `'openai-responses:<model>'` names.

        Args:
            name: The part of the model string after `openai-responses:`, e.g. `'gpt-5-mini'`.
            settings: miniagent's settings (unused: the key comes from the environment).

        Raises:
            UserError: no model name is given.
            MissingCredentialError: `OPENAI_API_KEY` is not set.
        """
        name = name.strip()
        if not name:
            raise UserError(
                "'openai-responses:' needs a model name after the colon, e.g. 'openai-responses:gpt-5-mini'."
            )
        return cls(name)

    @property
    def name(self) -> str:
        """`'openai-responses:<model>'`."""
        return f"openai-responses:{self._model_name}"

    @property
    def upstream(self) -> str:
        """The name and the server's URL (credentials removed): one circuit breaker per server and model."""
        return endpoint_upstream(self.name, self._clients._base_url)

    @property
    def model_name(self) -> str:
        """The model asked for in each request."""
        return self._model_name

    @property
    def supports_streaming(self) -> bool:
        """The Responses API streams."""
        return True

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask for one complete response."""
        mapper = _EventMapper(self._model_name)
        with self._map_errors(mapper):
            response = await self._create(messages, settings, params, stream=False)
        if not isinstance(response, Response):  # the SDK hands back bodies that are not JSON as they are
            raise self._bad_body(response)
        with self._map_errors(mapper):
            for _ in mapper.response(response):
                pass
        return mapper.model_response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Ask for one response, streamed as chunks ending with a `StreamDone`."""
        mapper = _EventMapper(self._model_name)
        with self._map_errors(mapper):
            stream = await self._create(messages, settings, params, stream=True)
            if not isinstance(stream, AsyncStream):
                raise self._bad_body(stream)
            mapper.request_id = stream.response.headers.get("x-request-id")
            mapper.started = True
            async with stream:
                async for event in stream:
                    for chunk in mapper.event(event):
                        yield chunk
            mapper.check_complete()
        yield mapper.done()

    async def _create(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
        *,
        stream: bool,
    ) -> Response | AsyncStream[ResponseStreamEvent]:
        s = settings or _NO_SETTINGS
        client = await self._clients._client()
        instructions, items = _map_messages(messages)
        # As in OpenAIChatModel: the input items and tool schemas are plain JSON, and the SDK's walk over its
        # TypedDicts would change nothing in them yet cost more CPU than the rest of the request, so they travel
        # in `extra_body`, which the SDK sends as it is.
        body: dict[str, object] = {"input": items}
        tools = self._tools(params)
        if tools:
            body["tools"] = tools
        return await client.responses.create(
            model=self._model_name,
            instructions=instructions if instructions is not None else omit,
            extra_body=body,
            tool_choice=_tool_choice(params),
            store=False,
            include=["reasoning.encrypted_content"] if self._encrypted_reasoning else omit,
            reasoning=self._reasoning,
            max_output_tokens=_given(s.max_tokens),
            temperature=_given(s.temperature),
            top_p=_given(s.top_p),
            timeout=s.timeout_s if s.timeout_s is not None else openai.NOT_GIVEN,
            stream=stream,
        )

    def count_tokens(self, messages: list[ModelMessage], *, tools: list[ToolDefinition] | None = None) -> int:
        """How many input tokens `messages` (and `tools`) take for this model, counted offline.

        Counted as for Chat Completions (see [`count_openai_tokens`][miniagent.models._tokens.count_openai_tokens]):
        the Responses API frames items a little differently, so treat the figure as a close estimate.
        """
        from ._tokens import count_openai_tokens

        return count_openai_tokens(self._model_name, messages, tools=tools or ())

    async def aclose(self) -> None:
        """Close the connection pools this model opened (not a `client` or `http_client` you passed in)."""
        await self._clients.aclose()

    # ---- helpers -----------------------------------------------------------------------------------------

    def _tools(self, params: ModelRequestParameters) -> list[FunctionToolParam]:
        # An agent passes the same parameters object to every request of every run: map its tools once.
        cached = self._tools_for
        if cached is not None and cached[0] is params:
            return cached[1]
        tools = [_map_tool(tool) for tool in params.all_tools]
        self._tools_for = (params, tools)
        return tools

    @contextmanager
    def _map_errors(self, mapper: _EventMapper) -> Iterator[None]:
        """The one place SDK errors and in-stream error events become miniagent's."""
        where = self._clients._where()
        subject = where[0].upper() + where[1:]
        try:
            yield
        except _StreamError as exc:
            self._raise_code_error(subject, exc.code, exc.message, exc.body, mapper.failure_id)
        except openai.APIStatusError as exc:
            body = exc.body
            code = body.get("code") if isinstance(body, dict) else None
            detail = body.get("message") if isinstance(body, dict) else None
            if not (isinstance(detail, str) and detail):
                detail = _describe_body(body) if isinstance(body, str) or body is None else exc.message
            detail = self._clients._redact(detail).rstrip(". ")
            status = exc.status_code
            cls = error_class_for(status, detail, code=code if isinstance(code, str) else None)
            message = f"{subject} answered HTTP {status}: {detail}. {_status_advice(status, _PROVIDER)}"
            request_id = exc.request_id or exc.response.headers.get("x-request-id")
            redacted = self._clients._redact_body(body)
            if cls is ModelRateLimited:
                raise ModelRateLimited(
                    message,
                    model_name=self.name,
                    status_code=status,
                    body=redacted,
                    provider=_PROVIDER,
                    request_id=request_id,
                    retry_after_s=parse_retry_after(exc.response.headers),
                    # An exhausted quota does not come back by waiting.
                    retryable=False if code == "insufficient_quota" else None,
                ) from exc
            raise cls(
                message,
                model_name=self.name,
                status_code=status,
                body=redacted,
                provider=_PROVIDER,
                request_id=request_id,
            ) from exc
        except openai.APITimeoutError as exc:
            raise ModelTimeout(
                f"{subject} did not answer in time. Raise `timeout_s` in `ModelSettings`, or retry later.",
                model_name=self.name,
                provider=_PROVIDER,
            ) from exc
        except openai.APIConnectionError as exc:
            detail = self._clients._redact(transport_detail(exc))
            if mapper.started:
                raise ModelAPIError(
                    f"The connection to {where} broke in the middle of the response stream: {detail}. "
                    "Retry the request.",
                    model_name=self.name,
                    provider=_PROVIDER,
                    request_id=mapper.failure_id,
                ) from exc
            if body_was_cut(exc):  # it connected and answered; the body broke off
                raise ModelAPIError(
                    f"The response from {where} was cut before it was complete: {detail}. Retry; if it keeps "
                    "failing, check the server's logs.",
                    model_name=self.name,
                    provider=_PROVIDER,
                    request_id=mapper.failure_id,
                ) from exc
            raise ModelAPIError(
                f"Could not connect to {where}: {detail}. Check the network, and that `base_url` "
                "(or OPENAI_BASE_URL) is the API root ending in '/v1'.",
                model_name=self.name,
                provider=_PROVIDER,
            ) from exc
        except openai.APIError as exc:  # an error object inside a stream, or a body the SDK cannot parse
            self._raise_code_error(subject, exc.code, exc.message, exc.body, mapper.failure_id)
        except json.JSONDecodeError as exc:  # a 200 whose JSON body is cut or garbled: the SDK lets it through
            raise ModelAPIError(
                f"{subject} answered with a body that is not valid JSON ({exc}). Retry the request; if it keeps "
                "failing, check the server's logs and any proxy in between.",
                model_name=self.name,
                provider=_PROVIDER,
                request_id=mapper.failure_id,
            ) from exc

    def _bad_body(self, got: object) -> ModelAPIError:
        where = self._clients._where()
        return ModelAPIError(
            f"{where[0].upper()}{where[1:]} answered with a body that is not a Responses API response "
            f"({_describe_body(got if isinstance(got, str) else type(got).__name__)}). Check that `base_url` is "
            "an API root that serves '/responses' (often ending in '/v1') and that no proxy or login page is in "
            "the way.",
            model_name=self.name,
            provider=_PROVIDER,
            retryable=False,
        )

    def _raise_code_error(
        self, subject: str, code: str | None, message: str, body: object, request_id: str | None
    ) -> NoReturn:
        detail = self._clients._redact(message or "the stream reported an error").rstrip(". ")
        status = _CODE_STATUS.get(code or "", 500)
        cls = error_class_for(status, detail, code=code)
        text = f"{subject} failed inside the response stream ({code or 'no code'}): {detail}. "
        text += "Retry the request." if status >= 429 else _status_advice(status, _PROVIDER)
        raise cls(
            text,
            model_name=self.name,
            status_code=status,
            body=self._clients._redact_body(body),
            provider=_PROVIDER,
            request_id=request_id,
            retryable=False if code == "insufficient_quota" else None,
        )


class _StreamError(Exception):
    """An error event (or a failed response) inside a stream; `_map_errors` turns it into ours."""

    def __init__(self, code: str | None, message: str, body: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.body = body


# ---- our messages as Responses input -------------------------------------------------------------------------


def _tool_choice(params: ModelRequestParameters) -> Literal["required"] | Omit:
    if not params.allow_text_output and params.all_tools:
        return "required"
    return omit


def _map_tool(tool: ToolDefinition) -> FunctionToolParam:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters_json_schema,
        "strict": False,
    }


def _user_content(part: UserPromptPart) -> str | ResponseInputMessageContentListParam:
    if not part.attachments:
        return part.content
    content: ResponseInputMessageContentListParam = []
    if part.content:
        content.append({"type": "input_text", "text": part.content})
    for attachment in part.attachments:
        if isinstance(attachment, ImageUrl):
            content.append({"type": "input_image", "image_url": attachment.url, "detail": "auto"})
        elif attachment.is_image:
            content.append({"type": "input_image", "image_url": attachment.data_url(), "detail": "auto"})
        elif attachment.media_type == "application/pdf":
            content.append({"type": "input_file", "file_data": attachment.data_url(), "filename": "attachment.pdf"})
        else:
            raise UserError(
                f"The Responses API takes images and PDF files, not {attachment.media_type!r}: "
                "send the content as text instead."
            )
    return content


def _map_messages(messages: list[ModelMessage]) -> tuple[str | None, list[ResponseInputItemParam]]:
    """Our messages as Responses `instructions` and input items.

    System prompts become `instructions` (joined). A response becomes its reasoning items (when they carry
    OpenAI's encrypted reasoning), an assistant message with its text, and one `function_call` item per tool call.
    Tool results and retry prompts for a tool call become `function_call_output` items.
    """
    system: list[str] = []
    items: list[ResponseInputItemParam] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    system.append(part.content)
                elif isinstance(part, UserPromptPart):
                    items.append({"role": "user", "content": _user_content(part)})
                elif isinstance(part, ToolReturnPart):
                    items.append(
                        {"type": "function_call_output", "call_id": part.tool_call_id, "output": part.content_text()}
                    )
                elif part.tool_call_id is not None:
                    items.append(
                        {"type": "function_call_output", "call_id": part.tool_call_id, "output": part.model_text()}
                    )
                else:
                    items.append({"role": "user", "content": part.model_text()})
        else:
            items.extend(_response_items(message))
    return ("\n\n".join(system) if system else None), items


def _response_items(message: ModelResponse) -> Iterator[ResponseInputItemParam]:
    signed = any(_is_openai_reasoning(p) for p in message.parts)
    if not signed:
        # A streamed response is assembled from chunks, which carry no signatures: its encrypted reasoning
        # travels in `provider_details` and goes back before the response's other items, where OpenAI put it.
        for stored in (message.provider_details or {}).get("reasoning") or ():
            yield _reasoning_item(stored.get("id"), stored.get("encrypted_content"), stored.get("summary") or [])
    texts: list[str] = []
    for part in message.parts:
        if isinstance(part, TextPart):
            texts.append(part.content)
            continue
        if texts:
            yield {"role": "assistant", "content": "".join(texts)}
            texts = []
        if isinstance(part, ThinkingPart):
            if _is_openai_reasoning(part):
                assert part.signature is not None
                reasoning_id, encrypted = _parse_signature(part.signature)
                yield _reasoning_item(reasoning_id, encrypted, [part.content] if part.content else [])
        else:
            yield {
                "type": "function_call",
                "call_id": part.tool_call_id,
                "name": part.tool_name,
                "arguments": part.args_json(),
            }
    if texts:
        yield {"role": "assistant", "content": "".join(texts)}


def _is_openai_reasoning(part: ModelResponsePart) -> bool:
    return isinstance(part, ThinkingPart) and part.provider == _PROVIDER and bool(part.signature)


def _signature(reasoning_id: str, encrypted: str) -> str:
    # Both are needed to send the item back: OpenAI checks the id and decrypts the content.
    return json.dumps({"id": reasoning_id, "encrypted_content": encrypted}, separators=(",", ":"))


def _parse_signature(signature: str) -> tuple[str | None, str]:
    try:
        data = json.loads(signature)
    except ValueError:
        return None, signature  # a bare encrypted blob
    if isinstance(data, dict) and isinstance(data.get("encrypted_content"), str):
        reasoning_id = data.get("id")
        return (reasoning_id if isinstance(reasoning_id, str) else None), data["encrypted_content"]
    return None, signature


def _reasoning_item(reasoning_id: object, encrypted: object, summary: list[str]) -> ResponseReasoningItemParam:
    item: dict[str, object] = {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text} for text in summary],
        "encrypted_content": encrypted if isinstance(encrypted, str) else None,
    }
    if isinstance(reasoning_id, str):  # the SDK's type requires it; a bare encrypted signature has none
        item["id"] = reasoning_id
    return cast(ResponseReasoningItemParam, item)


# ---- Responses output as our chunks ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One output item of the response, as a part: what has been emitted for it so far."""

    index: int
    kind: Literal["text", "thinking", "call"]
    content: list[str] = field(default_factory=list)
    name: str = ""
    call_id: str | None = None
    reasoning_id: str | None = None
    encrypted: str | None = None
    summaries: list[str] = field(default_factory=list)
    summary_index: int = -1


class _EventMapper:
    """Turns Responses output into stream chunks (sans-I/O); complete responses and streams share it.

    A complete response is replayed as the events a stream would have carried for it (each output item added,
    then done, then `response.completed`), so both paths build the same parts, usage and finish reason. Parts
    get indices in order of first appearance, one per output item.
    """

    __slots__ = ("_model", "_slots", "_final", "response_id", "request_id", "started", "_response_model")

    def __init__(self, model_name: str) -> None:
        self._model = model_name
        self._slots: dict[int, _Slot] = {}
        self._final: Response | None = None
        self._response_model: str | None = None
        self.response_id: str | None = None
        """The response's id, once known."""
        self.request_id: str | None = None
        """The `x-request-id` of a stream, once known."""
        self.started = False
        """Whether the stream is open (a broken connection then means a cut stream, not a refused one)."""

    @property
    def failure_id(self) -> str | None:
        """What an error should carry as its request id: the stream's `x-request-id`, else the response id."""
        return self.request_id or self.response_id

    # -- slots

    def _slot(self, output_index: int, kind: Literal["text", "thinking", "call"]) -> _Slot:
        slot = self._slots.get(output_index)
        if slot is None:
            slot = self._slots[output_index] = _Slot(len(self._slots), kind)
        return slot

    def _text(self, output_index: int, delta: str) -> Iterator[StreamChunk]:
        if delta:
            slot = self._slot(output_index, "text")
            slot.content.append(delta)
            yield TextChunk(slot.index, delta)

    def _thinking(self, output_index: int, summary_index: int | None, delta: str) -> Iterator[StreamChunk]:
        """Reasoning text: summary `summary_index` of the item, or raw reasoning (`None`)."""
        slot = self._slot(output_index, "thinking")
        separator = ""
        if summary_index is not None:
            if summary_index != slot.summary_index:
                slot.summary_index = summary_index
                slot.summaries.append("")
                # The summaries of one reasoning item become paragraphs of one thinking part.
                separator = "\n\n" if slot.content else ""
            slot.summaries[-1] += delta
        if delta:
            slot.content.append(separator + delta)
            yield ThinkingChunk(slot.index, separator + delta)

    def _args(self, output_index: int, delta: str) -> Iterator[StreamChunk]:
        slot = self._slot(output_index, "call")
        if delta:
            slot.content.append(delta)
            yield ToolCallChunk(slot.index, args_delta=delta)

    # -- events

    def event(self, event: ResponseStreamEvent) -> Iterator[StreamChunk]:
        """The chunks one streamed event carries (no `StreamDone`: call `done` after the last event).

        Raises:
            _StreamError: the event reports an error or a failed response.
        """
        if isinstance(event, ResponseTextDeltaEvent | ResponseRefusalDeltaEvent):
            yield from self._text(event.output_index, event.delta)
        elif isinstance(event, ResponseReasoningSummaryTextDeltaEvent):
            yield from self._thinking(event.output_index, event.summary_index, event.delta)
        elif isinstance(event, ResponseReasoningSummaryPartAddedEvent):
            self._slot(event.output_index, "thinking")
        elif isinstance(event, ResponseReasoningTextDeltaEvent):  # raw reasoning (gpt-oss on compatible servers)
            yield from self._thinking(event.output_index, None, event.delta)
        elif isinstance(event, ResponseFunctionCallArgumentsDeltaEvent):
            yield from self._args(event.output_index, event.delta)
        elif isinstance(event, ResponseFunctionCallArgumentsDoneEvent):
            if not self._slot(event.output_index, "call").content:  # no deltas came: the whole text at once
                yield from self._args(event.output_index, event.arguments)
        elif isinstance(event, ResponseOutputItemAddedEvent):
            yield from self._item_added(event.output_index, event.item)
        elif isinstance(event, ResponseOutputItemDoneEvent):
            yield from self._item_done(event.output_index, event.item)
        elif isinstance(event, ResponseCreatedEvent):
            self.response_id = event.response.id
        elif isinstance(event, ResponseCompletedEvent | ResponseIncompleteEvent):
            self._finish(event.response)
        elif isinstance(event, ResponseFailedEvent):
            self.response_id = event.response.id
            error = event.response.error
            raise _StreamError(
                error.code if error else None,
                error.message if error else "the response failed",
                error.model_dump(mode="json") if error else None,
            )
        elif isinstance(event, ResponseErrorEvent):
            raise _StreamError(event.code, event.message, event.model_dump(mode="json", exclude_none=True))

    def _item_added(self, output_index: int, item: object) -> Iterator[StreamChunk]:
        if isinstance(item, ResponseFunctionToolCall):
            slot = self._slot(output_index, "call")
            slot.name, slot.call_id = item.name, item.call_id or None
            yield ToolCallChunk(slot.index, tool_name=item.name, tool_call_id=slot.call_id)
            yield from self._args(output_index, item.arguments)
        elif isinstance(item, ResponseReasoningItem):
            self._slot(output_index, "thinking").reasoning_id = item.id

    def _item_done(self, output_index: int, item: object) -> Iterator[StreamChunk]:
        """Whatever of a finished item no delta carried (all of it, for a complete response)."""
        slot = self._slots.get(output_index)
        if isinstance(item, ResponseOutputMessage):
            if slot is None or not slot.content:
                for content in item.content:
                    text = content.text if isinstance(content, ResponseOutputText) else content.refusal
                    yield from self._text(output_index, text)
        elif isinstance(item, ResponseFunctionToolCall):
            if slot is None:
                yield from self._item_added(output_index, item)
            elif not slot.content:
                yield from self._args(output_index, item.arguments)
        elif isinstance(item, ResponseReasoningItem):
            slot = self._slot(output_index, "thinking")
            slot.reasoning_id = item.id
            slot.encrypted = item.encrypted_content or None
            if not slot.content:
                for i, summary in enumerate(item.summary):
                    yield from self._thinking(output_index, i, summary.text)
                if not item.summary:
                    for raw in item.content or ():
                        yield from self._thinking(output_index, None, raw.text)

    def _finish(self, response: Response) -> None:
        self._final = response
        self.response_id = response.id
        self._response_model = response.model or None

    def response(self, response: Response) -> Iterator[StreamChunk]:
        """The chunks of a complete response, ending with its `StreamDone`.

        Raises:
            _StreamError: the response failed.
        """
        self.response_id = response.id
        if response.status == "failed":
            error = response.error
            raise _StreamError(
                error.code if error else None,
                error.message if error else "the response failed",
                error.model_dump(mode="json") if error else None,
            )
        for output_index, item in enumerate(response.output):
            yield from self._item_added(output_index, item)
            yield from self._item_done(output_index, item)
        self._finish(response)
        yield self.done()

    def check_complete(self) -> None:
        """Raise if the stream ended before the response did (no `response.completed`).

        Raises:
            _StreamError: the stream ended early.
        """
        if self._final is None:
            raise _StreamError(
                "server_error",
                "the stream ended before the response was complete (no 'response.completed' event)",
                None,
            )

    # -- the end

    def done(self) -> StreamDone:
        """Usage and metadata of the response so far."""
        final = self._final
        details: dict[str, Any] = {}
        usage = Usage()
        finish: FinishReason | None = None
        if self.response_id:
            details["response_id"] = self.response_id
        if final is not None:
            details["status"] = final.status
            reason = final.incomplete_details.reason if final.incomplete_details else None
            if reason:
                details["incomplete_reason"] = reason
            if final.status == "incomplete":
                finish = _INCOMPLETE_REASONS.get(reason or "", "length")
            if final.usage is not None:
                u = final.usage
                # Servers that copy the API may leave the details out.
                cached = getattr(u.input_tokens_details, "cached_tokens", None)
                reasoning = getattr(u.output_tokens_details, "reasoning_tokens", None)
                usage = Usage(
                    input_tokens=u.input_tokens or 0,
                    output_tokens=u.output_tokens or 0,
                    cache_read_tokens=cached or 0,
                    reasoning_tokens=reasoning or 0,
                )
                if cached is not None:
                    details["cached_tokens"] = cached
                if reasoning is not None:
                    details["reasoning_tokens"] = reasoning
        reasoning_items = [
            {"id": s.reasoning_id, "encrypted_content": s.encrypted, "summary": s.summaries}
            for s in self._slots.values()
            if s.kind == "thinking" and s.encrypted
        ]
        if reasoning_items:
            details["reasoning"] = reasoning_items
        return StreamDone(
            usage=usage,
            model_name=self._response_model or self._model,
            finish_reason=finish,
            provider_details=details or None,
        )

    def model_response(self) -> ModelResponse:
        """The response built from every chunk so far, reasoning parts signed so they can be sent back."""
        done = self.done()
        parts: list[ModelResponsePart] = []
        for slot in sorted(self._slots.values(), key=lambda s: s.index):
            content = "".join(slot.content)
            if slot.kind == "text":
                if content:
                    parts.append(TextPart(content))
            elif slot.kind == "thinking":
                if slot.encrypted and slot.reasoning_id:
                    signature = _signature(slot.reasoning_id, slot.encrypted)
                    parts.append(ThinkingPart(content, signature=signature, provider=_PROVIDER))
                elif content:
                    parts.append(ThinkingPart(content, provider=_PROVIDER))
            else:
                parts.append(ToolCallPart(slot.name, content, slot.call_id or new_tool_call_id()))
        details = done.provider_details
        if details is not None and "reasoning" in details and any(_is_openai_reasoning(p) for p in parts):
            # The signed parts carry the encrypted reasoning; `provider_details` need not hold it twice.
            details = {k: v for k, v in details.items() if k != "reasoning"} or None
        has_calls = any(isinstance(p, ToolCallPart) for p in parts)
        return ModelResponse(
            parts,
            usage=done.usage,
            model_name=done.model_name,
            finish_reason=done.finish_reason or ("tool_call" if has_calls else "stop"),
            provider_details=details,
        )

"""Anthropic Messages API, on the official `anthropic` SDK.

Model string: `'anthropic:claude-sonnet-4-5'` (key from `ANTHROPIC_API_KEY`). This module imports the `anthropic`
SDK; `import miniagent` never imports this module.

How miniagent's messages map to the API:

- every system prompt part goes to the top-level `system` (joined by blank lines);
- consecutive messages of one role are merged (the API wants user and assistant turns to alternate), and the
  `tool_result` blocks of a user turn come before its text;
- a tool error or timeout, and a retry prompt that answers a call, is a `tool_result` with `is_error: true`; a
  fallback's answer (another tool, or the last good result with its age) is a usable one: `is_error: false`;
- thinking goes back only if Anthropic produced it (`provider == 'anthropic'`) with its signature;
- `usage.input_tokens` is the whole prompt: uncached input plus cache reads plus cache writes; the split is in
  `provider_details` (`cache_read_input_tokens`, `cache_creation_input_tokens`).

Streamed and complete responses carry the same parts: thinking signatures and redacted thinking travel on
`ThinkingChunk`s, so a streamed run with thinking and tools sends its reasoning back like a complete one.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import unquote_to_bytes, urlsplit

from ..errors import (
    ContentFiltered,
    ContextLengthExceeded,
    MissingCredentialError,
    ModelAPIError,
    ModelAuthError,
    ModelBadRequest,
    ModelHTTPError,
    ModelOverloaded,
    ModelRateLimited,
    ModelTimeout,
    OptionalDependencyError,
    UserError,
)
from ..messages import (
    BinaryContent,
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
)
from ._clients import LoopClients
from ._http import body_was_cut, error_class_for, parse_retry_after, transport_detail

try:
    import anthropic
    import httpx2
    from anthropic import AsyncAnthropic, AsyncStream, Omit, omit
    from anthropic.types import (
        AssistantMessageParam,
        ContentBlockParam,
        DocumentBlockParam,
        ImageBlockParam,
        InputJSONDelta,
        Message,
        RawContentBlockDeltaEvent,
        RawContentBlockStartEvent,
        RawMessageDeltaEvent,
        RawMessageStartEvent,
        RawMessageStopEvent,
        RawMessageStreamEvent,
        RedactedThinkingBlock,
        SignatureDelta,
        TextBlock,
        TextDelta,
        ThinkingBlock,
        ThinkingConfigParam,
        ThinkingDelta,
        ToolChoiceParam,
        ToolParam,
        ToolUseBlock,
        UserMessageParam,
    )
except ImportError as _exc:  # pragma: no cover (the extra is installed wherever tests run)
    raise OptionalDependencyError("`AnthropicModel`", "anthropic", missing=_exc.name) from _exc

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicModel", "Thinking"]

DEFAULT_MAX_TOKENS = 4096
"""The `max_tokens` sent when `ModelSettings.max_tokens` is unset: the Messages API requires one."""

Thinking: TypeAlias = "int | Literal['adaptive'] | None"
"""Extended thinking: a budget in tokens (at least 1024, below `max_tokens`), `'adaptive'`, or `None` (off)."""

_PROVIDER = "anthropic"

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_call",
    "refusal": "content_filter",
}

# The HTTP status each Anthropic error type comes with (https://docs.claude.com/en/api/errors): an `error` event
# inside a stream arrives on a 200 response, so its type is all that says what failed.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_CHARS_PER_TOKEN = 3.5
_TOKENS_PER_IMAGE = 1600
"""Anthropic bills an image at about width x height / 750 tokens, and resizes images above ~1.15 megapixels, so
about 1,600 tokens is the most one image costs. Offline the size is unknown; the estimate takes the maximum."""


class AnthropicModel(Model):
    """A Claude model served over Anthropic's Messages API.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.models.anthropic import AnthropicModel

        model = AnthropicModel("claude-sonnet-4-5", api_key="sk-ant-...", thinking=2048)
        agent = Agent(model=model, instructions="Be brief.")
        ```

    Each instance holds one HTTP connection pool (per event loop), shared by every request it makes. The SDK's
    own retries are off (`max_retries=0`): a failed request raises at once, with `retryable` set on the error, and
    retrying is left to the caller. Every request has a deadline: `ModelSettings.timeout_s`, else 10 minutes.

    Args:
        model_name: The model to ask for, e.g. `'claude-sonnet-4-5'`.
        api_key: The key; `None` reads `ANTHROPIC_API_KEY`.
        base_url: The API root, e.g. a proxy's; `None` for Anthropic's (or `ANTHROPIC_BASE_URL`).
        thinking: Extended thinking: a token budget (at least 1024, below `max_tokens`), `'adaptive'` (the model
            decides), or `None` to leave it off.
        client: A configured `anthropic.AsyncAnthropic` to use as it is (it is not closed by `aclose`).
        http_client: An `httpx2.AsyncClient` for the SDK to use (it is not closed by `aclose`).

    Raises:
        MissingCredentialError: no key is given and `ANTHROPIC_API_KEY` is not set.
        UserError: `model_name` is empty or `thinking` is not a budget of at least 1024 or `'adaptive'`.
    """

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        thinking: Thinking = None,
        client: AsyncAnthropic | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if not model_name or not model_name.strip():
            raise UserError("`model_name` must name a model, e.g. 'claude-sonnet-4-5'.")
        if thinking is not None and thinking != "adaptive" and (isinstance(thinking, bool) or thinking < 1024):
            raise UserError(
                f"`thinking` must be a token budget of at least 1024 or 'adaptive', got {thinking!r}; "
                "pass e.g. `thinking=2048`, or `None` to turn thinking off."
            )
        self._model_name = model_name.strip()
        self._base_url = base_url
        self._thinking: ThinkingConfigParam | None = (
            None
            if thinking is None
            else {"type": "adaptive"}
            if thinking == "adaptive"
            else {"type": "enabled", "budget_tokens": int(thinking)}
        )
        if client is None:
            api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
            if not api_key:
                raise MissingCredentialError("Anthropic", "ANTHROPIC_API_KEY")
            if http_client is not None:  # the caller's pool: used in whatever loop the caller runs it, never closed
                client = self._new_client(api_key, http_client)
        self._given_client = client
        self._api_key = client.api_key if client is not None else api_key
        # Our own SDK clients, one per event loop: pooled connections belong to the loop that opened them, and
        # each `run_sync` runs in a fresh loop. Created on first request, since an HTTP client costs tens of ms.
        self._clients: LoopClients[AsyncAnthropic] = LoopClients()
        self._tools_for: tuple[ModelRequestParameters, list[ToolParam]] | None = None

    @classmethod
    def from_spec(cls, name: str, settings: Settings | None = None) -> AnthropicModel:
        """The model a registry string names after `anthropic:`.

        Args:
            name: The model, e.g. `'claude-sonnet-4-5'` from `'anthropic:claude-sonnet-4-5'`.
            settings: miniagent's settings (unused: the key comes from the environment).

        Raises:
            UserError: `name` is empty; the message shows the expected form.
            MissingCredentialError: `ANTHROPIC_API_KEY` is not set.
        """
        name = name.strip()
        if not name:
            raise UserError("'anthropic:' needs a model name after the colon, e.g. 'anthropic:claude-sonnet-4-5'.")
        return cls(name)

    @property
    def name(self) -> str:
        """`'anthropic:<model>'`."""
        return f"{_PROVIDER}:{self._model_name}"

    @property
    def upstream(self) -> str:
        """The name and the server's URL (credentials removed): one circuit breaker per server and model."""
        return endpoint_upstream(self.name, self._base_url)

    @property
    def model_name(self) -> str:
        """The model asked for in each request."""
        return self._model_name

    @property
    def supports_streaming(self) -> bool:
        """The Messages API streams."""
        return True

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask for one complete response."""
        with self._map_errors(streamed=False):
            message = await self._create(messages, settings, params, stream=False)
        if not isinstance(message, Message):  # a 200 that is not the API's (a proxy's login page): not retried
            raise ModelAPIError(
                f"{self._subject()} answered with something that is not a message ({type(message).__name__}). "
                "Check that the base URL points at the Messages API.",
                model_name=self.name,
                provider=_PROVIDER,
                retryable=False,
            )
        mapper = _EventMapper(message._request_id)
        for _ in mapper.message(message):
            pass
        return mapper.response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Ask for one response, streamed as chunks ending with a `StreamDone` (thinking signatures included)."""
        with self._map_errors(streamed=True):
            stream = await self._create(messages, settings, params, stream=True)
            assert isinstance(stream, AsyncStream)  # what `stream=True` returns
            if "event-stream" not in stream.response.headers.get("content-type", "event-stream"):
                # A 200 that is not an event stream (a proxy's login page): not the API, and not worth retrying.
                await stream.close()
                raise ModelAPIError(
                    f"{self._subject()} answered with a body that is not an event stream "
                    f"({stream.response.headers.get('content-type')}). Check that the base URL points at the "
                    "Messages API and that no proxy or login page is in the way.",
                    model_name=self.name,
                    provider=_PROVIDER,
                    retryable=False,
                )
            mapper = _EventMapper(stream.response.headers.get("request-id"))
            async with stream:
                async for event in stream:
                    for chunk in mapper.event(event):
                        yield chunk
        if not mapper.complete:
            raise ModelAPIError(
                f"{self._subject()} ended the stream before its `message_stop` event: the response is incomplete. "
                "Retry the request; if it keeps happening, check any proxy between you and the API.",
                model_name=self.name,
                provider=_PROVIDER,
                request_id=mapper.request_id,
                retryable=True,
            )
        yield mapper.done()

    async def _create(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
        *,
        stream: bool,
    ) -> Message | AsyncStream[RawMessageStreamEvent]:
        s = settings or _NO_SETTINGS
        max_tokens = s.max_tokens if s.max_tokens is not None else DEFAULT_MAX_TOKENS
        thinking = self._thinking
        if thinking is not None and thinking["type"] == "enabled" and thinking["budget_tokens"] >= max_tokens:
            raise UserError(
                f"The thinking budget ({thinking['budget_tokens']} tokens) must be below `max_tokens` "
                f"({max_tokens}): raise `max_tokens` in `ModelSettings` or lower `thinking`."
            )
        system, wire_messages = _map_messages(messages)
        tools = self._tools(params)
        # The SDK has no parameters for the sampling settings; the API still reads them from the body.
        extra: dict[str, object] = {}
        if s.temperature is not None:
            extra["temperature"] = s.temperature
        if s.top_p is not None:
            extra["top_p"] = s.top_p
        client = await self._client()
        return await client.messages.create(
            model=self._model_name,
            max_tokens=max_tokens,
            messages=wire_messages,
            system=system if system is not None else omit,
            tools=tools if tools else omit,
            tool_choice=self._tool_choice(params, tools),
            thinking=thinking if thinking is not None else omit,
            stream=stream,
            extra_body=extra or None,
            # Always explicit: every request gets a deadline, and the SDK then skips its refusal of non-streamed
            # requests whose `max_tokens` could take over 10 minutes.
            timeout=s.timeout_s if s.timeout_s is not None else anthropic.DEFAULT_TIMEOUT,
        )

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        """An offline estimate of the input tokens `messages` take: no request is made.

        Anthropic publishes no tokenizer for its current models (its exact count is an API call), so this
        estimates: each part's text (user and system text, tool results, retry prompts, response text, thinking,
        tool names plus their JSON arguments) counts as its character count divided by 3.5, rounded up; each image
        or document attachment counts 1,600 tokens (about the most one resized image costs). Expect it to be
        within about 20% for English prose and code; use it to fit a conversation in the context window, not to
        bill.
        """
        total = 0
        for message in messages:
            if isinstance(message, ModelRequest):
                for part in message.parts:
                    if isinstance(part, SystemPromptPart):
                        total += _estimate(part.content)
                    elif isinstance(part, UserPromptPart):
                        total += _estimate(part.content) + _TOKENS_PER_IMAGE * len(part.attachments)
                    elif isinstance(part, ToolReturnPart):
                        total += _estimate(part.content_text())
                    else:
                        total += _estimate(part.model_text())
            else:
                for rpart in message.parts:
                    if isinstance(rpart, ToolCallPart):
                        total += _estimate(rpart.tool_name + rpart.args_json())
                    else:
                        total += _estimate(rpart.content)
        return total

    async def aclose(self) -> None:
        """Close the connection pools this model opened (not a `client` or `http_client` you passed in).

        A model used with `run_sync` needs no `aclose`: each pool is closed as its event loop ends.
        """
        await self._clients.aclose()

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _client(self) -> AsyncAnthropic:
        if self._given_client is not None:
            return self._given_client
        return await self._clients.get(lambda: self._new_client(self._api_key, anthropic.DefaultAsyncHttpxClient()))

    def _new_client(self, api_key: str | None, http_client: httpx2.AsyncClient) -> AsyncAnthropic:
        # miniagent owns retrying, so the SDK's are off and each attempt is counted once.
        return AsyncAnthropic(api_key=api_key, base_url=self._base_url, http_client=http_client, max_retries=0)

    def _tools(self, params: ModelRequestParameters) -> list[ToolParam]:
        # An agent passes the same parameters object to every request of every run: map its tools once.
        cached = self._tools_for
        if cached is not None and cached[0] is params:
            return cached[1]
        tools = [_map_tool(tool) for tool in params.all_tools]
        self._tools_for = (params, tools)
        return tools

    def _tool_choice(self, params: ModelRequestParameters, tools: list[ToolParam]) -> ToolChoiceParam | Omit:
        if not tools:
            return omit
        # Anthropic refuses a forced tool choice while thinking is on; the agent's output retry covers a text answer.
        if not params.allow_text_output and self._thinking is None:
            return {"type": "any"}
        return {"type": "auto"}

    @contextmanager
    def _map_errors(self, *, streamed: bool) -> Iterator[None]:
        """The one place SDK and transport errors become miniagent's (`streamed`: of a streamed request)."""
        try:
            yield
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except anthropic.APITimeoutError as exc:
            raise self._timeout_error() from exc
        except anthropic.APIConnectionError as exc:
            detail = self._redact(transport_detail(exc))
            if body_was_cut(exc):  # it connected and answered; the body broke off
                raise ModelAPIError(
                    f"The response from {self._where()} was cut before it was complete: {detail}. Retry; if it "
                    "keeps failing, check the server's logs.",
                    model_name=self.name,
                    provider=_PROVIDER,
                    retryable=True,
                ) from exc
            raise ModelAPIError(
                f"Could not connect to {self._where()}: {detail}. Check that the network is up and that `base_url` "
                "(or ANTHROPIC_BASE_URL) is right.",
                model_name=self.name,
                provider=_PROVIDER,
                retryable=True,
            ) from exc
        except anthropic.APIError as exc:  # a response the SDK cannot use
            raise ModelAPIError(
                f"{self._subject()} sent a response that could not be used: {self._redact(exc.message)}. Retry the "
                "request; if it keeps failing, check that the base URL points at the Messages API.",
                model_name=self.name,
                provider=_PROVIDER,
                retryable=True,
            ) from exc
        # The SDK does not wrap what goes wrong while a stream is read: the transport's errors arrive as they are.
        except httpx2.TimeoutException as exc:
            raise self._timeout_error() from exc
        except httpx2.TransportError as exc:
            raise ModelAPIError(
                f"The connection to {self._where()} broke off in the middle of the response "
                f"({type(exc).__name__}: {self._redact(transport_detail(exc))}). Retry the request.",
                model_name=self.name,
                provider=_PROVIDER,
                retryable=True,
            ) from exc
        except json.JSONDecodeError as exc:
            what = "streamed an event that is not JSON" if streamed else "answered with a body that is not valid JSON"
            raise ModelAPIError(
                f"{self._subject()} {what} ({exc}). Retry the request; if it keeps failing, check any proxy between "
                "you and the API.",
                model_name=self.name,
                provider=_PROVIDER,
                retryable=True,
            ) from exc

    def _timeout_error(self) -> ModelTimeout:
        return ModelTimeout(
            f"{self._subject()} did not answer in time. Raise `timeout_s` in `ModelSettings`, or retry later.",
            model_name=self.name,
            provider=_PROVIDER,
            retryable=True,
        )

    def _status_error(self, exc: anthropic.APIStatusError) -> ModelHTTPError:
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else None
        error_type = error.get("type") if isinstance(error, dict) else None
        error_type = error_type if isinstance(error_type, str) else None
        detail = error.get("message") if isinstance(error, dict) else None
        if not isinstance(detail, str) or not detail:
            detail = _describe_body(exc.response.headers.get("content-type", ""), body, exc.message)
        detail = self._redact(detail).rstrip(". ")
        status = exc.status_code
        if status < 400:  # an `error` event inside a stream that began with HTTP 200
            status = _ERROR_STATUS.get(error_type or "", 500)
            what = f"{self._subject()} failed in the middle of its stream ({error_type or 'error'} event)"
        else:
            what = f"{self._subject()} answered HTTP {status}" + (f" ({error_type})" if error_type else "")
        request_id = exc.request_id
        if request_id is None and isinstance(body, dict) and isinstance(body.get("request_id"), str):
            request_id = body["request_id"]
        cls = error_class_for(status, detail, code=error_type)
        retry_after = parse_retry_after(exc.response.headers)
        message = f"{what}: {detail}. {_advice(cls, status, retry_after)}"
        if issubclass(cls, ModelRateLimited):
            return cls(
                message,
                model_name=self.name,
                status_code=status,
                body=self._redact_body(body),
                provider=_PROVIDER,
                request_id=request_id,
                retry_after_s=retry_after,
            )
        return cls(
            message,
            model_name=self.name,
            status_code=status,
            body=self._redact_body(body),
            provider=_PROVIDER,
            request_id=request_id,
        )

    def _where(self) -> str:
        if self._base_url is None:
            return f"the Anthropic API (model {self._model_name!r})"
        parts = urlsplit(self._base_url)
        # Never echo credentials embedded in the URL.
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"the server at {parts.scheme}://{netloc}{parts.path} (model {self._model_name!r})"

    def _subject(self) -> str:
        where = self._where()
        return where[0].upper() + where[1:]

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEY_PATTERN.sub("sk-ant-***", text)

    def _redact_body(self, body: object) -> object:
        if isinstance(body, str):
            return self._redact(body)
        if isinstance(body, dict):
            return {key: self._redact_body(value) for key, value in body.items()}
        if isinstance(body, list):
            return [self._redact_body(value) for value in body]
        return body


_KEY_PATTERN = re.compile(r"sk-ant-[A-Za-z0-9_*\-]{6,}")
"""Anthropic keys (`sk-ant-api03-...`), also partly masked ones."""

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")

_NO_SETTINGS = ModelSettings()


def _estimate(text: str) -> int:
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


def _describe_body(content_type: str, body: object, fallback: str) -> str:
    """A short account of an error body that is not Anthropic's JSON error (an HTML page from a proxy, text...)."""
    if isinstance(body, str) and body.strip():
        text = _SPACE.sub(" ", _TAG.sub(" ", body)).strip()
        kind = content_type.split(";")[0].strip() or "unknown type"
        snippet = text[:200] + ("..." if len(text) > 200 else "")
        return f"a body that is not Anthropic's JSON error ({kind}): {snippet!r}"
    if body is not None and not isinstance(body, str):
        return f"an unexpected error body: {json.dumps(body, default=str)[:200]}"
    return fallback


def _advice(cls: type[ModelHTTPError], status: int, retry_after: float | None) -> str:
    if issubclass(cls, ModelRateLimited):
        wait = f"wait {retry_after:g} s (the server's Retry-After)" if retry_after is not None else "wait"
        return f"The rate limit or quota is exhausted: {wait} and retry, or lower the request rate."
    if issubclass(cls, ModelOverloaded):
        return "Anthropic is overloaded: retry after a pause."
    if issubclass(cls, ModelAuthError):
        return "Check the key in ANTHROPIC_API_KEY (or `api_key=`) and its access to the model."
    if issubclass(cls, ContextLengthExceeded):
        return "Shorten the conversation or lower `max_tokens`."
    if issubclass(cls, ContentFiltered):
        return "Anthropic refused the content; rephrase the request."
    if issubclass(cls, ModelBadRequest):
        if status == 404:
            return "Check the model name and the base URL."
        return "Check that the model supports the settings used (max_tokens, thinking, tools, images)."
    if status >= 500:
        return "The server failed; retry later."
    return "The server rejected the request."


def _map_tool(tool: ToolDefinition) -> ToolParam:
    return {"name": tool.name, "description": tool.description, "input_schema": tool.parameters_json_schema}


def _map_messages(messages: list[ModelMessage]) -> tuple[str | None, list[UserMessageParam | AssistantMessageParam]]:
    """Our messages as the Messages API's `system` text and `messages`.

    Every system prompt part, wherever it is, goes to `system` (joined by blank lines). Requests become user
    messages and responses assistant messages; consecutive messages of one role are merged, as Anthropic requires
    alternating roles, and in each user message the `tool_result` blocks come first, as Anthropic requires. Thinking
    parts are sent back only when Anthropic produced them and they carry a signature.
    """
    system: list[str] = []
    turns: list[tuple[Literal["user", "assistant"], list[ContentBlockParam]]] = []
    for message in messages:
        blocks: list[ContentBlockParam] = []
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    system.append(part.content)
                elif isinstance(part, UserPromptPart):
                    if part.content or not part.attachments:
                        blocks.append({"type": "text", "text": part.content})
                    blocks.extend(_attachment_block(a) for a in part.attachments)
                elif isinstance(part, ToolReturnPart):
                    blocks.append(
                        {
                            "type": "tool_result",
                            "tool_use_id": part.tool_call_id,
                            "content": part.content_text(),
                            "is_error": part.outcome in ("error", "timeout"),
                        }
                    )
                elif part.tool_call_id is not None:
                    blocks.append(
                        {
                            "type": "tool_result",
                            "tool_use_id": part.tool_call_id,
                            "content": part.model_text(),
                            "is_error": True,
                        }
                    )
                else:
                    blocks.append({"type": "text", "text": part.model_text()})
            role: Literal["user", "assistant"] = "user"
        else:
            blocks = _response_blocks(message)
            role = "assistant"
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    out: list[UserMessageParam | AssistantMessageParam] = []
    for role, blocks in turns:
        if role == "user":
            blocks.sort(key=lambda block: block["type"] != "tool_result")  # stable: order kept within each group
            out.append({"role": "user", "content": blocks})
        else:
            out.append({"role": "assistant", "content": blocks})
    return ("\n\n".join(system) if system else None), out


def _response_blocks(message: ModelResponse) -> list[ContentBlockParam]:
    redacted = set((message.provider_details or {}).get("redacted_thinking", ()))
    blocks: list[ContentBlockParam] = []
    for i, part in enumerate(message.parts):
        if isinstance(part, TextPart):
            if part.content:  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": part.content})
        elif isinstance(part, ThinkingPart):
            if part.provider != _PROVIDER or not part.signature:
                continue  # another provider's reasoning, or unsigned: Anthropic would reject it
            if i in redacted:
                blocks.append({"type": "redacted_thinking", "data": part.signature})
            else:
                blocks.append({"type": "thinking", "thinking": part.content, "signature": part.signature})
        else:
            blocks.append({"type": "tool_use", "id": part.tool_call_id, "name": part.tool_name, "input": _args(part)})
    return blocks


def _args(part: ToolCallPart) -> dict[str, Any]:
    try:
        return part.args_dict()
    except ValueError:
        # Arguments the model produced that are not a JSON object: sent back as they are, so the history stays
        # faithful (the agent has already answered the call with a retry prompt).
        return {"_raw_arguments": part.args if isinstance(part.args, str) else str(part.args)}


def _attachment_block(attachment: ImageUrl | BinaryContent) -> ImageBlockParam | DocumentBlockParam:
    if isinstance(attachment, BinaryContent):
        return _bytes_block(attachment.media_type, base64.b64encode(attachment.data).decode())
    url = attachment.url
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url)
        return _bytes_block(media_type, data)
    if urlsplit(url).path.lower().endswith(".pdf"):
        return {"type": "document", "source": {"type": "url", "url": url}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _bytes_block(media_type: str, data: str) -> ImageBlockParam | DocumentBlockParam:
    media_type = media_type.lower()
    if media_type == "image/jpeg":
        return {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": data}}
    if media_type == "image/png":
        return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
    if media_type == "image/gif":
        return {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": data}}
    if media_type == "image/webp":
        return {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": data}}
    if media_type == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}
    raise UserError(
        f"Anthropic accepts images as {', '.join(sorted(_IMAGE_TYPES))} and documents as application/pdf, "
        f"not {media_type!r}: convert the attachment to one of those."
    )


def _parse_data_url(url: str) -> tuple[str, str]:
    """The media type and base64 data of a `data:` URL."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise UserError("An image `data:` URL needs a ',' before its data, as in 'data:image/png;base64,iVBOR...'.")
    media_type, *params = header.split(";")
    if "base64" in params:
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UserError(f"The image `data:` URL holds invalid base64 ({exc}); encode the bytes again.") from exc
        return media_type or "text/plain", payload
    return media_type or "text/plain", base64.b64encode(unquote_to_bytes(payload)).decode()


@dataclass(slots=True)
class _Block:
    kind: Literal["text", "thinking", "redacted", "tool", "other"]
    text: list[str] = field(default_factory=list)
    signature: str | None = None
    tool_name: str = ""
    tool_call_id: str = ""


class _EventMapper:
    """Turns Messages API output into stream chunks and a response (sans-I/O); complete messages and streams share it.

    A complete message is fed as the stream that would have carried it (each block's start holds its whole
    content), so both paths build identical parts, usage and details. A part's index is its content block's index.
    Server-tool blocks (web search, code execution...) are skipped: miniagent sends no server tools.
    """

    __slots__ = ("request_id", "complete", "_blocks", "_id", "_model", "_usage", "_stop_reason", "_stop_sequence")

    def __init__(self, request_id: str | None) -> None:
        self.request_id = request_id
        """The `request-id` of the HTTP response."""
        self.complete = False
        """Whether the message has ended (`message_stop`, or a complete message)."""
        self._blocks: dict[int, _Block] = {}
        self._id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, int] = {}
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def message(self, message: Message) -> Iterator[StreamChunk]:
        """The chunks of a complete message (no `StreamDone`: call `response` or `done`)."""
        self._start(message.id, message.model, message.usage)
        for index, block in enumerate(message.content):
            yield from self._block_start(index, block)
        self._stop_reason = message.stop_reason
        self._stop_sequence = message.stop_sequence
        self.complete = True

    def event(self, event: RawMessageStreamEvent) -> Iterator[StreamChunk]:
        """The chunks one streamed event carries (no `StreamDone`: call `done` after the last event)."""
        if isinstance(event, RawContentBlockDeltaEvent):
            yield from self._delta(event)
        elif isinstance(event, RawContentBlockStartEvent):
            yield from self._block_start(event.index, event.content_block)
        elif isinstance(event, RawMessageStartEvent):
            self._start(event.message.id, event.message.model, event.message.usage)
        elif isinstance(event, RawMessageDeltaEvent):
            self._stop_reason = event.delta.stop_reason or self._stop_reason
            self._stop_sequence = event.delta.stop_sequence or self._stop_sequence
            # `message_delta` usage is cumulative: its counts replace those of `message_start`.
            self._add_usage(event.usage)
        elif isinstance(event, RawMessageStopEvent):
            self.complete = True

    def _start(self, message_id: str, model: str, usage: object) -> None:
        self._id = message_id or None
        self._model = model or None
        self._add_usage(usage)

    def _add_usage(self, usage: object) -> None:
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            value = getattr(usage, key, None)
            if isinstance(value, int):
                self._usage[key] = value

    def _block_start(self, index: int, block: object) -> Iterator[StreamChunk]:
        if isinstance(block, TextBlock):
            self._blocks[index] = _Block("text")
            if block.text:
                self._blocks[index].text.append(block.text)
                yield TextChunk(index, block.text)
        elif isinstance(block, ThinkingBlock):
            self._blocks[index] = _Block("thinking", signature=block.signature or None)
            if block.thinking:
                self._blocks[index].text.append(block.thinking)
            if block.thinking or block.signature:
                yield ThinkingChunk(index, block.thinking, signature=block.signature or None, provider=_PROVIDER)
        elif isinstance(block, RedactedThinkingBlock):
            self._blocks[index] = _Block("redacted", signature=block.data)
            yield ThinkingChunk(index, "", signature=block.data, provider=_PROVIDER)
        elif isinstance(block, ToolUseBlock):
            args = json.dumps(block.input, ensure_ascii=False) if block.input else ""
            self._blocks[index] = _Block("tool", [args] if args else [], tool_name=block.name, tool_call_id=block.id)
            yield ToolCallChunk(index, tool_name=block.name, tool_call_id=block.id, args_delta=args)
        else:
            self._blocks[index] = _Block("other")

    def _delta(self, event: RawContentBlockDeltaEvent) -> Iterator[StreamChunk]:
        index, delta = event.index, event.delta
        block = self._blocks.get(index)
        if isinstance(delta, TextDelta):
            if block is None:
                block = self._blocks[index] = _Block("text")
            if block.kind == "text" and delta.text:
                block.text.append(delta.text)
                yield TextChunk(index, delta.text)
        elif isinstance(delta, ThinkingDelta):
            if block is None:
                block = self._blocks[index] = _Block("thinking")
            if block.kind == "thinking" and delta.thinking:
                block.text.append(delta.thinking)
                yield ThinkingChunk(index, delta.thinking, provider=_PROVIDER)
        elif isinstance(delta, SignatureDelta):
            if block is not None and block.kind == "thinking":
                block.signature = (block.signature or "") + delta.signature
                yield ThinkingChunk(index, "", signature=delta.signature, provider=_PROVIDER)
        elif isinstance(delta, InputJSONDelta) and block is not None and block.kind == "tool" and delta.partial_json:
            block.text.append(delta.partial_json)
            yield ToolCallChunk(index, args_delta=delta.partial_json)
        # Citations deltas, and argument deltas of server-tool blocks, carry nothing miniagent keeps.

    def _details(self, redacted: list[int]) -> dict[str, Any]:
        details: dict[str, Any] = {}
        if self._id:
            details["response_id"] = self._id
        if self.request_id:
            details["request_id"] = self.request_id
        if self._stop_reason:
            details["stop_reason"] = self._stop_reason
        if self._stop_sequence:
            details["stop_sequence"] = self._stop_sequence
        for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
            if key in self._usage:
                details[key] = self._usage[key]
        if redacted:
            details["redacted_thinking"] = redacted
        return details

    def _usage_total(self) -> Usage:
        # Anthropic's `input_tokens` counts only the tokens after the last cache breakpoint; the prompt's size is
        # that plus the tokens read from and written to the cache. `input_tokens` here is the whole prompt, as for
        # every other provider; the cache split is in `provider_details`.
        u = self._usage
        prompt = (
            u.get("input_tokens", 0) + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0)
        )
        return Usage(
            input_tokens=prompt,
            output_tokens=u.get("output_tokens", 0),
            cache_read_tokens=u.get("cache_read_input_tokens", 0),
        )

    def _finish(self, has_calls: bool) -> FinishReason:
        if self._stop_reason in _STOP_REASONS:
            return _STOP_REASONS[self._stop_reason]
        return "tool_call" if has_calls else "stop"

    def done(self) -> StreamDone:
        """Usage and metadata of the response so far."""
        # The chunks carry thinking signatures and redacted blocks, so the assembled response has the parts that
        # `response()` would build; count their positions the same way without building them (this runs per stream).
        redacted: list[int] = []
        position = 0
        has_calls = False
        for index in sorted(self._blocks):
            block = self._blocks[index]
            if block.kind == "redacted":
                redacted.append(position)
            elif block.kind == "tool":
                has_calls = True
            elif not (block.text or (block.kind == "thinking" and block.signature)) or block.kind == "other":
                continue
            position += 1
        return StreamDone(
            usage=self._usage_total(),
            model_name=self._model,
            finish_reason=self._finish(has_calls),
            provider_details=self._details(redacted) or None,
        )

    def response(self) -> ModelResponse:
        """The complete response, thinking signatures included."""
        parts: list[ModelResponsePart] = []
        redacted: list[int] = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            text = "".join(block.text)
            if block.kind == "text" and text:
                parts.append(TextPart(text))
            elif block.kind == "thinking" and (text or block.signature):
                parts.append(ThinkingPart(text, signature=block.signature, provider=_PROVIDER))
            elif block.kind == "redacted":
                redacted.append(len(parts))
                parts.append(ThinkingPart("", signature=block.signature, provider=_PROVIDER))
            elif block.kind == "tool":
                parts.append(ToolCallPart(block.tool_name, text, block.tool_call_id))
        has_calls = any(isinstance(p, ToolCallPart) for p in parts)
        return ModelResponse(
            parts,
            usage=self._usage_total(),
            model_name=self._model,
            finish_reason=self._finish(has_calls),
            provider_details=self._details(redacted) or None,
        )

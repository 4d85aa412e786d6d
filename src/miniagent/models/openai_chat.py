"""OpenAI Chat Completions, and every server that speaks it (vLLM, llama.cpp's server, Ollama, LM Studio...).

Model strings: `'openai:gpt-4o-mini'` (key from `OPENAI_API_KEY`) and `'openai-compatible:http://host:8000/v1#model'`
(key optional). This module imports the `openai` SDK; `import miniagent` never imports this module.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

from ..errors import MissingCredentialError, ModelAPIError, ModelHTTPError, OptionalDependencyError, UserError
from ..messages import (
    FinishReason,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ..usage import Usage
from ._base import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
    ToolDefinition,
)

try:
    import openai
    from openai import AsyncOpenAI, AsyncStream, Omit, omit
    from openai.types import CompletionUsage
    from openai.types.chat import (
        ChatCompletion,
        ChatCompletionAssistantMessageParam,
        ChatCompletionChunk,
        ChatCompletionMessageParam,
        ChatCompletionMessageToolCallParam,
        ChatCompletionToolParam,
    )
except ImportError as _exc:  # pragma: no cover (the extra is installed wherever tests run)
    raise OptionalDependencyError("`OpenAIChatModel`", "openai", missing=_exc.name) from _exc

if TYPE_CHECKING:
    import httpx2

    from ..settings import Settings

__all__ = ["OpenAIChatModel", "Provider"]

Provider: TypeAlias = Literal["openai", "openai-compatible"]
"""`openai` for api.openai.com; `openai-compatible` for any other server speaking Chat Completions."""

_PLACEHOLDER_KEY = "not-needed"
"""Sent to compatible servers when no key is configured: the SDK needs some key, most local servers ignore it."""

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "content_filter": "content_filter",
}

_T = TypeVar("_T")


class OpenAIChatModel(Model):
    """A model served over the OpenAI Chat Completions API.

    Example:
        ```python
        from miniagent import Agent, OpenAIChatModel

        model = OpenAIChatModel("qwen2.5:7b", base_url="http://localhost:11434/v1", provider="openai-compatible")
        agent = Agent(model=model, instructions="Be brief.")
        ```

    Each instance holds one HTTP connection pool (per event loop), shared by every request it makes. The SDK's
    own retries are off (`max_retries=0`): a failed request raises at once, and retrying is left to the caller.

    Args:
        model_name: The model to ask for, e.g. `'gpt-4o-mini'`.
        base_url: The API root, e.g. `'http://localhost:8000/v1'`; `None` for OpenAI's (or `OPENAI_BASE_URL`).
        api_key: The key; `None` reads `OPENAI_API_KEY`. Compatible servers get a placeholder when neither is set.
        client: A configured `openai.AsyncOpenAI` to use as it is (it is not closed by `aclose`).
        http_client: An `httpx2.AsyncClient` for the SDK to use (it is not closed by `aclose`).
        provider: `'openai'` or `'openai-compatible'`; it decides the model's name prefix, whether a key is
            required and whether the token cap is sent as `max_completion_tokens` or `max_tokens`.

    Raises:
        MissingCredentialError: `provider` is `'openai'` and no key is given or set.
    """

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncOpenAI | None = None,
        http_client: httpx2.AsyncClient | None = None,
        provider: Provider = "openai",
    ) -> None:
        if provider not in ("openai", "openai-compatible"):
            raise UserError(f"`provider` must be 'openai' or 'openai-compatible', got {provider!r}.")
        if not model_name:
            raise UserError("`model_name` must name a model, e.g. 'gpt-4o-mini'.")
        self._model_name = model_name
        self._provider: Provider = provider
        self._base_url = base_url
        if client is None:
            api_key = api_key or os.environ.get("OPENAI_API_KEY")
            if not api_key:
                if provider == "openai":
                    raise MissingCredentialError("OpenAI", "OPENAI_API_KEY")
                api_key = _PLACEHOLDER_KEY
            if http_client is not None:  # the caller's pool: used in whatever loop the caller runs it, never closed
                client = self._new_client(api_key, http_client)
        self._given_client = client
        self._api_key = client.api_key if client is not None else api_key
        # Our own SDK clients, one per event loop: pooled connections belong to the loop that opened them, and
        # each `run_sync` runs in a fresh loop. Created on first request, since an HTTP client costs tens of ms.
        self._clients: weakref.WeakKeyDictionary[object, tuple[AsyncOpenAI, AsyncGenerator[None, None]]] = (
            weakref.WeakKeyDictionary()
        )
        self._tools_for: tuple[ModelRequestParameters, list[ChatCompletionToolParam]] | None = None

    @classmethod
    def from_spec(cls, kind: Provider, name: str, settings: Settings | None = None) -> OpenAIChatModel:
        """The model a registry string names after its prefix.

        Args:
            kind: `'openai'` (then `name` is the model, e.g. `'gpt-4o-mini'`) or `'openai-compatible'` (then
                `name` is `'URL#model'`, e.g. `'http://localhost:8000/v1#qwen2.5'`).
            name: The part of the model string after `kind:`.
            settings: miniagent's settings (unused: keys come from the environment).

        Raises:
            UserError: the string is malformed; the message shows the expected form.
            MissingCredentialError: `kind` is `'openai'` and `OPENAI_API_KEY` is not set.
        """
        name = name.strip()
        if kind == "openai":
            if not name:
                raise UserError("'openai:' needs a model name after the colon, e.g. 'openai:gpt-4o-mini'.")
            return cls(name, provider="openai")
        if kind != "openai-compatible":
            raise UserError(f"Unknown OpenAI provider kind {kind!r}; use 'openai' or 'openai-compatible'.")
        url, sep, model_name = name.partition("#")
        example = "'openai-compatible:http://localhost:8000/v1#my-model'"
        if not sep or not model_name.strip():
            raise UserError(
                f"'openai-compatible:{name}' names no model: add '#' and the model after the URL, e.g. {example}."
            )
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(
                f"'openai-compatible:{name}' does not start with an http(s) URL of the server's API root; "
                f"write it as {example}."
            )
        return cls(model_name.strip(), base_url=url.strip(), provider="openai-compatible")

    @property
    def name(self) -> str:
        """`'openai:<model>'` or `'openai-compatible:<model>'`."""
        return f"{self._provider}:{self._model_name}"

    @property
    def model_name(self) -> str:
        """The model asked for in each request."""
        return self._model_name

    @property
    def supports_streaming(self) -> bool:
        """Chat Completions streams."""
        return True

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask for one complete response."""
        with self._map_errors():
            completion = await self._create(messages, settings, params, stream=False)
        assert isinstance(completion, ChatCompletion)  # what `stream=False` returns
        assembler = ResponseAssembler(self._model_name)
        for chunk in _ChunkMapper().completion(completion):
            assembler.add(chunk)
        return assembler.response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Ask for one response, streamed as chunks ending with a `StreamDone`."""
        mapper = _ChunkMapper()
        with self._map_errors():
            stream = await self._create(messages, settings, params, stream=True)
            assert isinstance(stream, AsyncStream)  # what `stream=True` returns
            async with stream:
                async for event in stream:
                    for chunk in mapper.chunk(event):
                        yield chunk
        yield mapper.done()

    async def _create(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
        *,
        stream: bool,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        s = settings or _NO_SETTINGS
        # OpenAI takes the token cap as `max_completion_tokens` (reasoning models refuse `max_tokens`); the
        # servers that copy the API still read `max_tokens`.
        openai_cap = self._provider == "openai"
        client = await self._client()
        # The SDK walks every parameter against its TypedDicts before sending it (to rename aliased keys and
        # encode files). For messages and tool schemas, which are plain JSON here, that walk changes nothing yet
        # costs more CPU than the rest of the request (about 3.4 ms of 5.7 ms for a 5-message request with two
        # tools; see bench/). So they travel in `extra_body`, which the SDK sends as it is; a test in
        # tests/models/test_openai_chat.py checks that the walk still leaves what we send unchanged.
        body: dict[str, object] = {"messages": _map_messages(messages)}
        tools = self._tools(params)
        if tools:
            body["tools"] = tools
        return await client.chat.completions.create(
            model=self._model_name,
            messages=(),
            extra_body=body,
            tool_choice=_tool_choice(params),
            max_completion_tokens=_given(s.max_tokens) if openai_cap else omit,
            max_tokens=omit if openai_cap else _given(s.max_tokens),
            temperature=_given(s.temperature),
            top_p=_given(s.top_p),
            seed=_given(s.seed),
            timeout=s.timeout_s if s.timeout_s is not None else openai.NOT_GIVEN,
            stream=stream,
            stream_options={"include_usage": True} if stream else omit,
        )

    async def aclose(self) -> None:
        """Close the connection pools this model opened (not a `client` or `http_client` you passed in).

        A model used with `run_sync` needs no `aclose`: each pool is closed as its event loop ends.
        """
        entries = list(self._clients.values())
        self._clients.clear()
        for client, closer in entries:
            await closer.aclose()
            await client.close()

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _client(self) -> AsyncOpenAI:
        if self._given_client is not None:
            return self._given_client
        try:
            loop: object = asyncio.get_running_loop()
        except RuntimeError:  # another async library (trio): one client at a time
            loop = _NO_LOOP
        entry = self._clients.get(loop)
        if entry is not None and not entry[0].is_closed():
            return entry[0]
        client = self._new_client(self._api_key, openai.DefaultAsyncHttpxClient())
        # Pooled connections must be closed inside the loop that opened them, and `run_sync` ends its loop
        # without telling the model. Event loops close every pending async generator as they shut down
        # (`asyncio.run` calls `loop.shutdown_asyncgens()`, trio does the same), so a generator holding the
        # client closes it there.
        closer = _close_at_loop_end(client)
        await anext(closer)
        self._clients[loop] = (client, closer)
        return client

    def _new_client(self, api_key: str | None, http_client: httpx2.AsyncClient) -> AsyncOpenAI:
        # miniagent owns retrying, so the SDK's are off and each attempt is counted once.
        return AsyncOpenAI(api_key=api_key, base_url=self._base_url, http_client=http_client, max_retries=0)

    def _tools(self, params: ModelRequestParameters) -> list[ChatCompletionToolParam]:
        # An agent passes the same parameters object to every request of every run: map its tools once.
        cached = self._tools_for
        if cached is not None and cached[0] is params:
            return cached[1]
        tools = [_map_tool(tool) for tool in params.all_tools]
        self._tools_for = (params, tools)
        return tools

    @contextmanager
    def _map_errors(self) -> Iterator[None]:
        """The one place SDK errors become miniagent's."""
        where = self._where()
        subject = where[0].upper() + where[1:]
        try:
            yield
        except openai.APIStatusError as exc:
            body = exc.body
            detail = body.get("message") if isinstance(body, dict) else None
            detail = self._redact(detail if isinstance(detail, str) and detail else exc.message).rstrip(". ")
            advice = _status_advice(exc.status_code, self._provider)
            raise ModelHTTPError(
                f"{subject} answered HTTP {exc.status_code}: {detail}. {advice}",
                model_name=self.name,
                status_code=exc.status_code,
                body=self._redact_body(exc.body),
            ) from exc
        except openai.APITimeoutError as exc:
            raise ModelAPIError(
                f"{subject} did not answer in time. Raise `timeout_s` in `ModelSettings`, or check that the server "
                "is not overloaded.",
                model_name=self.name,
            ) from exc
        except openai.APIConnectionError as exc:
            raise ModelAPIError(
                f"Could not connect to {where}: {exc.__cause__ or exc}. Check that the server is running and that "
                "the URL is right (for 'openai-compatible:URL#model', the URL ends at the API root, often '/v1').",
                model_name=self.name,
            ) from exc
        except openai.APIError as exc:  # an error event inside a stream, or a response the SDK cannot parse
            raise ModelAPIError(
                f"{subject} failed: {self._redact(exc.message).rstrip('. ')}. Retry the request; if it keeps "
                "failing, check the server's logs.",
                model_name=self.name,
            ) from exc

    def _where(self) -> str:
        if self._base_url is None:
            return f"the OpenAI API (model {self._model_name!r})"
        parts = urlsplit(self._base_url)
        # Never echo credentials embedded in the URL.
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"the server at {parts.scheme}://{netloc}{parts.path} (model {self._model_name!r})"

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key != _PLACEHOLDER_KEY:
            text = text.replace(self._api_key, "***")
        return _KEY_PATTERN.sub("sk-***", text)

    def _redact_body(self, body: object) -> object:
        if isinstance(body, str):
            return self._redact(body)
        if isinstance(body, dict):
            return {key: self._redact_body(value) for key, value in body.items()}
        if isinstance(body, list):
            return [self._redact_body(value) for value in body]
        return body


_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_*\-]{6,}")
"""OpenAI-style keys, also the partly masked ones OpenAI echoes in 401 errors."""

_NO_SETTINGS = ModelSettings()


class _NoLoop:
    """The key of the client used outside asyncio (a weakly referenceable singleton)."""


_NO_LOOP = _NoLoop()


async def _close_at_loop_end(client: AsyncOpenAI) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.close()


def _given(value: _T | None) -> _T | Omit:
    return omit if value is None else value


def _tool_choice(params: ModelRequestParameters) -> Literal["required"] | Omit:
    if not params.allow_text_output and (params.function_tools or params.output_tools):
        return "required"
    return omit


def _status_advice(status: int, provider: Provider) -> str:
    if status in (401, 403):
        if provider == "openai":
            return "Check the key in OPENAI_API_KEY (or `api_key=`) and its project's access to the model."
        return "The server wants a key: set OPENAI_API_KEY or pass `api_key=` to the model."
    if status == 404:
        return "Check the model name and the base URL."
    if status == 429:
        return "The request rate or quota is exhausted: wait and retry, or lower the concurrency."
    if status >= 500:
        return "The server failed; retry later."
    return "The server rejected the request; check that the model supports the tools and settings used."


def _map_tool(tool: ToolDefinition) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters_json_schema},
    }


def _map_messages(messages: list[ModelMessage]) -> list[ChatCompletionMessageParam]:
    """Our messages as Chat Completions messages.

    A response becomes one assistant message (its text and its tool calls together); thinking parts are not
    sent back. Tool results and retry prompts for a tool call become `tool` messages answering that call.
    """
    out: list[ChatCompletionMessageParam] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    out.append({"role": "system", "content": part.content})
                elif isinstance(part, UserPromptPart):
                    out.append({"role": "user", "content": part.content})
                elif isinstance(part, ToolReturnPart):
                    out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.content_text()})
                elif part.tool_call_id is not None:
                    out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.model_text()})
                else:
                    out.append({"role": "user", "content": part.model_text()})
        else:
            texts: list[str] = []
            calls: list[ChatCompletionMessageToolCallParam] = []
            for rpart in message.parts:
                if isinstance(rpart, TextPart):
                    texts.append(rpart.content)
                elif isinstance(rpart, ToolCallPart):
                    calls.append(
                        {
                            "id": rpart.tool_call_id,
                            "type": "function",
                            "function": {"name": rpart.tool_name, "arguments": rpart.args_json()},
                        }
                    )
            assistant: ChatCompletionAssistantMessageParam = {
                "role": "assistant",
                "content": "".join(texts) if texts or not calls else None,
            }
            if calls:
                assistant["tool_calls"] = calls
            out.append(assistant)
    return out


class _ChunkMapper:
    """Turns Chat Completions output into stream chunks (sans-I/O); complete responses and streams share it.

    Parts get indices in order of first appearance: the text (if any) first, then each tool call by its index.
    """

    __slots__ = ("_next", "_text", "_thinking", "_calls", "_last_call", "_finish", "_usage", "_model", "_id")

    def __init__(self) -> None:
        self._next = 0
        self._text: int | None = None
        self._thinking: int | None = None
        self._calls: dict[int, int] = {}
        self._last_call: int | None = None
        self._finish: str | None = None
        self._usage: CompletionUsage | None = None
        self._model: str | None = None
        self._id: str | None = None

    def _index(self) -> int:
        self._next += 1
        return self._next - 1

    def _text_chunks(self, content: str | None, reasoning: object) -> Iterator[StreamChunk]:
        if isinstance(reasoning, str) and reasoning:
            if self._thinking is None:
                self._thinking = self._index()
            yield ThinkingChunk(self._thinking, reasoning)
        if content:
            if self._text is None:
                self._text = self._index()
            yield TextChunk(self._text, content)

    def _call_chunk(
        self, wire_index: int | None, call_id: str | None, name: str | None, args: str | None
    ) -> StreamChunk:
        if wire_index is None:  # some servers omit the index: a call id starts a new call, else it continues
            wire_index = len(self._calls) if call_id or self._last_call is None else self._last_call
        index = self._calls.get(wire_index)
        if index is None:
            index = self._calls[wire_index] = self._index()
        self._last_call = wire_index
        return ToolCallChunk(index, tool_name=name or None, tool_call_id=call_id or None, args_delta=args or "")

    def _meta(self, response_id: str | None, model: str | None, usage: CompletionUsage | None) -> None:
        self._id = self._id or response_id or None
        self._model = self._model or model or None
        if usage is not None:
            self._usage = usage

    def completion(self, completion: ChatCompletion) -> Iterator[StreamChunk]:
        """The chunks of a complete response, ending with its `StreamDone`."""
        self._meta(completion.id, completion.model, completion.usage)
        if completion.choices:
            choice = completion.choices[0]
            message = choice.message
            reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
            yield from self._text_chunks(message.content or message.refusal, reasoning)
            for i, call in enumerate(message.tool_calls or ()):
                if call.type == "function":
                    yield self._call_chunk(i, call.id, call.function.name, call.function.arguments)
            self._finish = choice.finish_reason
        yield self.done()

    def chunk(self, event: ChatCompletionChunk) -> Iterator[StreamChunk]:
        """The chunks one streamed event carries (no `StreamDone`: call `done` after the last event)."""
        self._meta(event.id, event.model, event.usage)
        for choice in event.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
            yield from self._text_chunks(delta.content or delta.refusal, reasoning)
            for call in delta.tool_calls or ():
                function = call.function
                yield self._call_chunk(
                    call.index,
                    call.id,
                    function.name if function else None,
                    function.arguments if function else None,
                )
            if choice.finish_reason:
                self._finish = choice.finish_reason

    def done(self) -> StreamDone:
        """Usage and metadata of the response so far."""
        usage = self._usage
        details: dict[str, Any] = {}
        if self._id:
            details["response_id"] = self._id
        if self._finish:
            details["finish_reason"] = self._finish
        return StreamDone(
            usage=Usage(input_tokens=usage.prompt_tokens or 0, output_tokens=usage.completion_tokens or 0)
            if usage is not None
            else Usage(),
            model_name=self._model,
            finish_reason=_FINISH_REASONS.get(self._finish) if self._finish else None,
            provider_details=details or None,
        )

"""OpenAI Chat Completions, and every server that speaks it (vLLM, llama.cpp's server, Ollama, Groq, Mistral...).

Model strings: `'openai:gpt-4o-mini'` (key from `OPENAI_API_KEY`) and `'openai-compatible:http://host:8000/v1#model'`
(key optional; `'...v1?profile=llama-cpp#model'` picks a profile). What each kind of server accepts lives in one
table, `PROFILES`, of [`CompatProfile`][miniagent.models.openai_chat.CompatProfile]s: the code reads the profile's
fields and never tests which server it talks to. This module imports the `openai` SDK; `import miniagent` never
imports this module.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import (
    MissingCredentialError,
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
    endpoint_upstream,
)
from ._clients import LoopClients
from ._compat import PROFILES, CompatProfile, ToolChoiceMode, infer_profile, profile_named
from ._http import body_was_cut, error_class_for, parse_retry_after, transport_detail

try:
    import httpx2
    import openai
    from openai import AsyncOpenAI, AsyncStream, Omit, omit
    from openai.types import CompletionUsage
    from openai.types.chat import (
        ChatCompletion,
        ChatCompletionAssistantMessageParam,
        ChatCompletionChunk,
        ChatCompletionContentPartParam,
        ChatCompletionMessageParam,
        ChatCompletionMessageToolCallParam,
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionToolParam,
    )
except ImportError as _exc:  # pragma: no cover (the extra is installed wherever tests run)
    raise OptionalDependencyError("`OpenAIChatModel`", "openai", missing=_exc.name) from _exc

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["PROFILES", "CompatProfile", "OpenAIChatModel", "Provider", "ToolChoiceMode", "infer_profile"]

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

DEFAULT_TIMEOUT_S = 600.0
"""Longest wait for a response (and between two pieces of a stream) when neither the model nor the settings say."""
DEFAULT_CONNECT_TIMEOUT_S = 10.0
"""Longest wait to open a connection."""


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
    Every request has a deadline: `timeout_s` (or `ModelSettings.timeout_s`) for the response and for each gap
    in a stream, `connect_timeout_s` to connect.

    Args:
        model_name: The model to ask for, e.g. `'gpt-4o-mini'`.
        base_url: The API root, e.g. `'http://localhost:8000/v1'`; `None` for OpenAI's (or `OPENAI_BASE_URL`).
        api_key: The key; `None` reads `OPENAI_API_KEY`. Compatible servers get a placeholder when neither is set.
        client: A configured `openai.AsyncOpenAI` to use as it is (it is not closed by `aclose`).
        http_client: An `httpx2.AsyncClient` for the SDK to use (it is not closed by `aclose`).
        provider: `'openai'` or `'openai-compatible'`; it decides the model's name prefix and whether a key is
            required.
        profile: The server's quirks: a [`CompatProfile`][miniagent.models.openai_chat.CompatProfile] or the
            name of one in `PROFILES` (`'llama-cpp'`, `'ollama'`, `'vllm'`...). `None` infers it from
            `base_url` (see [`infer_profile`][miniagent.models.openai_chat.infer_profile]).
        timeout_s: Longest wait for a response, and between two pieces of a stream, in seconds.
        connect_timeout_s: Longest wait to connect, in seconds.
        parallel_tool_calls: Sent as `parallel_tool_calls` when set and the profile accepts it.
        strict_tools: Mark tool schemas `strict` where the profile accepts it (the schemas must then follow
            OpenAI's strict rules).

    Raises:
        MissingCredentialError: `provider` is `'openai'` and no key is given or set.
        UserError: an unknown `provider` or `profile`, or an empty `model_name`.
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
        profile: CompatProfile | str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        parallel_tool_calls: bool | None = None,
        strict_tools: bool = False,
    ) -> None:
        if provider not in ("openai", "openai-compatible"):
            raise UserError(f"`provider` must be 'openai' or 'openai-compatible', got {provider!r}.")
        if not model_name:
            raise UserError("`model_name` must name a model, e.g. 'gpt-4o-mini'.")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise UserError("`timeout_s` and `connect_timeout_s` must be positive numbers of seconds.")
        self._model_name = model_name
        self._provider: Provider = provider
        self._base_url = base_url
        if isinstance(profile, str):
            profile = profile_named(profile)
        if profile is None:
            profile = infer_profile(base_url) if provider == "openai-compatible" and base_url else None
        self._profile = profile or PROFILES["openai" if provider == "openai" else "generic"]
        self._timeout = httpx2.Timeout(timeout_s, connect=connect_timeout_s)
        self._parallel_tool_calls = parallel_tool_calls
        self._strict_tools = strict_tools
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
        self._clients: LoopClients[AsyncOpenAI] = LoopClients()
        self._tools_for: tuple[ModelRequestParameters, list[ChatCompletionToolParam]] | None = None

    @classmethod
    def from_spec(cls, kind: Provider, name: str, settings: Settings | None = None) -> OpenAIChatModel:
        """The model a registry string names after its prefix.

        Args:
            kind: `'openai'` (then `name` is the model, e.g. `'gpt-4o-mini'`) or `'openai-compatible'` (then
                `name` is `'URL#model'`, e.g. `'http://localhost:8000/v1#qwen2.5'`; a `profile` query parameter
                in the URL picks the server profile and is not sent: `'http://localhost:8000/v1?profile=vllm#m'`).
            name: The part of the model string after `kind:`.
            settings: miniagent's settings (unused: keys come from the environment).

        Raises:
            UserError: the string is malformed or names an unknown profile; the message shows the expected form.
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
        query = parse_qsl(parts.query, keep_blank_values=True)
        profiles = [value for key, value in query if key == "profile"]
        rest = [(key, value) for key, value in query if key != "profile"]
        base_url = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(
            model_name.strip(),
            base_url=base_url,
            provider="openai-compatible",
            profile=profiles[-1] if profiles else None,
        )

    @property
    def name(self) -> str:
        """`'openai:<model>'` or `'openai-compatible:<model>'`."""
        return f"{self._provider}:{self._model_name}"

    @property
    def model_name(self) -> str:
        """The model asked for in each request."""
        return self._model_name

    @property
    def upstream(self) -> str:
        """The name and the server's URL (credentials removed): one circuit breaker per server and model."""
        return endpoint_upstream(self.name, self._base_url)

    @property
    def profile(self) -> CompatProfile:
        """The server profile in use."""
        return self._profile

    @property
    def supports_streaming(self) -> bool:
        """Chat Completions streams."""
        return True

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask for one complete response."""
        plan = _plan(self._profile, messages, params)
        with self._map_errors():
            completion = await self._create(messages, settings, params, plan, stream=False)
        assembler = ResponseAssembler(self._model_name)
        for chunk in self._completion_chunks(completion):
            assembler.add(chunk)
        return assembler.response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Ask for one response, streamed as chunks ending with a `StreamDone`."""
        plan = _plan(self._profile, messages, params)
        if plan.send_tools and not self._profile.stream_tool_calls and not plan.named:
            # The server cannot stream a response that may hold tool calls: ask for it whole, replay it as chunks.
            with self._map_errors():
                completion = await self._create(messages, settings, params, plan, stream=False)
            for chunk in self._completion_chunks(completion):
                yield chunk
            return
        mapper = _ChunkMapper(self._profile.reasoning_fields)
        state = _StreamState()
        with self._map_errors(state):
            stream = await self._create(messages, settings, params, plan, stream=True)
            if not isinstance(stream, AsyncStream):
                raise self._bad_body(stream)
            state.request_id = stream.response.headers.get("x-request-id")
            if "event-stream" not in stream.response.headers.get("content-type", "event-stream"):
                text = (await stream.response.aread()).decode(errors="replace")
                await stream.close()
                raise self._bad_body(text)
            async with stream:
                async for event in stream:
                    state.events += 1
                    for chunk in mapper.chunk(event):
                        yield chunk
        if not mapper.finished:
            raise ModelAPIError(
                f"The stream from {self._where()} ended after {state.events} events without finishing the response "
                "(no `finish_reason`): the server closed it early. Retry the request; if it keeps failing, check "
                "the server's logs (some servers cannot stream tool calls: pick a profile with "
                "`stream_tool_calls=False`).",
                model_name=self.name,
                provider=self._provider,
                request_id=state.request_id,
            )
        yield mapper.done()

    def _completion_chunks(self, completion: object) -> Iterator[StreamChunk]:
        if not isinstance(completion, ChatCompletion) or not isinstance(completion.choices, list):
            raise self._bad_body(completion)
        return _ChunkMapper(self._profile.reasoning_fields).completion(completion)

    def _bad_body(self, got: object) -> ModelAPIError:
        text = got if isinstance(got, str) else type(got).__name__
        return ModelAPIError(
            f"{self._where()[0].upper()}{self._where()[1:]} answered with a body that is not a Chat Completions "
            f"response ({_describe_body(text)}). Check that the URL is the API root (often ending in '/v1') and "
            "that no proxy or login page is in the way.",
            model_name=self.name,
            provider=self._provider,
            retryable=False,
        )

    async def _create(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
        plan: _Plan,
        *,
        stream: bool,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        s = settings or _NO_SETTINGS
        profile = self._profile
        client = await self._client()
        # The SDK walks every parameter against its TypedDicts before sending it (to rename aliased keys and
        # encode files). For messages and tool schemas, which are plain JSON here, that walk changes nothing yet
        # costs more CPU than the rest of the request (about 3.4 ms of 5.7 ms for a 5-message request with two
        # tools; see bench/). So they travel in `extra_body`, which the SDK sends as it is; a test in
        # tests/models/test_openai_chat.py checks that the walk still leaves what we send unchanged.
        body: dict[str, object] = {
            "messages": _map_messages(messages, null_content=profile.null_content_with_tool_calls)
        }
        if plan.send_tools:
            body["tools"] = self._tools(params)
            if self._parallel_tool_calls is not None and profile.supports_parallel_tool_calls:
                body["parallel_tool_calls"] = self._parallel_tool_calls
        if s.max_tokens is not None:
            body[profile.max_tokens_param] = s.max_tokens
        timeout: httpx2.Timeout | openai.NotGiven = openai.NOT_GIVEN
        if s.timeout_s is not None:
            timeout = httpx2.Timeout(s.timeout_s, connect=min(s.timeout_s, self._timeout.connect or s.timeout_s))
        return await client.chat.completions.create(
            model=self._model_name,
            messages=(),
            extra_body=body,
            tool_choice=plan.tool_choice,
            temperature=_given(s.temperature),
            top_p=_given(s.top_p),
            seed=_given(s.seed),
            timeout=timeout,
            stream=stream,
            stream_options={"include_usage": True} if stream and profile.stream_usage else omit,
        )

    async def aclose(self) -> None:
        """Close the connection pools this model opened (not a `client` or `http_client` you passed in).

        A model used with `run_sync` needs no `aclose`: each pool is closed as its event loop ends.
        """
        await self._clients.aclose()

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _client(self) -> AsyncOpenAI:
        if self._given_client is not None:
            return self._given_client
        return await self._clients.get(
            lambda: self._new_client(self._api_key, openai.DefaultAsyncHttpxClient(timeout=self._timeout))
        )

    def _new_client(self, api_key: str | None, http_client: httpx2.AsyncClient) -> AsyncOpenAI:
        # miniagent owns retrying, so the SDK's are off and each attempt is counted once.
        return AsyncOpenAI(
            api_key=api_key,
            base_url=self._base_url,
            http_client=http_client,
            max_retries=0,
            timeout=self._timeout,
        )

    def _tools(self, params: ModelRequestParameters) -> list[ChatCompletionToolParam]:
        # An agent passes the same parameters object to every request of every run: map its tools once.
        cached = self._tools_for
        if cached is not None and cached[0] is params:
            return cached[1]
        strict = self._strict_tools and self._profile.supports_strict_schemas
        tools = [_map_tool(tool, strict=strict) for tool in params.all_tools]
        self._tools_for = (params, tools)
        return tools

    @contextmanager
    def _map_errors(self, stream: _StreamState | None = None) -> Iterator[None]:
        """The one place SDK errors become miniagent's."""
        where = self._where()
        subject = where[0].upper() + where[1:]
        common: dict[str, Any] = {"model_name": self.name, "provider": self._provider}
        try:
            yield
        except openai.APIStatusError as exc:
            headers = exc.response.headers
            status = exc.status_code
            body = exc.body
            detail = body.get("message") if isinstance(body, dict) else None
            if not (isinstance(detail, str) and detail):
                detail = _describe_body(body) if isinstance(body, str) or body is None else exc.message
            detail = self._redact(detail).rstrip(". ") or "no detail"
            code = body.get("code") or body.get("type") if isinstance(body, dict) else None
            cls = error_class_for(status, detail, code=str(code) if code is not None else None)
            extra: dict[str, Any] = {}
            if issubclass(cls, ModelRateLimited):
                extra["retry_after_s"] = parse_retry_after(headers)
            raise cls(
                f"{subject} answered HTTP {status}: {detail}. {_status_advice(status, self._provider)}",
                status_code=status,
                body=self._redact_body(body),
                request_id=headers.get("x-request-id"),
                **common,
                **extra,
            ) from exc
        except openai.APITimeoutError as exc:
            raise ModelTimeout(
                f"{subject} did not answer in time. Raise `timeout_s` in `ModelSettings`, or check that the server "
                "is not overloaded.",
                request_id=stream.request_id if stream else None,
                **common,
            ) from exc
        except openai.APIConnectionError as exc:
            detail = self._redact(transport_detail(exc))
            if stream is not None and stream.events:
                raise ModelAPIError(
                    f"The stream from {where} was cut after {stream.events} events: {detail}. "
                    "Retry the request; if it keeps failing, check the server's logs.",
                    request_id=stream.request_id,
                    **common,
                ) from exc
            if body_was_cut(exc):  # it connected and answered; the body broke off
                raise ModelAPIError(
                    f"The response from {where} was cut before it was complete: {detail}. Retry; if it keeps "
                    "failing, check the server's logs.",
                    request_id=stream.request_id if stream else None,
                    **common,
                ) from exc
            raise ModelAPIError(
                f"Could not connect to {where}: {detail}. Check that the server is running and that "
                "the URL is right (for 'openai-compatible:URL#model', the URL ends at the API root, often '/v1').",
                **common,
            ) from exc
        except openai.APIError as exc:  # an error event inside a stream, or a response the SDK cannot parse
            raise self._in_stream_error(exc, subject, stream) from exc
        except json.JSONDecodeError as exc:  # a 200 whose JSON body is cut or garbled: the SDK lets it through
            raise ModelAPIError(
                f"{subject} answered with a body that is not valid JSON ({exc}). Retry the request; if it keeps "
                "failing, check the server's logs and any proxy in between.",
                request_id=stream.request_id if stream else None,
                **common,
            ) from exc

    def _in_stream_error(self, exc: openai.APIError, subject: str, stream: _StreamState | None) -> ModelAPIError:
        body = exc.body
        message = self._redact(exc.message).rstrip(". ")
        request_id = stream.request_id if stream else None
        status = _error_status(body)
        if status is None:
            return ModelAPIError(
                f"{subject} failed: {message}. Retry the request; if it keeps failing, check the server's logs.",
                model_name=self.name,
                provider=self._provider,
                request_id=request_id,
            )
        code = body.get("code") if isinstance(body, dict) else None
        cls = error_class_for(status, message, code=str(code) if code is not None else None)
        return cls(
            f"{subject} sent an error inside its stream (status {status}): {message}. "
            f"{_status_advice(status, self._provider)}",
            model_name=self.name,
            provider=self._provider,
            status_code=status,
            body=self._redact_body(body),
            request_id=request_id,
        )

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

    def count_tokens(self, messages: list[ModelMessage], *, tools: list[ToolDefinition] | None = None) -> int:
        """How many prompt tokens `messages` (and `tools`) take for this model, counted offline.

        Exact for text with OpenAI models (their `cl100k_base` or `o200k_base` encoding, shipped in the `openai`
        extra), approximate for tool schemas, tool calls and images; other servers' models are estimated with
        `o200k_base`. See [`count_openai_tokens`][miniagent.models._tokens.count_openai_tokens].
        """
        from ._tokens import count_openai_tokens

        return count_openai_tokens(self._model_name, messages, tools=tools or ())


_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_*\-]{6,}")
"""OpenAI-style keys, also the partly masked ones OpenAI echoes in 401 errors."""

_NO_SETTINGS = ModelSettings()


def _given(value: _T | None) -> _T | Omit:
    return omit if value is None else value


@dataclass(slots=True)
class _StreamState:
    """What a stream has delivered so far, for its error messages."""

    events: int = 0
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one request offers tools: whether it sends them, and its `tool_choice`."""

    send_tools: bool
    tool_choice: Literal["none", "auto", "required"] | ChatCompletionNamedToolChoiceParam | Omit
    named: bool = False


_NO_TOOLS = _Plan(False, omit)


def _plan(profile: CompatProfile, messages: list[ModelMessage], params: ModelRequestParameters) -> _Plan:
    """The tool offer for one request: what the run wants, mapped onto the modes the profile's server honours.

    The run wants `required` when text is not an acceptable answer, else `auto`; a profile with
    `final_turn_tool_choice_none` wants `none` right after tool results. A mode the server lacks falls back:
    `required` and `auto` to naming the one tool that fits, then to `auto`; `none` to not sending the tools.
    """
    tools = params.all_tools
    if not tools:
        return _NO_TOOLS
    after_tools = _after_tool_results(messages)
    modes = profile.tool_choice_modes
    wanted: ToolChoiceMode = "auto" if params.allow_text_output else "required"
    if profile.final_turn_tool_choice_none and after_tools:
        if params.allow_text_output:
            wanted = "none"
        elif len(params.output_tools) == 1:  # only the output tool can end the run now
            return _named(params.output_tools[0])
    if wanted == "none":
        return _Plan(True, "none") if "none" in modes else _NO_TOOLS
    auto: Literal["auto"] | Omit = "auto" if profile.send_auto_tool_choice else omit
    if wanted in modes:
        return _Plan(True, "required" if wanted == "required" else auto)
    if "named" in modes and len(tools) == 1:
        return _named(tools[0])
    return _Plan(True, auto)


def _named(tool: ToolDefinition) -> _Plan:
    return _Plan(True, {"type": "function", "function": {"name": tool.name}}, named=True)


def _after_tool_results(messages: list[ModelMessage]) -> bool:
    last = messages[-1] if messages else None
    return isinstance(last, ModelRequest) and any(isinstance(part, ToolReturnPart) for part in last.parts)


def _error_status(body: object) -> int | None:
    """The HTTP status an in-stream error names (Groq's `status_code`, OpenRouter's numeric `code`), if any."""
    if not isinstance(body, dict):
        return None
    for key in ("status_code", "status", "code"):
        value = body.get(key)
        if isinstance(value, int | str) and str(value).isdigit() and 400 <= int(value) <= 599:
            return int(value)
    return None


_TAGS = re.compile(r"<[^>]+>")


def _describe_body(body: object) -> str:
    """A short, safe description of a body that is not the JSON we expected."""
    if body is None or body == "":
        return "an empty body"
    text = str(body)
    if text.lstrip()[:1] == "<":
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        shown = title.group(1) if title else _TAGS.sub(" ", text)
        return f"an HTML page: {' '.join(shown.split())[:120]!r}"
    return f"not JSON: {' '.join(text.split())[:120]!r}"


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


def _map_tool(tool: ToolDefinition, *, strict: bool = False) -> ChatCompletionToolParam:
    mapped: ChatCompletionToolParam = {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters_json_schema},
    }
    if strict:
        mapped["function"]["strict"] = True
    return mapped


def _map_user(part: UserPromptPart) -> ChatCompletionMessageParam:
    if not part.attachments:
        return {"role": "user", "content": part.content}
    content: list[ChatCompletionContentPartParam] = []
    if part.content:
        content.append({"type": "text", "text": part.content})
    for attachment in part.attachments:
        if isinstance(attachment, ImageUrl):
            url = attachment.url
        elif attachment.is_image:
            url = attachment.data_url()
        else:
            raise UserError(
                f"Chat Completions takes images only, not {attachment.media_type!r}: send images (by URL or as "
                "`BinaryContent` with an `image/...` media type), or put the content in the text."
            )
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": content}


def _map_messages(messages: list[ModelMessage], *, null_content: bool = True) -> list[ChatCompletionMessageParam]:
    """Our messages as Chat Completions messages.

    A response becomes one assistant message (its text and its tool calls together); thinking parts are not
    sent back. Tool results and retry prompts for a tool call become `tool` messages answering that call. User
    attachments become `image_url` parts (bytes as a `data:` URL). With `null_content=False`, an assistant
    message of tool calls only carries `content: ""` rather than `null`.
    """
    out: list[ChatCompletionMessageParam] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    out.append({"role": "system", "content": part.content})
                elif isinstance(part, UserPromptPart):
                    out.append(_map_user(part))
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
                "content": "".join(texts) if texts or not calls or not null_content else None,
            }
            if calls:
                assistant["tool_calls"] = calls
            out.append(assistant)
    return out


class _ChunkMapper:
    """Turns Chat Completions output into stream chunks (sans-I/O); complete responses and streams share it.

    Parts get indices in order of first appearance: reasoning and text as they come, then each tool call by its
    index. The wire objects are read defensively (`getattr`): compatible servers omit fields the SDK's types
    declare (Mistral's tool calls have no `type`) and send shapes they do not (Magistral's content is a list of
    typed parts).
    """

    __slots__ = (
        "_next",
        "_text",
        "_thinking",
        "_calls",
        "_last_call",
        "_finish",
        "_usage",
        "_model",
        "_id",
        "_reasoning_fields",
    )

    def __init__(self, reasoning_fields: tuple[str, ...] = ("reasoning_content", "reasoning")) -> None:
        self._next = 0
        self._text: int | None = None
        self._thinking: int | None = None
        self._calls: dict[int, int] = {}
        self._last_call: int | None = None
        self._finish: str | None = None
        self._usage: CompletionUsage | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._reasoning_fields = reasoning_fields

    @property
    def finished(self) -> bool:
        """Whether a `finish_reason` has arrived."""
        return self._finish is not None

    def _index(self) -> int:
        self._next += 1
        return self._next - 1

    def _reasoning(self, message: object) -> object:
        for name in self._reasoning_fields:
            value = getattr(message, name, None)
            if value:
                return value
        return None

    def _thinking_chunk(self, text: str) -> StreamChunk:
        if self._thinking is None:
            self._thinking = self._index()
        return ThinkingChunk(self._thinking, text)

    def _text_chunk(self, text: str) -> StreamChunk:
        if self._text is None:
            self._text = self._index()
        return TextChunk(self._text, text)

    def _text_chunks(self, content: object, reasoning: object) -> Iterator[StreamChunk]:
        if isinstance(reasoning, str) and reasoning:
            yield self._thinking_chunk(reasoning)
        if isinstance(content, str):
            if content:
                yield self._text_chunk(content)
        elif isinstance(content, list):  # typed parts: `{type: text, text}`, `{type: thinking, thinking: [...]}`
            for item in content:
                if not isinstance(item, dict):
                    continue
                if item.get("type") == "thinking":
                    inner = item.get("thinking")
                    pieces = inner if isinstance(inner, list) else [{"text": inner}]
                    for piece in pieces:
                        text = piece.get("text") if isinstance(piece, dict) else None
                        if isinstance(text, str) and text:
                            yield self._thinking_chunk(text)
                elif item.get("type") == "text" and isinstance(item.get("text"), str) and item["text"]:
                    yield self._text_chunk(item["text"])

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
            content = message.content or getattr(message, "refusal", None)
            yield from self._text_chunks(content, self._reasoning(message))
            for i, call in enumerate(getattr(message, "tool_calls", None) or ()):
                function = getattr(call, "function", None)
                if function is not None and getattr(call, "type", "function") in ("function", None):
                    yield self._call_chunk(i, getattr(call, "id", None), function.name, function.arguments)
            self._finish = getattr(choice, "finish_reason", None) or "stop"  # some servers send null
        yield self.done()

    def chunk(self, event: ChatCompletionChunk) -> Iterator[StreamChunk]:
        """The chunks one streamed event carries (no `StreamDone`: call `done` after the last event)."""
        self._meta(event.id, event.model, event.usage)
        for choice in event.choices or ():
            if choice.index not in (0, None):
                continue
            delta = choice.delta
            if delta is not None:
                content = delta.content or getattr(delta, "refusal", None)
                yield from self._text_chunks(content, self._reasoning(delta))
                for call in getattr(delta, "tool_calls", None) or ():
                    function = getattr(call, "function", None)
                    yield self._call_chunk(
                        getattr(call, "index", None),
                        getattr(call, "id", None),
                        getattr(function, "name", None),
                        getattr(function, "arguments", None),
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
            usage=_usage(usage) if usage is not None else Usage(),
            model_name=self._model,
            finish_reason=_FINISH_REASONS.get(self._finish) if self._finish else None,
            provider_details=details or None,
        )


def _usage(usage: Any) -> Usage:
    """The provider's usage in our terms: cached prompt tokens and reasoning tokens are kept apart for pricing."""
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cache_read_tokens=(getattr(prompt_details, "cached_tokens", None) or 0) if prompt_details else 0,
        reasoning_tokens=(getattr(completion_details, "reasoning_tokens", None) or 0) if completion_details else 0,
    )

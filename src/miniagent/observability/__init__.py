"""Observability: structured logs, OpenTelemetry GenAI traces and Prometheus metrics, all fed by a run's events.

Nothing is configured on import. An application calls [`configure`][miniagent.observability.configure] once at
start-up; it installs event handlers (`miniagent.events.add_event_handler`) that turn every run's typed events into
log lines, spans and metric updates, so the loop itself holds no logging, tracing or metrics calls.

Example:
    ```python
    import io

    from miniagent import Agent
    from miniagent.observability import configure
    from miniagent.testing import ScriptedModel

    out = io.StringIO()
    handle = configure(log_format="json", stream=out, tracing=False)
    try:
        Agent(model=ScriptedModel(["Hi!"]), name="greeter").run_sync("Hello")
    finally:
        handle.close()
    assert '"event": "run_finished"' in out.getvalue()
    ```

Health checks (the registry behind `miniagent doctor`, `/healthz` and `/readyz`) are re-exported here too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

from .._utils import Clock
from ..errors import UserError
from ._redact import (
    REDACTED,
    Redactor,
    redact,
    secret_values_from_env,
    secret_values_from_settings,
    set_default_redactor,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import TracerProvider as ApiTracerProvider
    from prometheus_client import CollectorRegistry

    from ..settings import Settings
    from ._health import (
        Check,
        CheckKind,
        CheckRegistry,
        CheckResult,
        CheckStatus,
        HealthReport,
        default_registry,
        register_check,
        run_checks,
        unregister_check,
    )
    from ._logging import LogFormat, UserIdMode
    from ._tracing import TraceSink

__all__ = [
    "Check",
    "CheckKind",
    "CheckRegistry",
    "CheckResult",
    "CheckStatus",
    "HealthReport",
    "MetricsServer",
    "Observability",
    "REDACTED",
    "Redactor",
    "configure",
    "configured",
    "default_registry",
    "get_registry",
    "hash_user_id",
    "metrics_app",
    "redact",
    "register_check",
    "run_checks",
    "start_metrics_server",
    "unconfigure",
    "unregister_check",
]

# Health checks (`_health`, the registry behind `miniagent doctor`) are served lazily: they import more.
_HEALTH_EXPORTS = frozenset(
    {
        "Check",
        "CheckKind",
        "CheckRegistry",
        "CheckResult",
        "CheckStatus",
        "HealthReport",
        "default_registry",
        "register_check",
        "run_checks",
        "unregister_check",
    }
)
_log = logging.getLogger("miniagent.observability")
_lock = threading.Lock()
_active: Observability | None = None
_default_registry: CollectorRegistry | None = None


def hash_user_id(user_id: str, key: bytes = b"miniagent") -> str:
    """A stable pseudonym for `user_id`: the first 16 hex digits of HMAC-SHA256 keyed with `key`."""
    from ._logging import hash_user_id as _hash

    return _hash(user_id, key)


class Observability:
    """What [`configure`][miniagent.observability.configure] installed; `close()` (or `with`) removes it all."""

    def __init__(self) -> None:
        self.log_format: LogFormat | None = None
        """The log format in use, or `None` when logging was not configured."""
        self.log_level: int | None = None
        """The log level in use (a `logging` constant), or `None`."""
        self.tracing: bool = False
        """Whether spans are made."""
        self.tracer_provider: ApiTracerProvider | None = None
        """The tracer provider spans go to, when tracing."""
        self.registry: CollectorRegistry | None = None
        """The Prometheus registry holding miniagent's metrics, when metrics are on."""
        self.redactor: Redactor = Redactor()
        """The redactor applied to logs, spans and metric labels."""
        self.record_content: bool = False
        """Whether prompts, responses, tool arguments and results are recorded (redacted)."""
        self._removers: list[Callable[[], None]] = []
        self._owned_provider: TracerProvider | None = None
        self._closed = False

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export the spans still buffered (a `BatchSpanProcessor` sends them in the background)."""
        flush = getattr(self.tracer_provider, "force_flush", None)
        return bool(flush(timeout_millis)) if flush is not None else True

    def close(self) -> None:
        """Remove the handlers, restore logging, unregister the metrics and shut down a provider built from env."""
        global _active
        with _lock:
            if self._closed:
                return
            self._closed = True
            for remove in reversed(self._removers):
                remove()
            self._removers.clear()
            if self._owned_provider is not None:
                self._owned_provider.shutdown()
            if _active is self:
                _active = None
                set_default_redactor(None)

    def __enter__(self) -> Observability:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def configured() -> Observability | None:
    """What the last [`configure`][miniagent.observability.configure] installed, or `None`."""
    return _active


def unconfigure() -> None:
    """Undo [`configure`][miniagent.observability.configure] (nothing happens when it was not called)."""
    active = _active
    if active is not None:
        active.close()


def _tracing_env_configured() -> bool:
    """Whether the standard `OTEL_*` variables ask for traces to be exported (and the SDK is not disabled)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _tracing_wanted(tracing: bool | None, tracer_provider: object | None) -> bool:
    if tracing is not None:
        return tracing
    if tracer_provider is not None or _tracing_env_configured():
        return True
    # An application that set a global SDK provider (e.g. `opentelemetry-instrument`) already imported the API.
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    provider = api.get_tracer_provider()
    return type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider")


def _validate(
    log_format: object, log_level: object, user_id: object, stream: object, secrets: object, clock: object
) -> None:
    if log_format not in (None, "json", "console"):
        raise UserError(f"configure(log_format={log_format!r}) is not a log format; use 'json', 'console' or None.")
    if log_level is not None and (not isinstance(log_level, str) or log_level.upper() not in _levels()):
        raise UserError(f"configure(log_level={log_level!r}) is not a level; use one of {', '.join(_levels())}.")
    if user_id not in (None, "hash", "raw", "omit"):
        raise UserError(f"configure(user_id={user_id!r}) is not a mode; use 'hash', 'raw' or 'omit'.")
    if stream is not None and not callable(getattr(stream, "write", None)):
        raise UserError(f"configure(stream=...) needs a text stream with `write`, got {type(stream).__name__}.")
    if isinstance(secrets, str) or not isinstance(secrets, Iterable):
        raise UserError("configure(secrets=...) takes a list of secret strings, not a single string.")
    if clock is not None and not callable(getattr(clock, "now", None)):
        raise UserError(f"configure(clock=...) needs an object with `now()`, got {type(clock).__name__}.")


def _levels() -> tuple[str, ...]:
    return ("DEBUG", "INFO", "WARNING", "ERROR")


def configure(
    *,
    logs: bool = True,
    log_format: LogFormat | None = None,
    log_level: str | None = None,
    stream: TextIO | None = None,
    stdlib_logging: bool = True,
    tracing: bool | None = None,
    tracer_provider: ApiTracerProvider | None = None,
    metrics: bool = True,
    registry: CollectorRegistry | None = None,
    record_content: bool | None = None,
    secrets: Iterable[str] = (),
    user_id: UserIdMode | None = None,
    metrics_user_label: bool | None = None,
    clock: Clock | None = None,
    settings: Settings | None = None,
) -> Observability:
    """Turn every run's events into structured logs, spans and metrics; call once when the application starts.

    Calling it again replaces the previous configuration (it is never installed twice), and the returned handle's
    `close()` (or [`unconfigure`][miniagent.observability.unconfigure]) restores everything.

    Args:
        logs: Configure structlog and log each run's events.
        log_format: `json` lines or a pretty `console`; `None`: `MINIAGENT_LOG_FORMAT`, else `console` when the
            stream is a terminal and `json` otherwise.
        log_level: `DEBUG`, `INFO`, `WARNING` or `ERROR`; `None`: `MINIAGENT_LOG_LEVEL` when set, else `INFO`.
        stream: Where log lines go (default: standard error).
        stdlib_logging: Also render the standard library's log records (other libraries) the same way, through a
            handler on the root logger.
        tracing: Make OpenTelemetry spans; `None` turns them on when `tracer_provider` is given, the `OTEL_*`
            variables ask for an exporter, or the application set a global SDK tracer provider. Needs the `otel`
            extra.
        tracer_provider: Where spans go; default: the global SDK provider if one is set, else one built from the
            `OTEL_*` variables (shut down by `close()`).
        metrics: Update Prometheus metrics (see [`get_registry`][miniagent.observability.get_registry]).
        registry: The Prometheus registry for the metrics (default: miniagent's own).
        record_content: Record prompts, responses, tool arguments and results (redacted) in spans and logs;
            `None`: `MINIAGENT_TRACE_CONTENT`.
        secrets: Values to hide wherever they appear, besides API keys, tokens and passwords found by pattern, the
            settings' secret values and the values of secret-looking environment variables.
        user_id: How user ids appear: `hash` (HMAC pseudonym), `raw` or `omit`; `None`: `MINIAGENT_LOG_USER_ID`.
        metrics_user_label: Add a `user` label to the cost metric; `None`: `MINIAGENT_METRICS_USER_LABEL`.
        clock: Where latencies are measured (tests pass a `ManualClock`); default: `time.perf_counter`.
        settings: The settings to read defaults from (default: the environment's).

    Returns:
        The handle of what was installed.

    Raises:
        UserError: An argument is invalid, or tracing was asked for without the `otel` extra installed.
    """
    _validate(log_format, log_level, user_id, stream, secrets, clock)
    if settings is None:
        from ..settings import get_settings

        settings = get_settings()
    unconfigure()
    handle = Observability()
    try:
        _install(
            handle,
            settings=settings,
            logs=logs,
            log_format=log_format,
            log_level=log_level,
            stream=stream,
            stdlib_logging=stdlib_logging,
            tracing=tracing,
            tracer_provider=tracer_provider,
            metrics=metrics,
            registry=registry,
            record_content=record_content,
            secrets=secrets,
            user_id=user_id,
            metrics_user_label=metrics_user_label,
            clock=clock,
        )
    except BaseException:
        for remove in reversed(handle._removers):
            remove()
        raise
    global _active
    with _lock:
        _active = handle
    set_default_redactor(handle.redactor)
    return handle


def _install(
    handle: Observability,
    *,
    settings: Settings,
    logs: bool,
    log_format: LogFormat | None,
    log_level: str | None,
    stream: TextIO | None,
    stdlib_logging: bool,
    tracing: bool | None,
    tracer_provider: ApiTracerProvider | None,
    metrics: bool,
    registry: CollectorRegistry | None,
    record_content: bool | None,
    secrets: Iterable[str],
    user_id: UserIdMode | None,
    metrics_user_label: bool | None,
    clock: Clock | None,
) -> None:
    from .._instrument import set_store_tracer
    from ..events import add_event_handler

    redactor = Redactor([*secrets, *secret_values_from_settings(settings), *secret_values_from_env()])
    handle.redactor = redactor
    content = settings.trace_content if record_content is None else record_content
    handle.record_content = content
    now: Callable[[], float] = clock.now if clock is not None else time.perf_counter
    mode = user_id or settings.log_user_id
    salt = settings.user_id_salt.get_secret_value().encode() if settings.user_id_salt is not None else b"miniagent"

    def user(value: str | None) -> str | None:
        if value is None or mode == "omit":
            return None
        return value if mode == "raw" else hash_user_id(value, salt)

    if tracing is False and tracer_provider is not None:
        raise UserError("configure(tracing=False, tracer_provider=...) is contradictory; drop one of them.")
    if _tracing_wanted(tracing, tracer_provider):
        try:
            from opentelemetry import trace  # noqa: F401  # the `otel` extra is installed
        except ImportError as exc:
            if tracing:
                raise UserError(
                    "Tracing needs the OpenTelemetry packages: `pip install 'miniagent[otel]'`, or pass tracing=False."
                ) from exc
            _log.warning("OTEL_* variables are set but OpenTelemetry is not installed; tracing is off")
        else:
            sink = _install_tracing(handle, tracer_provider, redactor, content, user)
            handle._removers.append(add_event_handler(sink))
            set_store_tracer(sink.store_span)
            handle._removers.append(lambda: set_store_tracer(None))
            handle._removers.append(sink.close)

    if metrics:
        from ._metrics import MetricsSink

        target = registry if registry is not None else get_registry()
        metrics_sink = MetricsSink(
            target,
            clock=now,
            redactor=redactor,
            user_label=settings.metrics_user_label if metrics_user_label is None else metrics_user_label,
            user_id=user,
        )
        handle._removers.append(metrics_sink.remove)
        handle._removers.append(add_event_handler(metrics_sink))
        handle.registry = target

    if logs:
        from ._logging import LEVELS, LoggingSetup, LogSink, RunContextProcessor, default_stream

        out = stream if stream is not None else default_stream()
        fmt = log_format or settings.log_format
        if fmt is None:
            fmt = "console" if _isatty(out) else "json"
        level_name = (log_level or (settings.log_level if "log_level" in settings.model_fields_set else "INFO")).upper()
        level = LEVELS[level_name]
        setup = LoggingSetup(
            log_format=fmt,
            level=level,
            stream=out,
            redactor=redactor,
            context=RunContextProcessor(user),
            stdlib=stdlib_logging,
        )
        handle._removers.append(setup.remove)
        log_sink = LogSink(setup.logger, level=level, record_content=content, clock=now)
        handle._removers.append(add_event_handler(log_sink))
        handle.log_format = fmt
        handle.log_level = level


def _install_tracing(
    handle: Observability,
    tracer_provider: ApiTracerProvider | None,
    redactor: Redactor,
    content: bool,
    user: Callable[[str | None], str | None],
) -> TraceSink:
    from opentelemetry import trace

    from .._version import __version__
    from ._tracing import TraceSink, provider_from_env

    provider: ApiTracerProvider | None = tracer_provider
    if provider is None:
        current = trace.get_tracer_provider()
        if type(current).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
            provider = current
        else:
            owned = provider_from_env(redactor)
            handle._owned_provider = owned
            provider = owned
    handle.tracing = True
    handle.tracer_provider = provider
    tracer = provider.get_tracer("miniagent", __version__)
    return TraceSink(tracer, redactor=redactor, record_content=content, user_id=user)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def get_registry() -> CollectorRegistry:
    """The Prometheus registry with miniagent's metrics: the configured one, else miniagent's default registry."""
    global _default_registry
    active = _active
    if active is not None and active.registry is not None:
        return active.registry
    if _default_registry is None:
        from prometheus_client import CollectorRegistry

        _default_registry = CollectorRegistry()
    return _default_registry


def metrics_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics in the Prometheus text format, to mount in a web app (`/metrics`).

    Example:
        ```python
        from miniagent.observability import metrics_app

        app = metrics_app()  # e.g. fastapi_app.mount("/metrics", app)
        assert callable(app)
        ```
    """
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry if registry is not None else get_registry())


class MetricsServer:
    """A Prometheus metrics endpoint served from a background thread; `close()` stops it."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        """The address it listens on."""
        self.port: int = int(server.server_port)
        """The port it listens on (the one chosen when 0 was asked for)."""

    @property
    def url(self) -> str:
        """The metrics URL, e.g. `http://127.0.0.1:9464/metrics`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def start_metrics_server(
    port: int, *, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve the metrics at `http://{host}:{port}/metrics` from a background thread (`--metrics-port`).

    Args:
        port: The TCP port; 0 picks a free one (read it from the result's `port`).
        host: The address to listen on; the default keeps the endpoint on this machine, `0.0.0.0` exposes it.
        registry: The registry to serve (default: [`get_registry`][miniagent.observability.get_registry]).

    Raises:
        UserError: The port is not a number from 0 to 65535, or it cannot be bound.
    """
    value: object = port
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise UserError(f"The metrics port must be a number from 0 to 65535, got {port!r}.")
    address: object = host
    if not isinstance(address, str) or not address:
        raise UserError(f"The metrics host must be an address such as '127.0.0.1', got {host!r}.")
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            port, addr=host, registry=registry if registry is not None else get_registry()
        )
    except OSError as exc:
        raise UserError(
            f"Cannot serve metrics on {host}:{port} ({exc}); pick another port or stop what is using it."
        ) from exc
    return MetricsServer(server, thread, host)


def __getattr__(name: str) -> Any:
    if name in _HEALTH_EXPORTS:
        from . import _health

        return getattr(_health, name)
    if name == "registry":
        return get_registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The server's edge, as one pure ASGI middleware (no per-request objects beyond what it needs, for latency):
`X-Request-ID` in and out (the correlation id of logs, spans and events), the request size limit (413 before a huge
body is read), crash answers without stack traces, one structured access log line per request and the HTTP
request metrics.
"""  # noqa: D205

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..context import correlation_scope
from ._errors import ApiError, error_json

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Histogram

__all__ = ["EdgeMiddleware", "http_metrics"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,200}$")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_METRICS: WeakKeyDictionary[CollectorRegistry, Histogram] = WeakKeyDictionary()
_PRINCIPAL_KEY = "miniagent.principal"
_log = logging.getLogger("miniagent.server")


def http_metrics(registry: CollectorRegistry) -> Histogram:
    """The `miniagent_http_request_duration_seconds` histogram (by method, route template and status) in
    `registry`, made once per registry.
    """  # noqa: D205
    found = _METRICS.get(registry)
    if found is None:
        from prometheus_client import Histogram

        found = Histogram(
            "miniagent_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body), by method, route template and status.",
            ("method", "route", "status"),
            buckets=_BUCKETS,
            registry=registry,
        )
        _METRICS[registry] = found
    return found


class _TooLarge(ApiError):
    pass


def _too_large(limit: int) -> _TooLarge:
    return _TooLarge(
        413,
        "request_too_large",
        f"The request body is larger than this server accepts ({limit} bytes): send less (MINIAGENT_MAX_REQUEST_BYTES "
        "sets the limit).",
        extra={"max_bytes": limit},
    )


class EdgeMiddleware:
    """Request id, size limit, crash answers, access log and HTTP metrics.

    Args:
        app: The wrapped ASGI app.
        max_request_bytes: The largest body accepted.
        histogram: Where request durations go, or `None`.
        access_log: Called after each request with its fields (`None`: no access log).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_request_bytes: int,
        histogram: Histogram | None = None,
        access_log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.histogram = histogram
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        given: str | None = None
        length: int | None = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                text = value.decode("latin-1")
                given = text if _REQUEST_ID.match(text) else None
            elif key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        with correlation_scope(given) as request_id:
            await self._handle(scope, receive, send, kind, request_id, length)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, kind: str, request_id: str, length: int | None
    ) -> None:
        start = time.perf_counter()
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = False
        path: str = scope.get("path", "")
        limit = self.max_request_bytes

        async def send_out(message: Message) -> None:
            nonlocal status, started
            kind_ = message["type"]
            if kind_ == "http.response.start" or kind_ == "websocket.accept":
                started = True
                status = message.get("status", 101)
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        received = 0

        async def receive_in() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        try:
            if kind == "http" and length is not None and length > limit:
                await self._error(send_out, 413, "request_too_large", _too_large(limit), path)
            else:
                await self.app(scope, receive_in if kind == "http" else receive, send_out)
        except _TooLarge as exc:  # a chunked body went over the limit while something read it outside FastAPI
            if not started:
                await self._error(send_out, 413, "request_too_large", exc, path)
        except Exception as exc:
            # The standard library logger: rendered by `observability.configure()` when it ran, and never with the
            # frames' local variables (which may hold secrets), unlike structlog's default development renderer.
            _log.error("request_crashed: %s on %s", type(exc).__name__, path, exc_info=exc)
            if not started and kind == "http":
                error = ApiError(
                    500,
                    "internal_error",
                    f"The server failed to handle this request (request id {request_id}); the details are in its logs.",
                )
                await self._error(send_out, 500, "internal_error", error, path)
        finally:
            self._record(scope, kind, status, time.perf_counter() - start, request_id)

    @staticmethod
    async def _error(send: Send, status: int, code: str, error: ApiError, path: str) -> None:
        body = error_json(status, code, error.message, path=path, extra=error.extra)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, kind: str, status: int, duration: float, request_id: str) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "WS") if kind == "http" else "WS"
        if self.histogram is not None:
            self.histogram.labels(method, template, str(status)).observe(duration)
        if self.access_log is not None:
            principal = scope.get(_PRINCIPAL_KEY)
            self.access_log(
                {
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": template,
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "correlation_id": request_id,
                    "tenant_id": getattr(principal, "tenant_id", None),
                    "user_id": getattr(principal, "user_id", None),
                    "auth_via": getattr(principal, "via", None),
                    "client": (scope.get("client") or (None,))[0],
                }
            )

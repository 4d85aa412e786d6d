"""HTTP facts shared by providers: waits, error classes, and how a broken connection is described.

How long a server asks us to wait, which error class a status means, and what a transport error says.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from ..errors import (
    ContentFiltered,
    ContextLengthExceeded,
    ModelAuthError,
    ModelBadRequest,
    ModelHTTPError,
    ModelOverloaded,
    ModelRateLimited,
)

__all__ = ["body_was_cut", "error_class_for", "parse_duration", "parse_retry_after", "transport_detail"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_CONTEXT_WORDS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long")
_FILTER_WORDS = ("content_filter", "content filter", "content policy", "content_policy", "safety")


def parse_duration(text: str) -> float | None:
    """Seconds in a duration like `'1s'`, `'6m0s'`, `'20ms'`, `'1h2m3.5s'` (OpenAI's rate-limit reset headers)."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    pos = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        pos = match.end()
    return total if pos == len(text) else None


def _seconds_until(when: datetime, now: float) -> float:
    return max(0.0, when.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How many seconds the server asked us to wait, from its headers, or `None` if it did not say.

    Reads, in order: `retry-after-ms`; `Retry-After` as seconds or as an HTTP date; OpenAI's
    `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` durations; Anthropic's
    `anthropic-ratelimit-*-reset` RFC 3339 times. With several reset headers, the longest wait wins.

    Args:
        headers: Response headers (any case).
        now: Current time in seconds since the epoch (injectable for tests).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    now = time.time() if now is None else now
    if (ms := lower.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    if (value := lower.get("retry-after")) is not None:
        value = value.strip()
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return _seconds_until(parsedate_to_datetime(value), now)
            except (TypeError, ValueError, IndexError):
                pass
    waits: list[float] = []
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if (value := lower.get(name)) is not None and (seconds := parse_duration(value)) is not None:
            waits.append(seconds)
    for name, value in lower.items():
        if name.startswith("anthropic-ratelimit-") and name.endswith("-reset"):
            try:
                waits.append(_seconds_until(datetime.fromisoformat(value.replace("Z", "+00:00")), now))
            except ValueError:
                continue
    return max(waits) if waits else None


def error_class_for(status: int, message: str = "", *, code: str | None = None) -> type[ModelHTTPError]:
    """The most specific error class for an HTTP error status and the provider's error message/code."""
    text = f"{code or ''} {message}".lower()
    if status == 429:
        return ModelRateLimited
    if status in (503, 529) or "overloaded" in text:
        return ModelOverloaded
    if any(word in text for word in _CONTEXT_WORDS):
        return ContextLengthExceeded
    if any(word in text for word in _FILTER_WORDS):
        return ContentFiltered
    if status in (401, 403):
        return ModelAuthError
    if status in (400, 404, 422):
        return ModelBadRequest
    return ModelHTTPError


def transport_detail(exc: BaseException) -> str:
    """What a transport error says, as a clause to embed in a sentence: its cause's text, without a final full stop.

    httpx's own messages end with one ("Server disconnected without sending a response."), ours add another.
    """
    return str(exc.__cause__ or exc).strip().rstrip(".") or type(exc).__name__


def body_was_cut(exc: BaseException) -> bool:
    """Whether a connection error broke a response body mid-way (the server answered, then closed the connection
    before the body was complete), rather than failing to connect or closing before answering at all.
    """  # noqa: D205
    cause: BaseException | None = exc
    for _ in range(8):  # a chain is short; the bound also guards against a cyclic one
        if cause is None:
            return False
        if "without sending complete message body" in str(cause):  # h11's words, through httpcore and httpx
            return True
        cause = cause.__cause__ or cause.__context__
    return False

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from miniagent.errors import (
    ContentFiltered,
    ContextLengthExceeded,
    ModelAuthError,
    ModelBadRequest,
    ModelHTTPError,
    ModelOverloaded,
    ModelRateLimited,
)
from miniagent.models._http import error_class_for, parse_duration, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("", None), ("x", None)]
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "7"}, now=NOW) == 7.0
    date = format_datetime(datetime.fromtimestamp(NOW + 30, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, now=NOW) == 0.25
    assert parse_retry_after({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "6m0s"}, now=NOW) == 360
    reset = datetime.fromtimestamp(NOW + 12, tz=UTC).isoformat().replace("+00:00", "Z")
    assert parse_retry_after({"anthropic-ratelimit-tokens-reset": reset}, now=NOW) == pytest.approx(12.0)
    assert parse_retry_after({"retry-after": "garbage"}, now=NOW) is None
    assert parse_retry_after({}, now=NOW) is None


@pytest.mark.parametrize(
    ("status", "message", "cls", "retryable"),
    [
        (429, "slow down", ModelRateLimited, True),
        (529, "Overloaded", ModelOverloaded, True),
        (503, "unavailable", ModelOverloaded, True),
        (400, "This model's maximum context length is 8192 tokens", ContextLengthExceeded, False),
        (400, "flagged by the content filter", ContentFiltered, False),
        (401, "invalid api key", ModelAuthError, False),
        (404, "no such model", ModelBadRequest, False),
        (500, "boom", ModelHTTPError, True),
    ],
)
def test_error_classes(status: int, message: str, cls: type[ModelHTTPError], retryable: bool) -> None:
    found = error_class_for(status, message)
    assert found is cls
    assert found("x", model_name="m", status_code=status).retryable is retryable

from __future__ import annotations

import random
import time
from email.utils import formatdate

import pytest

from miniagent.errors import ModelAPIError, ModelOverloaded, ModelRateLimited, ModelTimeout, UserError
from miniagent.models._http import parse_retry_after
from miniagent.resilience import RetryPolicy, default_retryable
from miniagent.resilience._retry import Attempts


def test_decorrelated_jitter_stays_within_its_bounds() -> None:
    policy = RetryPolicy(max_attempts=50, base_delay_s=0.5, max_delay_s=8.0, rng=random.Random(7))
    previous: float | None = None
    delays = []
    for attempt in range(1, 40):
        delay = policy.next_delay(attempt, previous, None)
        low, high = 0.5, min(8.0, 3 * (previous if previous is not None else 0.5))
        assert low <= delay <= max(low, high)
        delays.append(delay)
        previous = delay
    assert max(delays) == pytest.approx(8.0)  # the cap is reached and never passed
    assert len(set(delays)) > 10  # jittered, not a fixed schedule


def test_same_seed_same_delays() -> None:
    def run(seed: int) -> list[float]:
        policy = RetryPolicy(rng=random.Random(seed))
        out, prev = [], None
        for attempt in range(1, 4):
            prev = policy.next_delay(attempt, prev, None)
            out.append(prev)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_retry_after_in_seconds_is_never_undercut() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, rng=random.Random(1))
    error = ModelRateLimited("429", model_name="m", retry_after_s=parse_retry_after({"Retry-After": "12"}))
    assert policy.next_delay(1, None, error) == 12.0


def test_retry_after_as_http_date_is_honoured() -> None:
    now = time.time()
    header = formatdate(now + 30, usegmt=True)
    wait = parse_retry_after({"retry-after": header}, now=now)
    assert wait is not None and 29.0 <= wait <= 30.0
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, rng=random.Random(1))
    assert policy.next_delay(1, None, ModelRateLimited("429", model_name="m", retry_after_s=wait)) == wait


def test_retry_after_can_be_ignored() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, respect_retry_after=False, rng=random.Random(1))
    assert policy.next_delay(1, None, ModelRateLimited("429", model_name="m", retry_after_s=60.0)) <= 1.0


def test_what_is_retryable_by_default() -> None:
    assert default_retryable(ModelOverloaded("503", model_name="m", status_code=503))
    assert default_retryable(ModelTimeout("slow", model_name="m"))
    assert default_retryable(ModelAPIError("cut", model_name="m"))
    assert not default_retryable(ModelAPIError("bad body", model_name="m", retryable=False))
    assert not default_retryable(RuntimeError("a bug"))
    custom = RetryPolicy(retry_on=lambda exc: isinstance(exc, KeyError))
    assert custom.is_retryable(KeyError("x")) and not custom.is_retryable(ModelTimeout("slow", model_name="m"))


def test_attempts_end_at_max_attempts_with_the_reason_in_the_message() -> None:
    attempts = Attempts(RetryPolicy(max_attempts=2, rng=random.Random(0)), started=0.0)
    error = ModelOverloaded("Overloaded.", model_name="m", status_code=503)
    attempts.begin()
    assert attempts.retry_delay(error, now=0.0) is not None
    attempts.begin()
    assert attempts.retry_delay(error, now=1.0) is None
    assert "gave up after 2 attempts" in str(error)


def test_server_wait_beyond_the_cap_is_not_waited_out() -> None:
    attempts = Attempts(RetryPolicy(max_retry_after_s=60.0), started=0.0)
    error = ModelRateLimited("Too many requests.", model_name="m", retry_after_s=3600.0)
    attempts.begin()
    assert attempts.retry_delay(error, now=0.0) is None
    assert "asked to wait 3600.0 s, longer than `max_retry_after_s` (60 s)" in str(error)


def test_a_retry_that_would_pass_the_deadline_is_not_started() -> None:
    attempts = Attempts(RetryPolicy(deadline_s=10.0, base_delay_s=1.0, max_delay_s=2.0), started=100.0)
    error = ModelTimeout("slow", model_name="m")
    attempts.begin()
    assert attempts.retry_delay(error, now=109.5) is None
    assert "retry deadline of 10 s" in str(error)


def test_non_retryable_errors_are_not_retried_or_annotated() -> None:
    attempts = Attempts(RetryPolicy(), started=0.0)
    error = ModelAPIError("Bad body.", model_name="m", retryable=False)
    attempts.begin()
    assert attempts.retry_delay(error, now=0.0) is None
    assert str(error) == "Bad body."


def test_none_never_retries() -> None:
    policy = RetryPolicy.none()
    assert policy.max_attempts == 1
    attempts = Attempts(policy, started=0.0)
    attempts.begin()
    error = ModelTimeout("slow", model_name="m")
    assert attempts.retry_delay(error, now=0.0) is None
    assert str(error) == "slow"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"base_delay_s": -1}, "base_delay_s"),
        ({"max_delay_s": -0.1}, "max_delay_s"),
        ({"base_delay_s": 5, "max_delay_s": 1}, "larger than `max_delay_s`"),
        ({"deadline_s": 0}, "deadline_s"),
        ({"deadline_s": 0.1, "base_delay_s": 1.0}, "no retry could ever start"),
        ({"max_retry_after_s": -1}, "max_retry_after_s"),
        ({"base_delay_s": float("nan")}, "base_delay_s"),
        ({"retry_on": 3}, "retry_on"),
    ],
)
def test_nonsensical_policies_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]

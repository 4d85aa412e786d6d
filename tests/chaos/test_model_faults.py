"""Upstream faults of a model API, end to end: agent -> resilience -> provider SDK -> loopback fault server.

Every case runs twice per provider (OpenAI-compatible and Anthropic-shaped servers), streamed and not, with a
SQLite store, under the hang guard of `run_case`. Each asserts the outcome, the requests the server saw (one
retry layer: N attempts are N requests), the delays the policy computed (on a `RecordingClock`: asserted, never
waited), and that the stored thread kept the user's message (and the answer when the run recovered).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import formatdate

import anyio
import pytest

from miniagent.errors import ModelAPIError, ModelOverloaded, ModelRateLimited, ModelTimeout
from miniagent.resilience import BreakerRegistry, ResilientModel, RetryPolicy
from miniagent.store import SQLStore
from miniagent.testing import RecordingClock

from ._fault_anthropic import ANTHROPIC
from ._fault_openai import OPENAI
from ._server import Dialect, Drop, FaultServer, Malformed, Slow, Stall, Status, Step, Text, refused_url
from .conftest import (
    ANSWER,
    Outcome,
    after_words,
    assert_backoff,
    assert_failed,
    assert_recovered,
    chaos_agent,
    model_for,
    openai_model,
    run_case,
)

pytestmark = pytest.mark.anyio

DIALECTS = pytest.mark.parametrize("dialect", [OPENAI, ANTHROPIC], ids=lambda d: d.name)
STREAMED = pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
PROMPT = "What is the weather in Paris?"
DEFAULT = RetryPolicy()


def overloaded(dialect: Dialect) -> Status:
    """The provider's 'overloaded' status: 503 from OpenAI-compatible servers, 529 from Anthropic."""
    return Status(503 if dialect is OPENAI else 529)


async def case(
    dialect: Dialect,
    script: list[Step],
    store: SQLStore,
    clock: RecordingClock,
    breakers: BreakerRegistry,
    *,
    streamed: bool,
    retry: RetryPolicy | None = DEFAULT,
    timeout_s: float | None = None,
) -> tuple[FaultServer, Outcome]:
    async with FaultServer(dialect, script, default=Text(ANSWER)) as server:
        agent = chaos_agent(model_for(server), clock, breakers, retry=retry, timeout_s=timeout_s)
        outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    return server, outcome


# ---- transient faults: recovered by the default policy --------------------------------------------------------


@DIALECTS
@STREAMED
async def test_500_once_is_retried_once(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    async with FaultServer(dialect, [Status(500)], default=Text(ANSWER)) as server:
        agent = chaos_agent(model_for(server), clock, breakers)  # the default policy: nothing configured
        outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    assert_recovered(outcome)
    assert server.count == 2
    assert [r.error_type for r in outcome.retries] == ["ModelHTTPError"]
    assert outcome.retries[0].upstream == model_for(server).upstream and outcome.retries[0].attempt == 1
    assert clock.sleeps == outcome.delays  # the delay announced is the delay slept
    assert_backoff(outcome.delays, base=DEFAULT.base_delay_s, cap=DEFAULT.max_delay_s)


@DIALECTS
@STREAMED
async def test_overloaded_several_times_backs_off_within_bounds(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    policy = RetryPolicy(max_attempts=4, base_delay_s=0.5, max_delay_s=4.0)
    async with FaultServer(dialect, [overloaded(dialect)] * 3, default=Text(ANSWER)) as server:
        outcome = await run_case(
            chaos_agent(model_for(server), clock, breakers, retry=policy), store, PROMPT, streamed=streamed
        )
    assert_recovered(outcome)
    assert server.count == 4
    assert [r.attempt for r in outcome.retries] == [1, 2, 3]
    assert {r.error_type for r in outcome.retries} == {"ModelOverloaded"}
    assert_backoff(outcome.delays, base=0.5, cap=4.0)
    assert clock.sleeps == outcome.delays


@DIALECTS
@STREAMED
async def test_overloaded_for_good_fails_after_exactly_max_attempts(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    policy = RetryPolicy(max_attempts=3)
    async with FaultServer(dialect, [overloaded(dialect)] * 10, default=Text(ANSWER)) as server:
        outcome = await run_case(
            chaos_agent(model_for(server), clock, breakers, retry=policy), store, PROMPT, streamed=streamed
        )
    status = "503" if dialect is OPENAI else "529"
    assert_failed(outcome, ModelOverloaded, status, "3 attempts")
    assert server.count == 3  # one retry layer, the SDK's own retries off: 3 attempts are 3 requests
    assert len(outcome.retries) == 2


@DIALECTS
@STREAMED
async def test_429_retry_after_seconds_is_honoured(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    script: list[Step] = [Status(429, headers={"retry-after": "7"})]
    server, outcome = await case(dialect, script, store, clock, breakers, streamed=streamed)
    assert_recovered(outcome)
    assert server.count == 2
    assert clock.sleeps == [7.0]  # longer than any jittered first delay (at most 1.5 s): the server's wait wins


@DIALECTS
async def test_429_retry_after_http_date_is_honoured(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    when = formatdate(time.time() + 5, usegmt=True)  # whole seconds: 4 to 5 s from now
    script: list[Step] = [Status(429, headers={"retry-after": when})]
    server, outcome = await case(dialect, script, store, clock, breakers, streamed=False)
    assert_recovered(outcome)
    assert server.count == 2
    assert len(clock.sleeps) == 1 and 3.5 <= clock.sleeps[0] <= 5.0


async def test_429_openai_rate_limit_reset_header_is_honoured(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    script: list[Step] = [Status(429, headers={"x-ratelimit-reset-requests": "6s", "x-ratelimit-reset-tokens": "2s"})]
    server, outcome = await case(OPENAI, script, store, clock, breakers, streamed=True)
    assert_recovered(outcome)
    assert server.count == 2
    assert clock.sleeps == [6.0]  # the longest of the reset headers


async def test_429_anthropic_rate_limit_reset_header_is_honoured(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    reset = (datetime.now(UTC) + timedelta(seconds=8)).isoformat().replace("+00:00", "Z")
    script: list[Step] = [Status(429, headers={"anthropic-ratelimit-requests-reset": reset})]
    server, outcome = await case(ANTHROPIC, script, store, clock, breakers, streamed=True)
    assert_recovered(outcome)
    assert server.count == 2
    assert len(clock.sleeps) == 1 and 7.0 <= clock.sleeps[0] <= 8.0


@DIALECTS
async def test_429_asking_longer_than_the_policy_allows_fails_at_once(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    policy = RetryPolicy(max_retry_after_s=30.0)
    script: list[Step] = [Status(429, headers={"retry-after": "3600"})]
    server, outcome = await case(dialect, script, store, clock, breakers, streamed=False, retry=policy)
    error = assert_failed(outcome, ModelRateLimited, "429", "3600", "max_retry_after_s")
    assert isinstance(error, ModelRateLimited) and error.retry_after_s == 3600.0
    assert server.count == 1 and clock.sleeps == []  # not waited out for an hour, not hammered either


@DIALECTS
@STREAMED
async def test_dropped_connection_is_retried(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    server, outcome = await case(dialect, [Drop()], store, clock, breakers, streamed=streamed)
    assert_recovered(outcome)
    assert server.count == 2
    assert len(clock.sleeps) == 1


@DIALECTS
@STREAMED
async def test_slow_response_times_out_and_is_retried(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """The first answer never comes (the server waits on an event never set); the 0.2 s read timeout is real."""
    never = anyio.Event()
    server, outcome = await case(
        dialect, [Slow(release=never)], store, clock, breakers, streamed=streamed, timeout_s=0.2
    )
    assert_recovered(outcome)
    assert server.count == 2
    assert [r.error_type for r in outcome.retries] == ["ModelTimeout"]


@DIALECTS
async def test_stream_going_silent_times_out_and_is_retried(
    dialect: Dialect, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    never = anyio.Event()
    server, outcome = await case(
        dialect, [Stall(after_words(dialect, 2), release=never)], store, clock, breakers, streamed=True, timeout_s=0.2
    )
    assert_recovered(outcome)
    assert server.count == 2
    assert [r.error_type for r in outcome.retries] == ["ModelTimeout"]
    assert len(outcome.restarts) == 1  # two events had streamed: the consumer is told


async def test_slow_for_good_is_a_model_timeout_after_max_attempts(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    never = anyio.Event()
    server, outcome = await case(
        OPENAI,
        [Slow(release=never)] * 2,
        store,
        clock,
        breakers,
        streamed=False,
        retry=RetryPolicy(max_attempts=2),
        timeout_s=0.2,
    )
    error = assert_failed(outcome, ModelTimeout, "did not answer in time", "2 attempts")
    assert isinstance(error, ModelTimeout) and error.stage == "request"
    assert server.count == 2


# ---- malformed bodies: a typed error naming the cause, never a raw JSONDecodeError -----------------------------


@DIALECTS
@STREAMED
async def test_malformed_json_with_200_is_a_clear_model_error(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A 200 whose JSON (or SSE event) is garbled: a typed error saying so, retried as its flag says."""
    policy = RetryPolicy(max_attempts=3)
    server, outcome = await case(dialect, [Malformed()] * 3, store, clock, breakers, streamed=streamed, retry=policy)
    error = assert_failed(outcome, ModelAPIError, "JSON")
    assert isinstance(error, ModelAPIError) and "Expecting value" in str(error)  # the parser's own words, wrapped
    # One retry layer that follows the error's own flag: all the attempts if retryable, else exactly one.
    assert server.count == (policy.max_attempts if error.retryable else 1)


LOGIN_PAGE = Malformed(
    b"<html><head><title>Sign in - Corp Proxy</title></head><body>...</body></html>", content_type="text/html"
)


@DIALECTS
@STREAMED
async def test_html_page_with_200_fails_at_once_pointing_at_the_url(
    dialect: Dialect, streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """A proxy's login page instead of the API (docs/models.md: a non-JSON 200 body is not worth retrying)."""
    server, outcome = await case(dialect, [LOGIN_PAGE] * 4, store, clock, breakers, streamed=streamed)
    error = assert_failed(outcome, ModelAPIError, "URL")
    assert isinstance(error, ModelAPIError) and not error.retryable
    assert server.count == 1 and clock.sleeps == []


# ---- permanently down ----------------------------------------------------------------------------------------


@STREAMED
async def test_permanently_down_fails_with_every_attempt_counted(
    streamed: bool, store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    agent = chaos_agent(openai_model(refused_url("/v1")), clock, breakers, retry=RetryPolicy(max_attempts=3))
    outcome = await run_case(agent, store, PROMPT, streamed=streamed)
    assert_failed(outcome, ModelAPIError, "Could not connect", "3 attempts")
    assert [r.attempt for r in outcome.retries] == [1, 2]
    assert len(clock.sleeps) == 2


# ---- one retry layer -------------------------------------------------------------------------------------------


async def test_an_already_resilient_model_is_not_wrapped_again(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    """The agent's own default policy (4 attempts) does not stack on the model's (3): 3 requests, not 12."""
    async with FaultServer(OPENAI, [Status(503)] * 20, default=Text(ANSWER)) as server:
        inner = ResilientModel(openai_model(server), retry=RetryPolicy(max_attempts=3), breaker=False, clock=clock)
        agent = chaos_agent(inner, clock, breakers)
        outcome = await run_case(agent, store, PROMPT, streamed=False)
    assert_failed(outcome, ModelOverloaded, "3 attempts")
    assert server.count == 3


async def test_retry_none_makes_one_attempt(store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry) -> None:
    server, outcome = await case(OPENAI, [Status(500)], store, clock, breakers, streamed=False, retry=None)
    assert_failed(outcome, ModelAPIError, "500")
    assert server.count == 1 and clock.sleeps == []


# ---- deadlines -------------------------------------------------------------------------------------------------


async def test_retry_deadline_stops_retrying_before_max_attempts(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    policy = RetryPolicy(max_attempts=10, base_delay_s=4.0, max_delay_s=4.0, deadline_s=10.0)
    server, outcome = await case(OPENAI, [Status(503)] * 10, store, clock, breakers, streamed=False, retry=policy)
    assert_failed(outcome, ModelOverloaded, "deadline")
    assert clock.sleeps == [4.0, 4.0]  # a third 4 s wait would end at 12 s, past the 10 s deadline
    assert server.count == 3


async def test_step_timeout_ends_a_step_stuck_in_retries(
    store: SQLStore, clock: RecordingClock, breakers: BreakerRegistry
) -> None:
    from miniagent.errors import RunTimeout

    policy = RetryPolicy(max_attempts=10, base_delay_s=4.0, max_delay_s=4.0, deadline_s=100.0)
    async with FaultServer(OPENAI, [Status(503)] * 10, default=Text(ANSWER)) as server:
        agent = chaos_agent(model_for(server), clock, breakers, retry=policy, step_timeout=10.0)
        outcome = await run_case(agent, store, PROMPT, streamed=False)
    error = assert_failed(outcome, RunTimeout, "step")
    assert isinstance(error, RunTimeout) and error.stage == "step" and error.timeout_s == 10.0
    assert server.count == 3  # attempts at 0, 4 and 8 s; the sleep to 12 s passes the step's deadline


# ---- real short delays (no injected clock) ----------------------------------------------------------------------


@DIALECTS
async def test_end_to_end_with_real_short_delays(dialect: Dialect, store: SQLStore) -> None:
    """The system clock and a 10-50 ms policy: the same recovery, really waited (`retry-after-ms` honoured too)."""
    from miniagent import Agent

    policy = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)
    script: list[Step] = [Status(500), Status(429, headers={"retry-after-ms": "30"}), Drop()]
    async with FaultServer(dialect, script, default=Text(ANSWER)) as server:
        agent = Agent(model_for(server), retry=policy, breakers=BreakerRegistry())
        outcome = await run_case(agent, store, PROMPT, streamed=True)
    assert_recovered(outcome)
    assert server.count == 4
    delays = outcome.delays
    assert len(delays) == 3 and delays[1] >= 0.03
    assert [r.error_type for r in outcome.retries] == ["ModelHTTPError", "ModelRateLimited", "ModelAPIError"]

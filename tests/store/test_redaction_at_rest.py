"""Secrets in exception texts never reach the database: run events, run errors and dead letters are redacted."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from miniagent import Agent
from miniagent.agent._persist import redact_events
from miniagent.errors import ModelAPIError, ModelOverloaded
from miniagent.events import RetryScheduled, RunFailed, TextDelta, ToolCallFinished, ToolCallStarted
from miniagent.messages import ModelMessage, ModelRequest, ModelResponse, ToolCallPart, prompt_part
from miniagent.observability import _redact
from miniagent.observability._redact import Redactor
from miniagent.resilience import BreakerRegistry, RetryPolicy
from miniagent.store import SQLStore, error_chain
from miniagent.testing import AgentInfo, FunctionModel, RecordingClock
from miniagent.tools import Tool
from miniagent.usage import Usage

pytestmark = pytest.mark.anyio

TOOL_SECRET = "sk-live-PLANTED123"
BEARER = "abc.def.ghi"
MODEL_ERROR = f"the gateway refused `Authorization: Bearer {BEARER}` for this model"


def lookup(city: str) -> str:
    """Look a city up in the partner API."""
    raise RuntimeError(f"partner API rejected key {TOOL_SECRET} for {city}")


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if info.step == 1:
        return ModelResponse([ToolCallPart("lookup", {"city": "Paris"}, "c1")])
    raise ModelAPIError(MODEL_ERROR, model_name="gateway-model")


async def _rows(store: SQLStore, sql: str) -> list[str]:
    async with store.engine.begin() as conn:
        return [" ".join(str(value) for value in row) for row in (await conn.execute(text(sql))).all()]


async def test_a_failed_run_stores_no_secret_in_its_events_error_or_dead_letter(store: SQLStore) -> None:
    clock = RecordingClock()
    agent = Agent(
        FunctionModel(_model),
        tools=[Tool(lookup, retry=RetryPolicy(max_attempts=2))],
        retry=RetryPolicy(max_attempts=2),
        clock=clock,
        breakers=BreakerRegistry(clock=clock),
    )
    with pytest.raises(ModelAPIError) as info:
        await agent.run("Weather in Paris?", user_id="alice", store=store)
    assert BEARER in str(info.value)  # the caller's own error is not changed: only what is stored

    [letter] = await store.list_dead_letters()
    run = await store.get_run(letter.run_id)
    assert run.status == "failed"
    events = [stored.event for stored in await store.events(letter.run_id)]
    # The secret-bearing events were stored, with the secret hidden and their other words kept.
    tool_retry = next(e for e in events if isinstance(e, RetryScheduled) and e.cause == "tool-error")
    assert "partner API rejected key [REDACTED] for Paris" in tool_retry.message
    finished = next(e for e in events if isinstance(e, ToolCallFinished))
    assert finished.outcome == "error" and "[REDACTED]" in str(finished.result)
    model_retry = next(e for e in events if isinstance(e, RetryScheduled) and e.cause == "model-error")
    assert "Bearer [REDACTED]" in model_retry.message
    failed = next(e for e in events if isinstance(e, RunFailed))
    assert "the gateway refused" in failed.message and "Bearer [REDACTED]" in failed.message
    assert run.error is not None and "Bearer [REDACTED]" in run.error
    assert "Bearer [REDACTED]" in letter.error and "Bearer [REDACTED]" in letter.error_chain[0].message

    # At rest, in the raw rows: neither secret anywhere in the run's events, its error or its dead letter.
    stored = [
        *await _rows(store, "SELECT data FROM run_events"),
        *await _rows(store, "SELECT error FROM runs"),
        *await _rows(store, "SELECT error, error_chain, meta, input FROM dead_letters"),
    ]
    assert len(stored) > 5
    for row in stored:
        assert TOOL_SECRET not in row and BEARER not in row, row


async def test_dead_letters_added_directly_are_redacted(store: SQLStore) -> None:
    try:
        try:
            raise ConnectionError("proxy said: password=hunter2hunter2 is wrong")
        except ConnectionError as exc:
            raise ModelOverloaded(f"down; retried with {TOOL_SECRET}", model_name="m", status_code=503) from exc
    except ModelOverloaded as exc:
        error = exc
    letter = await store.add_dead_letter(
        run_id="run-1",
        messages=[ModelRequest([prompt_part("hello")])],
        error=error,
        meta={"upstream_url": "https://app:s3cretpw@gateway/v1", "queue": "default"},
    )
    got = await store.get_dead_letter(letter.id)
    assert got.error == "ModelOverloaded: down; retried with [REDACTED]"
    assert [link.message for link in got.error_chain] == [
        "down; retried with [REDACTED]",
        "proxy said: password=[REDACTED] is wrong",
    ]
    assert got.meta == {"upstream_url": "https://app:[REDACTED]@gateway/v1", "queue": "default"}
    assert got.prompt == "hello"  # the input a replay needs is kept as it is

    reason = await store.add_dead_letter(run_id="run-2", messages=[], error=f"broker: token={TOOL_SECRET}")
    assert reason.error_chain[0].message == "broker: token=[REDACTED]"
    assert error_chain(f"Bearer {BEARER}")[0].message == "Bearer [REDACTED]"


def test_events_without_secrets_are_kept_as_they_are_and_configured_secrets_are_hidden(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_redact, "_default", Redactor(["corp-internal-value-42"]))  # as `configure` installs it
    clean = TextDelta("r", 1, "Sunny in Paris")
    started = ToolCallStarted("r", 1, "login", "c1", {"user": "ann", "api_key": "plain-looking-key"})
    leaky = RunFailed("r", "RuntimeError", "lost corp-internal-value-42 on the way", Usage())
    kept = redact_events([clean, started, leaky])
    assert kept[0] is clean
    assert isinstance(kept[1], ToolCallStarted) and kept[1].args == {"user": "ann", "api_key": "[REDACTED]"}
    assert isinstance(kept[2], RunFailed) and kept[2].message == "lost [REDACTED] on the way"
    assert leaky.message == "lost corp-internal-value-42 on the way"  # the live event is not touched
    assert redact_events([]) == []

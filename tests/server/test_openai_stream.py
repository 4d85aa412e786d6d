"""Streamed answers when things go wrong: a model stream restarted by the resilience layer, a client that leaves."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import openai
import pytest
from openai import AsyncOpenAI

from miniagent import Agent
from miniagent.errors import ModelAPIError
from miniagent.messages import ModelMessage
from miniagent.models import StreamChunk, ThinkingChunk
from miniagent.resilience import RetryPolicy
from miniagent.store import RunRecord, SQLStore
from miniagent.testing import AgentInfo, FunctionModel, RecordingClock

from .conftest import ApiKeyFactory, AppFactory, LiveServer, run_async

pytestmark = pytest.mark.anyio


def flaky_model(first_attempt: list[StreamChunk | str]) -> FunctionModel:
    """Streams `first_attempt` then breaks off (a retryable error); the next attempt streams `Fine, thanks.`."""
    attempts = 0

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[StreamChunk | str]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            for item in first_attempt:
                yield item
            raise ModelAPIError("connection reset by peer", model_name="flaky", retryable=True)
        yield "Fine,"
        yield " thanks."

    return FunctionModel(stream_function=stream, name="flaky")


def resilient_agent(model: FunctionModel) -> Agent[None, str]:
    """An agent that retries its model at once (a recording clock: the retry delay is not waited out)."""
    return Agent(model, name="flaky", retry=RetryPolicy(max_attempts=2), breakers=False, clock=RecordingClock())


async def load_run(settings: Any, run_id: str) -> RunRecord:
    async with await SQLStore.open(settings.database_url) as store:
        return await store.get_run(run_id, tenant_id="t1")


def wait_until_ended(settings: Any, run_id: str) -> RunRecord:
    """The run's record once it is no longer `running` (the state the server records when the client has left)."""
    while True:
        run: RunRecord = run_async(load_run(settings, run_id))
        if run.status != "running":
            return run
        time.sleep(0.01)


async def test_a_restart_after_text_was_sent_ends_the_stream_with_an_error(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, server_settings: Any
) -> None:
    with live_server(make_app(agents=[resilient_agent(flaky_model(["How are", " you"]))])) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0) as api:
            stream = await api.chat.completions.create(
                model="flaky", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            received: list[str] = []
            ids: set[str] = set()
            with pytest.raises(openai.APIError) as caught:
                async for chunk in stream:
                    ids.add(chunk.id)
                    received.extend(c.delta.content or "" for c in chunk.choices)
    # what was sent stays sent; nothing of the second attempt is mixed in after it
    assert "".join(received) == "How are you"
    assert "cannot take text back" in caught.value.message and "connection reset by peer" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "stream_restarted"
    [completion_id] = ids
    run = run_async(load_run(server_settings, completion_id.removeprefix("chatcmpl-")))
    assert run.status == "cancelled"


async def test_a_restart_before_any_text_was_sent_is_invisible(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    # the first attempt only "thought" (nothing a client is sent) before breaking off
    model = flaky_model([ThinkingChunk(0, "hmm")])
    with live_server(make_app(agents=[resilient_agent(model)])) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0) as api:
            stream = await api.chat.completions.create(
                model="flaky",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Fine, thanks."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


async def test_a_non_streamed_answer_survives_a_restart(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    with live_server(make_app(agents=[resilient_agent(flaky_model(["How are", " you"]))])) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0) as api:
            answer = await api.chat.completions.create(model="flaky", messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == "Fine, thanks."


async def test_a_failed_run_is_an_upstream_error(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, server_settings: Any
) -> None:
    async def broken(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        if not messages:  # never: the `yield` makes this an async generator
            yield "nothing"
        raise ModelAPIError("the provider is down", model_name="down", retryable=False)

    agent = Agent(FunctionModel(stream_function=broken, name="down"), name="down", retry=None, breakers=False)
    with live_server(make_app(agents=[agent])) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0) as api:
            with pytest.raises(openai.InternalServerError) as whole:
                await api.chat.completions.create(model="down", messages=[{"role": "user", "content": "Hi"}])
            stream = await api.chat.completions.create(
                model="down", messages=[{"role": "user", "content": "Hi"}], stream=True
            )
            with pytest.raises(openai.APIError) as streamed:
                async for _ in stream:
                    pass
    assert whole.value.status_code == 502 and whole.value.code == "upstream_error"
    assert "the provider is down" in whole.value.message
    assert isinstance(streamed.value.body, dict) and streamed.value.body["code"] == "upstream_error"


async def test_a_client_that_leaves_cancels_the_run(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer, server_settings: Any
) -> None:
    release = anyio.Event()  # never set: the model would stream forever

    async def endless(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
        yield "Once upon a time"
        await release.wait()
        yield "never sent"

    agent = Agent(FunctionModel(stream_function=endless, name="endless"), name="endless")
    with live_server(make_app(agents=[agent])) as url:
        async with AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key(), max_retries=0) as api:
            stream = await api.chat.completions.create(
                model="endless", messages=[{"role": "user", "content": "A story"}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()
        run_id = chunk.id.removeprefix("chatcmpl-")
        run = wait_until_ended(server_settings, run_id)
    assert run.status == "cancelled"
    assert run.usage.requests == 0  # the model's only response never completed

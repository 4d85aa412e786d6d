"""Daily token and cost budgets on the API, through the real app: runs are charged (inline, streamed, background),
a used-up budget refuses the next request before the model runs, with a clear error, until UTC midnight.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from miniagent.limits import DAY_S, RateLimiter, day_of
from miniagent.server._limits import charge_usage, current_principal
from miniagent.server._state import Principal
from miniagent.settings import Settings
from miniagent.testing import ManualClock
from miniagent.usage import Usage

from ._limits_support import CHAT, START, Counter, bearer, limited_app
from .conftest import ApiKeyFactory, AppFactory

MIDNIGHT = (day_of(START) + 1) * DAY_S


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest, server_settings: Settings) -> Settings:
    if request.param == "memory":
        return server_settings
    url: str = request.getfixturevalue("redis_url")
    return server_settings.model_copy(update={"redis_url": url})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def counter() -> Counter:
    return Counter()


def _usage(client: TestClient, limiter: RateLimiter, key: str) -> tuple[int, float]:
    async def read() -> tuple[int, float]:
        usage = await limiter.usage(key)
        return usage.tokens, usage.usd

    result: tuple[int, float] = client.portal.call(read)  # type: ignore[union-attr]  # set inside `with`
    return result


def test_a_used_up_token_budget_refuses_before_the_model_runs_until_midnight(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, budget_tokens_per_day=10)
    key = bearer(api_key())
    with TestClient(app) as client:
        limiter = app.state.miniagent.limiter
        first = client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert first.status_code == 200
        spent = first.json()["usage"]["total_tokens"]
        assert spent == 7  # under the budget: one more request may run (and go over it)
        assert "x-ratelimit-limit" not in first.headers  # a budget alone sets no rate headers
        assert _usage(client, limiter, "user:t1/u1") == (7, 0.0)
        assert client.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200
        refused = client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert refused.status_code == 429
        assert counter.calls == 2  # refused before the model ran
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
        message = error["message"]
        assert "daily budget of this API key (10 tokens per day) is used up (14 used)" in message
        assert "resets at 2024-10-05T00:00:00Z (in 23 h 00 min)" in message
        assert "MINIAGENT_BUDGET_TOKENS_PER_DAY" in message
        assert refused.headers["retry-after"] == str(int(MIDNIGHT - START))
        assert refused.headers["x-should-retry"] == "false"
        clock.advance(MIDNIGHT - START - 1.0)  # 23:59:59: still today
        assert client.get("/v1/models", headers=key).status_code == 429
        clock.advance(1.0)  # midnight UTC: a new day, a new budget
        assert client.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200
        assert counter.calls == 3


def test_the_native_api_shows_the_budget_in_its_own_error_shape(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, budget_usd_per_day=0.5)
    key = bearer(api_key(scopes=("threads", "chat")))
    principal = Principal("t1", "u1", frozenset({"chat"}), "jwt")
    with TestClient(app) as client:
        state = app.state.miniagent
        assert client.get("/api/v1/threads", headers=key).status_code == 200
        client.portal.call(charge_usage, state, principal, Usage(input_tokens=100, cost_usd=0.75))  # type: ignore[union-attr]  # inside `with`
        refused = client.get("/api/v1/threads", headers=key)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert "daily budget of this user (0.5 USD per day) is used up (0.75 USD spent)" in error["message"]
        assert "MINIAGENT_BUDGET_USD_PER_DAY" in error["message"]
        assert error["budget"] == "usd/day" and error["subject"] == "user"
        assert (error["limit"], error["used"], error["resets_at"]) == (0.5, 0.75, "2024-10-05T00:00:00Z")


def test_streamed_and_background_runs_are_charged_to_the_key_and_the_user(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, budget_tokens_per_day=1_000_000)
    key = bearer(api_key(scopes=("chat", "threads")))
    with TestClient(app) as client:
        limiter = app.state.miniagent.limiter
        streamed = client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            headers=key,
        )
        assert streamed.status_code == 200
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        stream_tokens = next(c["usage"]["total_tokens"] for c in chunks if c.get("usage"))
        started = client.post(
            "/api/v1/runs", json={"agent": "counter", "prompt": "hi", "background": True}, headers=key
        )
        assert started.status_code == 202
        run_id = started.json()["id"]
        events = client.get(f"/api/v1/runs/{run_id}/events", headers=key)  # streams to the run's end
        assert events.status_code == 200
        run = client.get(f"/api/v1/runs/{run_id}", headers=key).json()
        assert run["status"] == "succeeded"
        client.get("/v1/models", headers=key)  # the next admission waits for charges in flight
        tokens, _ = _usage(client, limiter, "user:t1/u1")
        assert tokens == stream_tokens + run["usage"]["input_tokens"] + run["usage"]["output_tokens"]
        keys = [p for p in counter.principals if p is not None]
        assert len(keys) == 2 and {p.user_id for p in keys} == {"u1"}
        assert keys[0].key_id is not None
        assert _usage(client, limiter, f"key:{keys[0].key_id}") == (tokens, 0.0)


def test_the_principal_is_the_current_one_inside_runs(
    make_app: AppFactory, server_settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, server_settings, clock, counter)  # no limits: the principal is still known
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(api_key(user="ann"))).status_code == 200
    (seen,) = counter.principals
    assert seen is not None and (seen.tenant_id, seen.user_id, seen.via) == ("t1", "ann", "api-key")
    assert current_principal.get() is None  # only inside the request


def test_the_openai_sdk_does_not_retry_a_budget_refusal(
    make_app: AppFactory, server_settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, server_settings, clock, counter, budget_tokens_per_day=0)
    with TestClient(app) as transport:
        sent: list[Any] = []
        transport.event_hooks["request"].append(sent.append)
        sdk = openai.OpenAI(base_url=f"{transport.base_url}/v1", api_key=api_key(), http_client=transport)
        assert sdk.max_retries == 2
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="counter", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "budget_exceeded"
    assert len(sent) == 1 and counter.calls == 0

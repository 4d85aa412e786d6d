"""Requests per minute on the API, through the real app: 429 with `Retry-After` and `X-RateLimit-*`, per key and
per user, in process and in Redis (where two app instances, two replicas, share the limit).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import openai
import pytest
from fastapi.testclient import TestClient

from miniagent.limits import InMemoryRateLimiter, RedisRateLimiter
from miniagent.server._limits import subject_keys
from miniagent.server._state import Principal
from miniagent.settings import Settings
from miniagent.testing import ManualClock

from ._limits_support import CHAT, START, Counter, bearer, limited_app
from .conftest import ApiKeyFactory, AppFactory


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


def test_the_burst_passes_then_429_with_retry_after_and_ratelimit_headers(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, rate_limit_rpm=60, rate_limit_burst=2)
    key = bearer(api_key())
    with TestClient(app) as client:
        limiter = app.state.miniagent.limiter
        assert isinstance(limiter, RedisRateLimiter if settings.redis_url else InMemoryRateLimiter)
        first = client.post("/v1/chat/completions", json=CHAT, headers=key)
        second = client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert (first.status_code, second.status_code) == (200, 200)
        assert [(r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) for r in (first, second)] == [
            ("2", "1"),
            ("2", "0"),
        ]
        assert (first.headers["x-ratelimit-reset"], second.headers["x-ratelimit-reset"]) == ("1", "2")
        refused = client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-ratelimit-remaining"] == "0" and refused.headers["x-ratelimit-limit"] == "2"
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
        assert "60 per minute" in error["message"] and "Retry in 1 s" in error["message"]
        assert counter.calls == 2  # the refused request never reached the model
        clock.advance(1.0)
        again = client.post("/v1/chat/completions", json=CHAT, headers=key)
        assert again.status_code == 200 and again.headers["x-ratelimit-remaining"] == "0"
        models = client.get("/v1/models", headers=key)  # an endpoint returning a model: headers too
        assert models.status_code == 429
        clock.advance(2.0)
        models = client.get("/v1/models", headers=key)
        assert models.status_code == 200 and models.headers["x-ratelimit-remaining"] == "1"
    assert counter.calls == 3


def test_keys_of_one_user_share_the_user_bucket(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, rate_limit_rpm=60, rate_limit_burst=2)
    laptop, phone, other = bearer(api_key(user="u1")), bearer(api_key(user="u1")), bearer(api_key(user="u2"))
    with TestClient(app) as client:
        assert client.get("/v1/models", headers=laptop).status_code == 200
        assert client.get("/v1/models", headers=laptop).status_code == 200
        refused = client.get("/v1/models", headers=phone)  # the phone's key has tokens, its user has none
        assert refused.status_code == 429
        assert "for this user" in refused.json()["error"]["message"]
        assert client.get("/v1/models", headers=other).status_code == 200  # another user of the same tenant
        assert client.get("/v1/models", headers=other).headers["x-ratelimit-remaining"] == "0"


def test_a_jwt_principal_without_a_key_is_limited_per_user() -> None:
    jwt_user = Principal("t:1", "u/1", frozenset({"chat"}), "jwt")
    assert subject_keys(jwt_user) == ("user:t%3A1/u%2F1",)  # escaped: no two tenants' users can collide
    by_key = Principal("t1", "u1", frozenset({"chat"}), "api-key", key_id="k9")
    assert subject_keys(by_key) == ("key:k9", "user:t1/u1")


def test_the_native_api_is_limited_and_probes_and_admin_are_not(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, rate_limit_rpm=1, rate_limit_burst=1)
    user = bearer(api_key(scopes=("chat", "threads")))
    admin = bearer(api_key(user="root", scopes=("admin",)))
    with TestClient(app) as client:
        listed = client.get("/api/v1/threads", headers=user)
        assert listed.status_code == 200 and listed.headers["x-ratelimit-remaining"] == "0"
        refused = client.get("/api/v1/threads", headers=user)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert refused.json()["error"]["code"] == "rate_limited"
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            assert client.get("/api/v1/admin/keys", headers=admin).status_code == 200


def test_without_limits_nothing_is_limited_nor_set_up(
    make_app: AppFactory, server_settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, server_settings, clock, counter)
    key = bearer(api_key())
    with TestClient(app) as client:
        answers = [client.get("/v1/models", headers=key) for _ in range(20)]
        assert {r.status_code for r in answers} == {200}
        assert all("x-ratelimit-limit" not in r.headers for r in answers)
        assert app.state.miniagent.limiter is None


def test_two_replicas_on_one_redis_share_the_limit(
    make_app: AppFactory, server_settings: Settings, redis_url: str, counter: Counter, api_key: ApiKeyFactory
) -> None:
    clock = ManualClock(START)
    shared = server_settings.model_copy(update={"redis_url": redis_url})
    one = limited_app(make_app, shared, clock, counter, rate_limit_rpm=60, rate_limit_burst=3)
    two = limited_app(make_app, shared, clock, counter, rate_limit_rpm=60, rate_limit_burst=3)
    key = bearer(api_key())
    with TestClient(one) as a, TestClient(two) as b:
        codes = [(a if i % 2 == 0 else b).get("/v1/models", headers=key).status_code for i in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        clock.advance(1.0)
        assert b.get("/v1/models", headers=key).status_code == 200
        assert a.get("/v1/models", headers=key).status_code == 429


def test_an_unreachable_redis_refuses_with_503(
    make_app: AppFactory, server_settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        url = f"redis://:pw-not-shown@127.0.0.1:{sock.getsockname()[1]}/0"
        app = limited_app(
            make_app, server_settings.model_copy(update={"redis_url": url}), clock, counter, rate_limit_rpm=60
        )
        key = bearer(api_key())
        with TestClient(app) as client:
            refused = client.post("/v1/chat/completions", json=CHAT, headers=key)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    error = refused.json()["error"]
    assert error["code"] == "limits_unavailable" and "pw-not-shown" not in refused.text
    assert counter.calls == 0


@pytest.fixture
def sdk_client(
    make_app: AppFactory, server_settings: Settings, clock: ManualClock, counter: Counter
) -> Iterator[TestClient]:
    app = limited_app(make_app, server_settings, clock, counter, rate_limit_rpm=60, rate_limit_burst=1)
    with TestClient(app) as client:
        yield client


def test_the_openai_sdk_sees_a_rate_limit_error(sdk_client: TestClient, api_key: ApiKeyFactory) -> None:
    sent: list[str] = []
    sdk_client.event_hooks["request"].append(lambda request: sent.append(request.url.path))
    client = openai.OpenAI(
        base_url=f"{sdk_client.base_url}/v1", api_key=api_key(), http_client=sdk_client, max_retries=0
    )
    answer = client.chat.completions.create(model="counter", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "ok"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="counter", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "rate_limited" and caught.value.response.headers["retry-after"] == "1"
    assert sent == ["/v1/chat/completions", "/v1/chat/completions"]


def test_each_websocket_message_counts_like_a_request(
    make_app: AppFactory, settings: Settings, clock: ManualClock, counter: Counter, api_key: ApiKeyFactory
) -> None:
    app = limited_app(make_app, settings, clock, counter, rate_limit_rpm=60, rate_limit_burst=1)
    with TestClient(app) as client, client.websocket_connect("/api/v1/ws", headers=bearer(api_key())) as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_json({"type": "message", "content": "one", "agent": "counter"})
        seen = [ws.receive_json()]
        while seen[-1]["type"] != "done":
            seen.append(ws.receive_json())
        assert seen[0]["type"] == "run" and seen[-1]["run"]["status"] == "succeeded"
        ws.send_json({"type": "message", "content": "two", "agent": "counter"})
        refused = ws.receive_json()
        assert (refused["type"], refused["code"], refused["status"]) == ("error", "rate_limited", 429)
        assert "Retry in 1 s" in refused["message"]
        clock.advance(1.0)
        ws.send_json({"type": "message", "content": "three", "agent": "counter"})
        third = [ws.receive_json()]
        while third[-1]["type"] != "done":  # let the run end before the app shuts down
            third.append(ws.receive_json())
        assert third[0]["type"] == "run" and third[-1]["run"]["status"] == "succeeded"
    assert counter.calls == 2

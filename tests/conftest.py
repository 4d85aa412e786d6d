"""Shared fixtures: asyncio for async tests, and an environment with no provider keys or proxies."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.redis_service",  # the `redis_server` / `redis_url` fixtures (a real redis-server)
    "tests.rabbitmq_service",  # the `rabbitmq_server` / `rabbitmq_url` fixtures (a real RabbitMQ node)
]

_CLEARED_PREFIXES = ("OPENAI_", "ANTHROPIC_", "MINIAGENT_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test sees a real key, a proxy or the developer's miniagent settings, nor writes to the real data dir."""
    for name in list(os.environ):
        if name.upper().startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)
    # The default store (chat, runs with a thread) lives in a temp dir, inherited by subprocesses too.
    monkeypatch.setenv("MINIAGENT_DATA_DIR", str(tmp_path_factory.mktemp("data")))

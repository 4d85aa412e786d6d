"""The Redis check of `miniagent doctor` and `/readyz`, against a real redis-server."""

from __future__ import annotations

import socket

import pytest

from miniagent.observability import CheckRegistry, run_checks
from miniagent.observability._health import default_registry, redis_check
from miniagent.observability._health_redis import _version
from miniagent.settings import Settings

pytestmark = pytest.mark.anyio


async def _run(settings: Settings) -> tuple[str, str, str | None]:
    report = await run_checks(settings, registry=CheckRegistry([redis_check()]))
    outcome = report.get("redis")
    assert outcome is not None
    return outcome.result.status, outcome.result.detail, outcome.result.fix


async def test_skipped_without_a_redis_url() -> None:
    status, detail, _ = await _run(Settings())
    assert status == "skip" and "MINIAGENT_REDIS_URL is not set" in detail


async def test_a_running_redis_is_ok_with_version_and_latency(redis_url: str) -> None:
    status, detail, _ = await _run(Settings(redis_url=redis_url))
    assert status == "ok"
    assert detail.startswith("Redis ") and f"at {redis_url} answers PING in " in detail and detail.endswith(" ms")


async def test_an_unreachable_redis_fails_with_the_url_redacted_and_the_fix() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        port = sock.getsockname()[1]
        status, detail, fix = await _run(Settings(redis_url=f"redis://:topsecret@127.0.0.1:{port}/0"))
    assert status == "fail"
    assert f"redis://:***@127.0.0.1:{port}/0 does not answer" in detail and "topsecret" not in detail
    assert fix is not None and "MINIAGENT_REDIS_URL" in fix


async def test_a_url_that_is_not_redis_fails() -> None:
    status, detail, fix = await _run(Settings(redis_url="http://user:pw@cache:6379"))
    assert status == "fail" and "is not a Redis URL" in detail and "pw@" not in detail
    assert fix is not None and "redis://" in fix


def test_it_is_a_critical_readiness_check_of_the_default_registry() -> None:
    check = default_registry.get("redis")
    assert check is not None and check.kind == "readiness" and check.critical


def test_versions_compare_by_major_and_minor() -> None:
    assert _version("7.0.15") == (7, 0) and _version("4.0.9") < (5, 0) and _version("6.2-rc1") == (6, 2)

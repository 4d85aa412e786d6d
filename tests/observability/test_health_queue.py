"""The job queue check of `miniagent doctor` and `/readyz`: the embedded SQLite queue, a real Redis, a queue that
does not answer (reported, not critical), a bad URL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from miniagent.observability import CheckRegistry, run_checks
from miniagent.observability._health import queue_check
from miniagent.settings import Settings

pytestmark = pytest.mark.anyio


async def _run(settings: Settings) -> tuple[str, str, str | None, bool]:
    report = await run_checks(settings, registry=CheckRegistry([queue_check()]))
    outcome = report.get("queue")
    assert outcome is not None
    return outcome.result.status, outcome.result.detail, outcome.result.fix, report.ok


async def test_the_embedded_queue_answers(tmp_path: Path) -> None:
    status, detail, _, ok = await _run(Settings(data_dir=tmp_path))
    assert status == "ok" and detail.startswith("sqlite queue at sqlite:///") and "0 job(s) waiting" in detail
    assert ok


async def test_a_redis_queue_answers(redis_url: str) -> None:
    status, detail, _, _ = await _run(Settings(queue_url=redis_url))
    assert status == "ok" and detail.startswith(f"redis queue at {redis_url}")


async def test_an_unreachable_queue_fails_without_failing_readiness() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, detail, fix, ok = await _run(Settings(queue_url=f"redis://:p4ss@127.0.0.1:{port}/0"))
    assert status == "fail" and "background runs are refused" in detail and f"127.0.0.1:{port}" in detail
    assert "p4ss" not in detail and fix is not None and "synchronous requests keep working" in fix
    assert ok  # not critical: the replica still serves synchronous requests


async def test_a_bad_queue_url_fails_with_the_fix() -> None:
    status, detail, fix, _ = await _run(Settings(queue_url="kafka://broker:9092"))
    assert status == "fail" and "MINIAGENT_QUEUE_URL must start with" in detail
    assert fix is not None and "amqp://" in fix

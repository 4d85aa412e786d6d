"""`miniagent worker` as a real process: executes queued runs, exits cleanly on SIGTERM, refuses an unreachable
queue with a clear error."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from miniagent.queue import Job, open_queue
from miniagent.store import SQLStore

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MINIAGENT_DATA_DIR=str(tmp_path),
        MINIAGENT_SERVER_AGENTS="tests.server.served_agents:support",
        MINIAGENT_QUEUE_LEASE_S="3",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _miniagent() -> list[str]:
    return [sys.executable, "-m", "miniagent.cli"]


async def test_the_worker_runs_queued_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'miniagent.db'}")
    queue = open_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    await queue.connect()
    try:
        ids = []
        for i in range(3):
            record, _ = await store.enqueue_run(agent_name="support", prompt=f"hello {i}", user_id="u")
            await queue.enqueue(
                Job(run_id=record.id, tenant_id="default", user_id="u", agent="support", thread_id=record.thread_id)
            )
            ids.append(record.id)
        proc = subprocess.Popen(  # noqa: ASYNC220  # started once, read after it ends
            [*_miniagent(), "worker", "--concurrency", "2"],
            cwd=ROOT,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with anyio.fail_after(60):  # a hang guard, not a timing assertion
                while {(await store.get_run(i)).status for i in ids} != {"succeeded"}:
                    assert proc.poll() is None, proc.communicate()
                    await anyio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "miniagent worker" in err and "3 completed" in err
        assert await queue.depth() == 0
    finally:
        await queue.close()
        await store.close()


def test_an_unreachable_queue_is_a_clear_error_at_start(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [*_miniagent(), "worker"],
        cwd=ROOT,
        env=_env(tmp_path, MINIAGENT_QUEUE_URL=f"redis://:hunter2@127.0.0.1:{port}/0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "queue" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_a_bad_queue_url_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_miniagent(), "worker"],
        cwd=ROOT,
        env=_env(tmp_path, MINIAGENT_QUEUE_URL="kafka://localhost:9092"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "MINIAGENT_QUEUE_URL must start with" in result.stderr

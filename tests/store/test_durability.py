from __future__ import annotations

import signal

import anyio
import pytest

from miniagent.messages import ModelRequest, ModelResponse, ToolReturnPart
from miniagent.store import SQLStore

from .conftest import run_script

pytestmark = pytest.mark.anyio


async def test_sigkill_mid_run_keeps_committed_messages_and_marks_the_run_interrupted(store: SQLStore) -> None:
    thread = await store.create_thread()
    proc = run_script("-m", "tests.store.crash_agent", store.url, thread.id)
    try:
        # Wait on state: the first step (tool call + tool result) is committed, the second request is pending.
        for _ in range(300):
            if len(await store.history(thread.id)) >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1]
            await anyio.sleep(0.05)
        else:
            pytest.fail("the first step was never committed")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # "Restart": a fresh store on the same database finds everything committed, and the dead run.
    restarted = await SQLStore.open(store.url, migrate=False)
    try:
        interrupted = await restarted.recover_interrupted()
        assert len(interrupted) == 1
        history = await restarted.history(thread.id)
        kinds = [type(h.message) for h in history]
        assert kinds == [ModelRequest, ModelResponse, ModelRequest]
        tool_result = history[2].message.parts[0]
        assert isinstance(tool_result, ToolReturnPart) and tool_result.content == "value of answer"
        record = await restarted.get_run(interrupted[0])
        assert record.status == "interrupted" and record.steps == 1 and "stopped" in (record.error or "")
        assert {h.run_id for h in history} == {record.id}
        events = await restarted.events(record.id)
        assert [e.event.kind for e in events][:2] == ["run-started", "model-request-started"]
        assert await restarted.recover_interrupted() == []  # idempotent
    finally:
        await restarted.close()

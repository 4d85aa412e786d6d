from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_chat_shows_a_retry_and_restarts_the_answer_on_a_fresh_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "miniagent.cli", "chat", "--agent", "tests.cli.flaky_agent:agent"],
        input="hi\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    cut = next(i for i, line in enumerate(lines) if line.endswith("bot> Hello "))
    assert lines[cut + 1].startswith("[retrying in ") and "The stream was cut after 1 event." in lines[cut + 1]
    assert lines[cut + 2] == "[the answer was cut off and starts again (flaky); ignore the text above]"
    assert lines[cut + 3] == "bot> Hello world"

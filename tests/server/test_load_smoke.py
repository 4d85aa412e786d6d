"""A short smoke load of `POST /v1/chat/completions`: 20 concurrent clients for 10 s, then 20 SSE streams for 5 s,
with zero errors.

`bench/server_load.py --smoke` runs it as the benchmark does: the server in its own process (uvicorn, a fresh
SQLite data dir, a real API key made through the store), locust headless in another (locust monkey-patches the
standard library with gevent, so it never runs inside pytest). Every answer is checked by the locustfile (status
200, the agent's text, `[DONE]` at the end of each stream, no error event). No timing is asserted: only that
requests were made and none failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_load_has_zero_errors(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "server_load.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    report = done.stdout[-3000:] + done.stderr[-3000:]
    assert out.exists(), report
    steps = {step["name"]: step for step in json.loads(out.read_text())["steps"]}
    assert set(steps) == {"ChatUser", "StreamUser"}, report
    for step in steps.values():
        assert step["users"] == 20
        assert step["requests"] > 0, report  # the load really ran
        assert step["failures"] == 0, report
        assert step["errors"] == [], report
    assert done.returncode == 0, report

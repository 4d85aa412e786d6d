"""`miniagent serve` as a real subprocess: it answers, shuts down cleanly on SIGTERM, and refuses bad settings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "miniagent.cli", "serve", *args],
        cwd=_ROOT,
        env={**os.environ, "PYTHONPATH": str(_ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(proc: subprocess.Popen[str], url: str) -> httpx.Response:
    """Poll until the server answers (the process state decides, with a generous overall bound)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"miniagent serve exited with {proc.returncode}: {err}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    pytest.fail("miniagent serve did not answer")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_and_stops_on_sigterm(workers: int, tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "agents.toml"
    config.write_text('[agents]\nhelper = "tests.server.served_agents:billing"\n')
    proc = _serve(
        "tests.server.served_agents:support", "--port", str(port), "--workers", str(workers), "--config", str(config),
        env={"MINIAGENT_SERVER_PEPPER": "serve-test-pepper-0123456789"},
    )  # fmt: skip
    try:
        health = _wait_ready(proc, f"http://127.0.0.1:{port}/healthz")
        assert health.status_code == 200 and health.json()["ok"] is True
        assert health.headers["x-request-id"]
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        unauthorized = httpx.get(f"http://127.0.0.1:{port}/api/v1/admin/keys")
        assert unauthorized.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    # uvicorn re-raises the signal it caught once shut down (one process), or exits 0 (the supervisor of workers)
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "helper, support" in err and "Application shutdown complete" in err
    assert "Traceback" not in err and "alembic" not in err


def test_serve_refuses_bad_settings() -> None:
    from miniagent.cli import app

    result = CliRunner().invoke(app, ["serve", "no_such_module_xyz:agent"])
    assert result.exit_code == 1 and "Cannot import 'no_such_module_xyz'" in result.output
    remote = {"MINIAGENT_DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1:1/db"}
    result = CliRunner().invoke(app, ["serve"], env=remote)
    assert result.exit_code == 1 and "MINIAGENT_SERVER_PEPPER" in result.output
    result = CliRunner().invoke(app, ["serve", "--workers", "2", "--reload"])
    assert result.exit_code == 2 and "--reload and --workers" in result.output
    result = CliRunner().invoke(app, ["serve", "--config", "/no/such/file.toml"])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = CliRunner().invoke(app, ["serve", "--workers", "2"], env={"MINIAGENT_METRICS_PORT": "9464"})
    assert result.exit_code == 2 and "MINIAGENT_METRICS_PORT" in result.output

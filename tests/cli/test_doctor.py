"""`miniagent doctor`: the table, `--json`, `--readiness`, `--model`, exit codes, and no key in any output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miniagent.cli import app
from tests.observability.models_server import closed_port, models_server

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-test-SECRET123"


@pytest.fixture(autouse=True)
def _offline_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default model is the echo one, so the report does not depend on the local extra being installed.
    monkeypatch.setenv("MINIAGENT_DEFAULT_MODEL", "test")
    monkeypatch.setenv("COLUMNS", "200")


def _doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["doctor", *args])
    return result.exit_code, result.output


def test_healthy_configuration_exits_0_with_a_table() -> None:
    code, output = _doctor()
    assert code == 0, output
    for name in ("default model", "database", "data dir", "disk space", "sqlite extensions", "versions"):
        assert name in output
    assert "does not exist yet" in output  # the fresh data dir's store: a warning, with its fix
    assert "miniagent migrate" in output
    assert "all critical checks passed" in output


def test_json_report_is_valid_and_readiness_runs_only_readiness_checks() -> None:
    code, output = _doctor("--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["ok"] is True and report["status"] in ("ok", "warn")
    assert {c["name"] for c in report["checks"]} >= {"default model", "database", "versions"}
    code, output = _doctor("--json", "--readiness")
    assert code == 0, output
    assert {c["kind"] for c in json.loads(output)["checks"]} <= {"readiness", "both"}


def test_unreachable_model_exits_1() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code, output = _doctor("--model", f"openai-compatible:{url}#qwen", "--json")
    assert code == 1
    report = json.loads(output)
    (check,) = [c for c in report["checks"] if c["name"] == f"model openai-compatible:{url}#qwen"]
    assert check["status"] == "fail" and check["detail"] == f"unreachable: connection refused at {url}"
    assert report["ok"] is False and report["status"] == "fail"


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_no_key_appears_in_the_output(monkeypatch: pytest.MonkeyPatch, fmt: list[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with models_server(key="sk-the-right-one", models=["gpt-4o-mini"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code, output = _doctor(
            "--model", "openai:gpt-4o-mini", "--model", f"openai-compatible:{server.root}/broken/v1#m", *fmt
        )
    assert code == 1
    assert "key rejected" in output and "OPENAI_API_KEY" in output and "server error" in output
    assert server.seen_keys == [SECRET, SECRET]  # the key was sent...
    assert "SECRET123" not in output  # ...and never shown


def test_the_default_model_is_not_checked_twice() -> None:
    code, output = _doctor("--model", "test", "--json")
    assert code == 0
    names = [c["name"] for c in json.loads(output)["checks"]]
    assert "default model" in names and "model test" not in names


def test_an_empty_model_is_a_usage_error() -> None:
    code, output = _doctor("--model", " ")
    assert code == 2 and "`--model` needs a model string" in output


def test_doctor_runs_as_a_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "miniagent.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] is True
    closed = f"openai-compatible:http://127.0.0.1:{closed_port()}/v1#m"
    proc = subprocess.run(
        [sys.executable, "-m", "miniagent.cli", "doctor", "--model", closed],
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=120,
    )
    assert proc.returncode == 1
    assert "connection refused" in proc.stdout and "a critical check failed" in proc.stdout

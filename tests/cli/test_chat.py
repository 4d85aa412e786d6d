from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from miniagent import __version__
from miniagent.cli import app
from miniagent.cli._chat import calculate

ROOT = Path(__file__).resolve().parents[2]


def _miniagent(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "miniagent.cli", *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"miniagent {__version__}"


def test_chat_keeps_the_conversation_and_resets() -> None:
    proc = _miniagent("chat", "--model", "test", stdin="hello\n/reset\nagain\n/exit\n")
    assert proc.returncode == 0, proc.stderr
    assert "bot> echo: hello" in proc.stdout
    assert "(conversation reset)" in proc.stdout
    assert "bot> echo: again" in proc.stdout


def test_chat_shows_tool_calls_as_they_happen() -> None:
    proc = _miniagent("chat", "--model", "test", "--demo-tools", stdin="time?\n")
    assert proc.returncode == 0, proc.stderr
    assert "→ current_time()" in proc.stdout
    assert "← current_time [success" in proc.stdout


def test_chat_with_a_user_agent_streams() -> None:
    proc = _miniagent("chat", "--agent", "tests.cli.slow_agent:agent", stdin="hi\n")
    assert proc.returncode == 0, proc.stderr
    assert "bot> you said hi" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "anthropic:claude-sonnet-4-5"], "ANTHROPIC_API_KEY"),
        (["--model", "opnai:gpt-4o"], "Did you mean 'openai'?"),
        (["--model", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
        (["--agent", "tests.cli.slow_agent:not_an_agent"], "is int, not a miniagent Agent"),
        (["--agent", "no_such_module_x:agent"], "Cannot import 'no_such_module_x'"),
    ],
)
def test_errors_are_one_clear_line_without_traceback(args: list[str], message: str) -> None:
    proc = _miniagent("chat", *args, stdin="")
    assert proc.returncode == 1
    assert message in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_debug_shows_the_traceback() -> None:
    proc = _miniagent("chat", "--debug", "--model", "opnai:x", stdin="")
    assert proc.returncode == 1
    assert "Traceback" in proc.stdout


def test_ctrl_c_interrupts_a_generation_not_the_program() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "miniagent.cli", "chat", "--agent", "tests.cli.slow_agent:agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("hang\n")
        proc.stdin.flush()
        seen = ""
        while "thinking..." not in seen:  # wait on the program's state, not on time
            char = proc.stdout.read(1)
            assert char, "chat exited early"
            seen += char
        proc.send_signal(signal.SIGINT)
        proc.stdin.write("still here?\n/exit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "(interrupted)" in out
    assert "bot> you said still here?" in out


def test_demo_calculator() -> None:
    assert calculate("(2 + 3) * 4.5") == 22.5
    assert calculate("-2 ** 2") == -4
    with pytest.raises(ValueError, match="unsupported"):
        calculate("__import__('os')")


def test_chat_keeps_conversations_in_the_store_and_resumes_them() -> None:
    first = _miniagent("chat", "--model", "test", stdin="remember me\n/exit\n")
    assert first.returncode == 0, first.stderr
    resumed = _miniagent("chat", "--model", "test", "--resume", "latest", stdin="/threads\nagain\n/branch\n/exit\n")
    assert resumed.returncode == 0, resumed.stderr
    assert "(resumed conversation" in resumed.stdout and "2 messages)" in resumed.stdout
    assert "remember me" in resumed.stdout  # the thread's title in /threads
    assert "bot> echo: again" in resumed.stdout
    assert "* 1. 4 messages" in resumed.stdout


def test_chat_resume_of_an_unknown_thread_is_a_clear_error() -> None:
    proc = _miniagent("chat", "--model", "test", "--resume", "nope", stdin="")
    assert proc.returncode == 1
    assert "No thread 'nope'" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_migrate_and_prune_commands(tmp_path: Path) -> None:
    env = {"MINIAGENT_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert "store at revision 0005" in result.output  # the head migration
    assert (tmp_path / "miniagent.db").exists()
    result = CliRunner().invoke(app, ["prune"], env={**env, "MINIAGENT_RETENTION_DAYS": "30"})
    assert result.exit_code == 0, result.output
    assert "pruned 0 thread(s)" in result.output

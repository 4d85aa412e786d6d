from __future__ import annotations

import datetime as dt
import json

import anyio
import pytest
from typer.testing import CliRunner

from miniagent.context import correlation_scope
from miniagent.errors import ModelAuthError
from miniagent.messages import ModelRequest, prompt_part
from miniagent.store import SQLStore

from .dlq_agents import failing

_ENV = {"COLUMNS": "200"}


def _fail(prompt: str, user: str = "alice") -> str:
    """Run the failing agent on the default store; returns its dead letter's id."""

    async def go() -> str:
        async with await SQLStore.open() as store:
            with correlation_scope("req-cli-1"), pytest.raises(ModelAuthError):
                await failing.run(prompt, user_id=user, store=store)
            return (await store.list_dead_letters(limit=1))[0].id

    return anyio.run(go)


def _invoke(*args: str, stdin: str | None = None) -> tuple[int, str]:
    from miniagent.cli import app

    result = CliRunner().invoke(app, list(args), env=_ENV, input=stdin)
    return result.exit_code, result.output


def test_list_and_show() -> None:
    code, out = _invoke("dlq", "list")
    assert code == 0 and "(no dead letters)" in out
    letter = _fail("hello")
    code, out = _invoke("dlq", "list")
    assert code == 0, out
    assert letter in out and "ModelAuthError: the key was rejected" in out and "failing" in out
    code, out = _invoke("dlq", "list", "--json")
    (item,) = json.loads(out)
    assert item["id"] == letter and item["prompt"] == "hello" and item["correlation_id"] == "req-cli-1"

    code, out = _invoke("dlq", "show", letter)
    assert code == 0, out
    for expected in (
        "req-cli-1",
        "user: hello",
        "error chain",
        "ModelAuthError: the key was rejected",
        "status_code=401",
    ):
        assert expected in out
    code, out = _invoke("dlq", "show", letter, "--json")
    shown = json.loads(out)
    assert shown["error_chain"][0]["type"] == "ModelAuthError" and shown["messages"][0]["kind"] == "request"


def test_unknown_ids_are_clear_errors() -> None:
    for command in (["show", "nope"], ["replay", "nope"], ["purge", "nope", "--yes"]):
        code, out = _invoke("dlq", *command)
        assert code == 1, (command, out)
        assert "No dead letter 'nope'" in out and "Traceback" not in out


def test_replay_with_an_agent_and_with_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    letter = _fail("please retry")
    code, out = _invoke("dlq", "replay", letter, "--agent", "tests.cli.dlq_agents:answering")
    assert code == 0, out
    assert "replayed as run" in out and "fixed now" in out
    code, out = _invoke("dlq", "show", letter)
    assert "replayed: as run" in out

    monkeypatch.setenv("MINIAGENT_DEFAULT_MODEL", "test")
    other = _fail("echo me")
    code, out = _invoke("dlq", "replay", other)
    assert code == 0, out
    assert "echo: echo me" in out

    code, out = _invoke("dlq", "replay", other, "--agent", "tests.cli.dlq_agents:nothing_here")
    assert code == 1 and "not a miniagent Agent" in out


def test_a_failed_replay_names_the_new_dead_letter() -> None:
    letter = _fail("still broken")
    code, out = _invoke("dlq", "replay", letter, "--agent", "tests.cli.dlq_agents:failing")
    assert code == 1
    assert "replay failed: ModelAuthError" in out and f"(replay of {letter})" in out
    code, out = _invoke("dlq", "list", "--json")
    newer, older = json.loads(out)
    assert newer["replay_of"] == letter and older["id"] == letter


def test_purge_by_id_and_by_age_with_confirmation() -> None:
    async def old_letters() -> list[str]:
        async with await SQLStore.open(now=lambda: dt.datetime(2020, 1, 1, tzinfo=dt.UTC)) as store:
            return [
                (await store.add_dead_letter(run_id=f"r{i}", messages=[ModelRequest([prompt_part("x")])], error="e")).id
                for i in range(2)
            ]

    old = anyio.run(old_letters)
    recent = _fail("keep me")
    code, out = _invoke("dlq", "purge", old[0], stdin="n\n")
    assert code == 1 and "aborted" in out
    code, out = _invoke("dlq", "purge", old[0], stdin="y\n")
    assert code == 0 and "purged 1 dead letter(s)" in out
    code, out = _invoke("dlq", "purge", "--older-than", "30", "--yes")
    assert code == 0 and "purged 1 dead letter(s)" in out
    code, out = _invoke("dlq", "list", "--json")
    assert [item["id"] for item in json.loads(out)] == [recent]

    code, out = _invoke("dlq", "purge")
    assert code == 2 and "--older-than" in out
    code, out = _invoke("dlq", "purge", recent, "--older-than", "3")
    assert code == 2
    code, out = _invoke("dlq", "purge", "--older-than", "-1")
    assert code == 2

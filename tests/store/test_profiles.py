from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from miniagent import Agent
from miniagent.cli import app
from miniagent.errors import UserError
from miniagent.messages import ModelMessage, ModelRequest, SystemPromptPart, UserPromptPart
from miniagent.store import SQLStore, UserProfile
from miniagent.testing import AgentInfo, FunctionModel

pytestmark = pytest.mark.anyio

PROFILE_TEXT = """\
About the user you are talking with (their profile; follow it unless they ask otherwise):
Custom instructions:
Call me Ada. Answer in bullet points.
Preferences:
- tone: concise
- language: French
- units: metric
- editor: vim"""


class Recorder:
    """A model function that records what it was sent."""

    def __init__(self) -> None:
        self.seen: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.seen.append(list(messages))
        return "ok"


def system_texts(messages: list[ModelMessage]) -> list[str]:
    return [
        p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, SystemPromptPart)
    ]


async def test_profile_set_get_update_delete(store: SQLStore) -> None:
    assert await store.get_profile(user_id="ada") is None
    profile = await store.set_profile(
        user_id="ada", preferences={"units": "metric", "tone": "friendly"}, instructions="Call me Ada."
    )
    assert profile.preferences == {"units": "metric", "tone": "friendly"}
    loaded = await store.get_profile(user_id="ada")
    assert loaded is not None
    assert (loaded.user_id, loaded.tenant_id, loaded.instructions) == ("ada", store.tenant_id, "Call me Ada.")
    assert loaded.updated_at is not None and loaded.updated_at.tzinfo is not None

    # update merges: a new key, a changed key, a removed key; instructions untouched unless given
    updated = await store.update_profile(
        user_id="ada", preferences={"language": "French", "tone": "concise", "units": None}
    )
    assert updated.preferences == {"tone": "concise", "language": "French"}
    assert updated.instructions == "Call me Ada."
    updated = await store.update_profile(user_id="ada", instructions=None)
    assert updated.instructions is None and updated.preferences == {"tone": "concise", "language": "French"}

    # set replaces the whole profile
    replaced = await store.set_profile(user_id="ada", instructions="Short answers.")
    assert (replaced.preferences, replaced.instructions) == ({}, "Short answers.")

    assert await store.delete_profile(user_id="ada") is True
    assert await store.get_profile(user_id="ada") is None
    assert await store.delete_profile(user_id="ada") is False


async def test_update_creates_the_profile_and_the_user(store: SQLStore) -> None:
    profile = await store.update_profile(user_id="new-user", preferences={"units": "imperial"})
    assert profile.preferences == {"units": "imperial"} and profile.instructions is None
    thread = await store.create_thread(user_id="new-user")  # the user row exists and is reused
    assert thread.user_id == "new-user"


async def test_profiles_are_per_user_and_per_tenant(store: SQLStore) -> None:
    await store.set_profile(user_id="ada", preferences={"tone": "formal"})
    await store.set_profile(user_id="ada", tenant_id="acme", preferences={"tone": "casual"})
    assert await store.get_profile(user_id="bob") is None
    mine = await store.get_profile(user_id="ada")
    theirs = await store.get_profile(user_id="ada", tenant_id="acme")
    assert mine is not None and mine.preferences == {"tone": "formal"}
    assert theirs is not None and theirs.preferences == {"tone": "casual"} and theirs.tenant_id == "acme"
    await store.delete_profile(user_id="ada", tenant_id="acme")
    assert await store.get_profile(user_id="ada") is not None


async def test_invalid_preferences_are_user_errors(store: SQLStore) -> None:
    with pytest.raises(UserError, match="preference name"):
        await store.update_profile(user_id="ada", preferences={"": "x"})
    with pytest.raises(UserError, match="must be a string"):
        await store.update_profile(user_id="ada", preferences={"tone": 3})  # type: ignore[dict-item]  # wrong on purpose
    with pytest.raises(UserError, match="limited to"):
        await store.set_profile(user_id="ada", instructions="x" * 20_001)
    assert await store.get_profile(user_id="ada") is None  # nothing written


def test_profile_prompt_format() -> None:
    profile = UserProfile(
        "ada",
        tenant_id="default",
        preferences={"editor": "vim", "units": "metric", "language": "French", "tone": "concise"},
        instructions="  Call me Ada. Answer in bullet points.\n",
    )
    assert profile.prompt() == PROFILE_TEXT
    assert UserProfile("ada", tenant_id="default").prompt() is None
    assert UserProfile("ada", tenant_id="default", instructions="   ").prompt() is None
    only_prefs = UserProfile("ada", tenant_id="default", preferences={"units": "metric"}).prompt()
    assert only_prefs is not None and only_prefs.endswith("Preferences:\n- units: metric")
    assert "Custom instructions" not in only_prefs


async def test_agent_applies_the_profile_to_every_request_of_the_users_threads(store: SQLStore) -> None:
    await store.set_profile(
        user_id="ada",
        preferences={"tone": "concise", "language": "French", "units": "metric", "editor": "vim"},
        instructions="Call me Ada. Answer in bullet points.",
    )
    recorder = Recorder()
    agent = Agent(FunctionModel(recorder), instructions="You are a helpful assistant.", store=store)
    first = await agent.run("hello", user_id="ada")
    sent = recorder.seen[-1][0]
    assert sent == ModelRequest(
        [SystemPromptPart("You are a helpful assistant."), SystemPromptPart(PROFILE_TEXT), UserPromptPart("hello")]
    )
    # The profile is sent, never stored: the thread keeps the agent's instructions only.
    stored = await store.messages(first.thread_id or "", user_id="ada")
    assert system_texts(stored) == ["You are a helpful assistant."]
    assert system_texts(first.all_messages()) == ["You are a helpful assistant."]

    # A changed profile applies to the next turn of the same thread, once, at the start.
    await store.update_profile(
        user_id="ada", preferences={"tone": None, "language": None, "units": None, "editor": None}
    )
    await agent.run("again", user_id="ada", thread_id=first.thread_id)
    seen = recorder.seen[-1]
    assert len(seen) == 3
    assert system_texts(seen) == [
        "You are a helpful assistant.",
        "About the user you are talking with (their profile; follow it unless they ask otherwise):\n"
        "Custom instructions:\nCall me Ada. Answer in bullet points.",
    ]

    # Another user (and a run without a store) get nothing of Ada's profile.
    await agent.run("hi", user_id="bob")
    assert system_texts(recorder.seen[-1]) == ["You are a helpful assistant."]
    await Agent(FunctionModel(recorder)).run("no store")
    assert system_texts(recorder.seen[-1]) == []


async def test_profile_without_agent_instructions_comes_first(store: SQLStore) -> None:
    await store.set_profile(user_id="ada", preferences={"units": "metric"})
    recorder = Recorder()
    await Agent(FunctionModel(recorder), store=store).run("hello", user_id="ada")
    first = recorder.seen[-1][0]
    assert isinstance(first, ModelRequest)
    assert [type(p) for p in first.parts] == [SystemPromptPart, UserPromptPart]


def test_profile_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"MINIAGENT_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["profile", "show"], env=env)
    assert result.exit_code == 0, result.output
    assert "(no profile" in result.output

    assert runner.invoke(app, ["profile", "set", "units", "metric"], env=env).exit_code == 0
    assert runner.invoke(app, ["profile", "set", "tone", "concise"], env=env).exit_code == 0
    result = runner.invoke(app, ["profile", "instructions", "Call me Ada."], env=env)
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["profile", "show"], env=env)
    assert result.output.strip().splitlines() == [
        "About the user you are talking with (their profile; follow it unless they ask otherwise):",
        "Custom instructions:",
        "Call me Ada.",
        "Preferences:",
        "- tone: concise",
        "- units: metric",
    ]
    result = runner.invoke(app, ["profile", "unset", "tone"], env=env)
    assert "tone" not in result.output and "- units: metric" in result.output
    # another user's profile is separate
    result = runner.invoke(app, ["profile", "show", "--user", "bob"], env=env)
    assert "(no profile" in result.output

    result = runner.invoke(app, ["profile", "clear"], env=env)
    assert result.exit_code == 0 and "profile deleted" in result.output
    assert "(no profile" in runner.invoke(app, ["profile", "show"], env=env).output
    assert "(no profile)" in runner.invoke(app, ["profile", "clear"], env=env).output


def test_profile_cli_reports_store_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "miniagent.db"
    garbage.write_bytes(b"not a database " * 300)
    result = CliRunner().invoke(app, ["profile", "show"], env={"MINIAGENT_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1
    assert "not a valid SQLite database" in result.output

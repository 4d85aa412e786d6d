"""Run a dead letter again: same user and thread, a new run linked to the failed one (`miniagent dlq replay`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ThreadNotFound

if TYPE_CHECKING:
    from ..agent import Agent
    from ..agent._result import RunResult
    from ._base import DeadLetter
    from ._sql import SQLStore

__all__ = ["replay_dead_letter"]


async def _thread_for(store: SQLStore, letter: DeadLetter) -> str:
    """A thread whose current leaf is the failed run's request: the original thread when it still has that message
    (its other branches stay, listed by `branches()`), else a new thread of the same user holding the stored input.
    """  # noqa: D205
    request_id = letter.meta.get("request_message_id")
    if letter.thread_id is not None and isinstance(request_id, str):
        try:
            await store.switch(letter.thread_id, request_id, user_id=letter.user_id)
            return letter.thread_id
        except ThreadNotFound:
            pass  # the thread (or that message) was deleted since: replay in a new thread
    thread = await store.create_thread(user_id=letter.user_id, title=(letter.prompt or "")[:80] or None)
    await store.append(thread.id, letter.messages, expected_leaf=None, user_id=letter.user_id)
    return thread.id


async def replay_dead_letter(
    store: SQLStore, dead_letter_id: str, agent: Agent[Any, Any] | None = None, **run_args: Any
) -> RunResult[Any]:
    """Run a dead letter's input again and link the new run to the failed one.

    The new run answers the same request for the same user, in the same thread (whose current leaf moves back to
    that request; the failed attempt stays as a branch) or, if that thread is gone, in a new one. Its run row has
    `replay_of` = the failed run, and the dead letter gets `replayed_run_id` = the new run. A replay that fails for
    good writes a new dead letter whose `replay_of` is this one, then raises the run's error.

    Example:
        ```python
        import tempfile

        import anyio

        from miniagent import Agent
        from miniagent.errors import ModelAuthError
        from miniagent.store import SQLStore, replay_dead_letter
        from miniagent.testing import FunctionModel


        def down(messages, info):
            raise ModelAuthError("bad key", model_name="m", status_code=401)


        async def main() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                async with await SQLStore.open(f"sqlite+aiosqlite:///{tmp}/s.db") as store:
                    try:
                        await Agent(FunctionModel(down)).run("Hi", user_id="alice", store=store)
                    except ModelAuthError:
                        pass
                    [letter] = await store.list_dead_letters()
                    result = await replay_dead_letter(store, letter.id, Agent("test"))
                    assert (await store.get_run(result.run_id)).replay_of == letter.run_id


        anyio.run(main)
        ```

    Args:
        store: The store holding the dead letter (its tenant is the dead letter's).
        dead_letter_id: The dead letter to replay.
        agent: The agent to run (default: an agent on the default model, `MINIAGENT_DEFAULT_MODEL`).
        **run_args: More arguments of `agent.run` (`deps`, `model`, `usage_limits`, `timeout`...).

    Raises:
        DeadLetterNotFound: No such dead letter in the store's tenant.
    """
    from ..agent import Agent
    from ..agent._persist import ReplayLink, replaying

    letter = await store.get_dead_letter(dead_letter_id)
    if agent is None:
        agent = Agent(name=letter.agent_name or "agent")
    thread_id = await _thread_for(store, letter)
    with replaying(ReplayLink(letter.run_id, letter.id)):
        result = await agent.run(None, thread_id=thread_id, user_id=letter.user_id, store=store, **run_args)
    await store.mark_replayed(letter.id, result.run_id)
    return result

from __future__ import annotations

import pytest

from miniagent import (
    Agent,
    AgentEvent,
    HistoryFitted,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UnexpectedModelBehavior,
    UserError,
    UserPromptPart,
)
from miniagent.memory import (
    DEFAULT_CONTEXT_WINDOW,
    InMemorySummaryStore,
    StoredSummary,
    SummaryStore,
    WorkingMemory,
    context_window_of,
    estimate_tokens,
)
from miniagent.models import ModelRequestParameters, ModelSettings
from miniagent.testing import AgentInfo, FunctionModel, ScriptedModel, tool_call_response

pytestmark = pytest.mark.anyio

FILLER = "lorem ipsum " * 20


def conversation(turns: int, *, system: str = "Be concise.") -> list[ModelMessage]:
    """`turns` user/assistant exchanges of about 70 estimated tokens each."""
    history: list[ModelMessage] = []
    for k in range(turns):
        parts: list[SystemPromptPart | UserPromptPart] = [SystemPromptPart(system)] if k == 0 and system else []
        history.append(ModelRequest([*parts, UserPromptPart(f"question {k} {FILLER}")]))
        history.append(ModelResponse([TextPart(f"answer {k} {FILLER}")]))
    return history


def tool_conversation(turns: int) -> list[ModelMessage]:
    """Turns in which the model calls a tool, reads its result, then answers."""
    history: list[ModelMessage] = []
    for k in range(turns):
        history.append(ModelRequest([UserPromptPart(f"question {k} {FILLER}")]))
        call = ToolCallPart("lookup", {"q": f"item {k}"}, f"call-{k}")
        # Text beside the call scores the response higher than its result: a per-message cut would split them.
        history.append(ModelResponse([TextPart("Let me look that up."), call]))
        history.append(ModelRequest([ToolReturnPart("lookup", f"result {k} {FILLER}", f"call-{k}")]))
        history.append(ModelResponse([TextPart(f"answer {k} {FILLER}")]))
    return history


class Recorder:
    """A model function that records what it saw and answers `answer`."""

    def __init__(self, answer: str = "ok") -> None:
        self.answer = answer
        self.seen: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        self.seen.append(list(messages))
        return self.answer


class Summarizer:
    """A summary model function that counts its calls and numbers its summaries."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> str:
        request = messages[-1]
        assert isinstance(request, ModelRequest)
        user = request.parts[-1]
        assert isinstance(user, UserPromptPart)
        self.prompts.append(user.content)
        return f"SUMMARY-{len(self.prompts)} of the earlier talk"

    @property
    def calls(self) -> int:
        return len(self.prompts)


def texts(messages: list[ModelMessage]) -> str:
    out: list[str] = []
    for message in messages:
        for part in message.parts:
            if isinstance(part, SystemPromptPart | UserPromptPart | TextPart | RetryPromptPart):
                out.append(part.content)
            elif isinstance(part, ToolReturnPart):
                out.append(part.content_text())
            elif isinstance(part, ToolCallPart):
                out.append(part.args_json())
    return "\n".join(out)


def assert_pairs_intact(messages: list[ModelMessage]) -> None:
    """Every tool call is answered in the next message, and every tool result follows its call."""
    for i, message in enumerate(messages):
        if isinstance(message, ModelResponse) and message.tool_calls:
            following = messages[i + 1] if i + 1 < len(messages) else None
            answered = {
                p.tool_call_id
                for p in (following.parts if isinstance(following, ModelRequest) else [])
                if isinstance(p, ToolReturnPart | RetryPromptPart)
            }
            assert {c.tool_call_id for c in message.tool_calls} <= answered, i
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    previous = messages[i - 1]
                    assert isinstance(previous, ModelResponse), i
                    assert part.tool_call_id in {c.tool_call_id for c in previous.tool_calls}, i


def make_agent(memory: WorkingMemory, recorder: Recorder | None = None) -> tuple[Agent[None, str], Recorder]:
    recorder = recorder or Recorder()
    return Agent(FunctionModel(recorder), working_memory=memory), recorder


# ---- no fitting ------------------------------------------------------------------------------------------------


async def test_under_budget_the_history_is_sent_unchanged() -> None:
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=10_000, summary_model=FunctionModel(summarizer))
    agent, recorder = make_agent(memory)
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    history = conversation(3)
    result = await agent.run("next", message_history=history, event_sink=sink)
    assert recorder.seen[0] == result.messages[:-1]
    assert memory.last_fit is not None
    assert memory.last_fit.evicted == 0 and memory.last_fit.summary is None
    assert memory.last_fit.messages == result.messages[:-1]
    assert memory.last_fit.within_budget
    assert summarizer.calls == 0
    assert not any(isinstance(e, HistoryFitted) for e in events)


async def test_without_working_memory_the_history_is_sent_whole() -> None:
    recorder = Recorder()
    agent = Agent(FunctionModel(recorder))
    result = await agent.run("next", message_history=conversation(30))
    assert recorder.seen[0] == result.messages[:-1]
    assert agent.working_memory is None


# ---- fitting ---------------------------------------------------------------------------------------------------


async def test_fitted_prompt_is_within_budget_and_reported() -> None:
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=600, summary_model=FunctionModel(summarizer))
    agent, recorder = make_agent(memory)
    events: list[AgentEvent] = []

    async def sink(event: AgentEvent) -> None:
        events.append(event)

    history = conversation(20)
    assert estimate_tokens(history) > 600
    result = await agent.run("next", message_history=history, event_sink=sink)
    seen = recorder.seen[0]
    assert estimate_tokens(seen) <= 600
    fit = memory.last_fit
    assert fit is not None and fit.within_budget and fit.messages == seen
    assert fit.tokens_before == estimate_tokens(result.messages[:-1]) and fit.tokens_after == estimate_tokens(seen)
    assert fit.kept + fit.evicted == len(result.messages) - 1
    fitted = [e for e in events if isinstance(e, HistoryFitted)]
    assert len(fitted) == 1
    event = fitted[0]
    assert (event.step, event.kept, event.evicted, event.budget) == (1, fit.kept, fit.evicted, 600)
    assert event.tokens_after <= 600 < event.tokens_before
    assert event.summary == "SUMMARY-1 of the earlier talk" and event.summary_requests == 1
    # The history itself is whole: only what the model saw was fitted.
    assert result.messages[: len(history)] == history


async def test_system_prompt_and_last_turns_kept_verbatim_summary_first() -> None:
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=600, keep_last_turns=2, summary_model=FunctionModel(summarizer))
    agent, recorder = make_agent(memory)
    history = conversation(20, system="You are the memory test assistant.")
    await agent.run("the newest question", message_history=history)
    seen = recorder.seen[0]
    first = seen[0]
    assert isinstance(first, ModelRequest)
    assert first.parts[0] == SystemPromptPart("You are the memory test assistant.")
    note = first.parts[1]
    assert isinstance(note, UserPromptPart)
    assert note.content.startswith("Summary of the earlier conversation")
    assert note.content.endswith("SUMMARY-1 of the earlier talk")
    # The last two turns: the previous exchange and the new prompt.
    assert seen[-3:] == [history[-2], history[-1], ModelRequest([UserPromptPart("the newest question")])]
    # The oldest turn was summarized, and the summary model was shown it.
    assert "question 0 " not in texts(seen)
    assert "question 0 " in summarizer.prompts[0] and "answer 0 " in summarizer.prompts[0]


async def test_summary_is_made_once_per_eviction_and_reused_on_the_next_turns() -> None:
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=800, summary_model=FunctionModel(summarizer))
    agent, recorder = make_agent(memory)
    result = await agent.run("turn A", message_history=conversation(20))
    assert summarizer.calls == 1
    evicted = memory.last_fit.evicted if memory.last_fit else 0

    # The next turn fits with the stored summary: the summary model is not called again.
    result = await agent.run("turn B", message_history=result.all_messages())
    assert summarizer.calls == 1
    assert memory.last_fit is not None and memory.last_fit.evicted == evicted
    assert memory.last_fit.summary_requests == 0
    assert "SUMMARY-1 of the earlier talk" in texts(recorder.seen[-1])
    assert estimate_tokens(recorder.seen[-1]) <= 800

    # Turns keep coming: a second eviction folds the new messages into the previous summary.
    for k in range(12):
        result = await agent.run(f"turn {k} {FILLER}", message_history=result.all_messages())
        fit = memory.last_fit
        assert fit is not None
        assert fit.within_budget
    assert summarizer.calls >= 2
    assert "SUMMARY-1 of the earlier talk" in summarizer.prompts[1]
    assert f"SUMMARY-{summarizer.calls} of the earlier talk" in texts(recorder.seen[-1])
    assert summarizer.calls < 13  # not once per turn


async def test_summary_requests_count_in_the_run_usage() -> None:
    memory = WorkingMemory(max_tokens=600, summary_model=FunctionModel(Summarizer()))
    agent, _ = make_agent(memory)
    result = await agent.run("next", message_history=conversation(20))
    assert result.usage.requests == 2
    assert memory.last_fit is not None and memory.last_fit.summary_usage.requests == 1


async def test_the_agents_model_summarizes_by_default() -> None:
    def model(messages: list[ModelMessage], info: AgentInfo) -> str:
        first = messages[0]
        assert isinstance(first, ModelRequest)
        system = first.parts[0]
        if isinstance(system, SystemPromptPart) and system.content.startswith("You condense"):
            return "the default summary"
        return "the answer"

    memory = WorkingMemory(max_tokens=600)
    agent = Agent(FunctionModel(model), working_memory=memory)
    result = await agent.run("next", message_history=conversation(20))
    assert result.output == "the answer"
    assert memory.last_fit is not None and memory.last_fit.summary == "the default summary"


async def test_pinned_messages_are_always_kept() -> None:
    history = conversation(20)
    history[4] = ModelRequest([UserPromptPart("PINNED-BY-INDEX my name is Ada")])
    history[9] = ModelResponse([TextPart("PINNED-BY-PREDICATE the launch code is 1234")])
    pins = {4}

    def pinned(index: int, message: ModelMessage) -> bool:
        return any(isinstance(p, TextPart) and "PINNED-BY-PREDICATE" in p.content for p in message.parts)

    for pin in (pins, pinned):
        memory = WorkingMemory(max_tokens=600, pin=pin, summary_model=FunctionModel(Summarizer()))
        agent, recorder = make_agent(memory)
        result = await agent.run("q1", message_history=history)
        for k in range(5):
            result = await agent.run(f"q{k} {FILLER}", message_history=result.all_messages())
            seen = texts(recorder.seen[-1])
            assert "PINNED-BY-INDEX" in seen if pin is pins else "PINNED-BY-PREDICATE" in seen
            assert estimate_tokens(recorder.seen[-1]) <= 600
        assert memory.last_fit is not None and memory.last_fit.evicted > 0


async def test_pin_set_can_grow_after_construction() -> None:
    pins: set[int] = set()
    memory = WorkingMemory(max_tokens=600, pin=pins, summary_model=FunctionModel(Summarizer()))
    agent, recorder = make_agent(memory)
    history = conversation(20)
    await agent.run("q", message_history=history)
    assert "question 1 " not in texts(recorder.seen[-1])
    pins.add(2)  # the request of turn 1, already summarized: pinned, it is sent again
    await agent.run("q", message_history=history)
    assert "question 1 " in texts(recorder.seen[-1])


async def test_tool_calls_and_returns_are_never_split() -> None:
    memory = WorkingMemory(max_tokens=700, summary_model=FunctionModel(Summarizer()))
    agent, recorder = make_agent(memory)
    history = tool_conversation(12)
    result = await agent.run("next", message_history=history)
    for budget_run in range(4):
        result = await agent.run(f"more {budget_run} {FILLER}", message_history=result.all_messages())
    for seen in recorder.seen:
        assert_pairs_intact(seen)
        assert estimate_tokens(seen) <= 700


async def test_a_pinned_tool_result_keeps_its_call() -> None:
    def pinned(index: int, message: ModelMessage) -> bool:
        return any(isinstance(p, ToolReturnPart) and p.tool_call_id == "call-2" for p in message.parts)

    memory = WorkingMemory(max_tokens=700, pin=pinned, summary_model=FunctionModel(Summarizer()))
    agent, recorder = make_agent(memory)
    await agent.run("next", message_history=tool_conversation(12))
    seen = recorder.seen[0]
    assert_pairs_intact(seen)
    calls = {c.tool_call_id for m in seen if isinstance(m, ModelResponse) for c in m.tool_calls}
    assert "call-2" in calls and "call-1" not in calls


async def test_a_long_tool_run_is_fitted_between_its_steps() -> None:
    steps = [tool_call_response(("lookup", {"q": f"item {k}"})) for k in range(10)] + ["done"]
    model = ScriptedModel(steps)
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=500, keep_last_turns=1, summary_model=FunctionModel(summarizer))
    agent = Agent(model, working_memory=memory)

    @agent.tool
    def lookup(q: str) -> str:
        return f"found {q}: {FILLER}"

    result = await agent.run("look everything up", message_history=conversation(2))
    assert result.output == "done"
    for call in model.calls:
        assert_pairs_intact(call.messages)
        assert estimate_tokens(call.messages) <= 500
        assert "look everything up" in texts(call.messages)  # the current turn's prompt is protected
    assert 1 <= summarizer.calls < 10


async def test_streamed_runs_are_fitted_and_emit_the_event() -> None:
    model = ScriptedModel(["streamed answer"])
    memory = WorkingMemory(max_tokens=600, summary_model=FunctionModel(Summarizer()))
    agent = Agent(model, working_memory=memory)
    events = [e async for e in agent.run_stream_events("next", message_history=conversation(20))]
    assert [type(e).__name__ for e in events[:3]] == ["RunStarted", "ModelRequestStarted", "HistoryFitted"]
    assert estimate_tokens(model.calls[0].messages) <= 600
    assert "SUMMARY-1" in texts(model.calls[0].messages)


async def test_tool_results_referenced_later_outlive_unreferenced_ones() -> None:
    history: list[ModelMessage] = []
    for k in range(8):
        history.append(ModelRequest([UserPromptPart(f"question {k} {FILLER}")]))
        history.append(ModelResponse([ToolCallPart("lookup", {"q": k}, f"c{k}")]))
        history.append(ModelRequest([ToolReturnPart("lookup", f"token{k}xyz {FILLER}", f"c{k}")]))
        history.append(ModelResponse([TextPart(f"answer {k} {FILLER}")]))
    # The last answer cites the result of the oldest lookup.
    history[-1] = ModelResponse([TextPart(f"as token0xyz showed, {FILLER}")])
    budget = estimate_tokens(history) - 50  # a few units must go
    memory = WorkingMemory(
        max_tokens=budget,
        evict_to=0.9,
        summary_max_tokens=16,
        keep_last_turns=1,
        summary_model=FunctionModel(Summarizer()),
    )
    agent, recorder = make_agent(memory)
    await agent.run("next", message_history=history)
    assert memory.last_fit is not None and 0 < memory.last_fit.evicted < len(history) // 2
    call_ids = {p.tool_call_id for m in recorder.seen[0] for p in m.parts if isinstance(p, ToolReturnPart)}
    assert "c0" in call_ids  # the oldest result, referenced later: kept
    assert "c1" not in call_ids  # newer, never referenced: evicted


async def test_a_history_that_cannot_fit_is_sent_and_flagged() -> None:
    memory = WorkingMemory(max_tokens=100, summary_model=FunctionModel(Summarizer()))
    agent, recorder = make_agent(memory)
    await agent.run("huge " * 2000, message_history=conversation(3))
    assert memory.last_fit is not None and not memory.last_fit.within_budget
    assert "huge" in texts(recorder.seen[0])
    assert "question 0 " not in texts(recorder.seen[0])


async def test_an_empty_summary_is_an_error() -> None:
    memory = WorkingMemory(max_tokens=600, summary_model=FunctionModel(lambda messages, info: "  "))
    agent, _ = make_agent(memory)
    with pytest.raises(UnexpectedModelBehavior, match="returned no text"):
        await agent.run("next", message_history=conversation(20))


# ---- the summary store -----------------------------------------------------------------------------------------


async def test_stored_summary_is_used_only_for_the_history_it_was_made_from() -> None:
    store = InMemorySummaryStore()
    assert isinstance(store, SummaryStore)
    summarizer = Summarizer()
    memory = WorkingMemory(
        max_tokens=600,
        summary_model=FunctionModel(summarizer),
        summary_store=store,
        conversation_key=lambda messages: "one-key-for-all",
    )
    agent, recorder = make_agent(memory)
    await agent.run("next", message_history=conversation(20))
    assert summarizer.calls == 1 and len(store) == 1
    stored = await store.get("one-key-for-all")
    assert stored is not None and stored.text == "SUMMARY-1 of the earlier talk"
    assert stored.message_count == 41 and stored.covered and max(stored.covered) < 41

    other = conversation(20, system="A different assistant.")
    await agent.run("next", message_history=other)
    assert summarizer.calls == 2  # same key, another history: the stale summary is not used
    assert "SUMMARY-2" in texts(recorder.seen[-1])


async def test_fit_takes_an_explicit_key() -> None:
    store = InMemorySummaryStore()
    summarizer = Summarizer()
    memory = WorkingMemory(max_tokens=600, summary_model=FunctionModel(summarizer), summary_store=store)
    model = FunctionModel(Recorder())
    history = conversation(20)
    fit = await memory.fit(history, model=model, key="thread-1")
    assert fit.summary_requests == 1 and await store.get("thread-1") is not None
    again = await memory.fit([*history, ModelRequest([UserPromptPart("hi")])], model=model, key="thread-1")
    assert again.summary_requests == 0 and summarizer.calls == 1 and again.summary == fit.summary


async def test_in_memory_store_forgets_the_least_recently_used() -> None:
    store = InMemorySummaryStore(max_entries=2)
    summary = StoredSummary("s", message_count=1, covered=(0,), fingerprint="f")
    await store.put("a", summary)
    await store.put("b", summary)
    assert await store.get("a") is summary  # "a" is now the most recent
    await store.put("c", summary)
    assert await store.get("b") is None
    assert await store.get("a") is summary and await store.get("c") is summary


# ---- budget and counting ---------------------------------------------------------------------------------------


class CountingModel(FunctionModel):
    """A model that counts tokens: one per message."""

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        return len(messages)


def test_budget_is_a_fraction_of_the_context_window() -> None:
    model = FunctionModel(Recorder())
    assert WorkingMemory(max_tokens=123).budget_for(model) == 123
    assert WorkingMemory(context_window=1000, context_fraction=0.5).budget_for(model) == 500
    assert WorkingMemory().budget_for(model) == int(DEFAULT_CONTEXT_WINDOW * 0.75)
    assert context_window_of(FunctionModel(Recorder(), name="openai:gpt-4o-mini")) == 128_000
    assert context_window_of(FunctionModel(Recorder(), name="gpt-4")) == 8_192
    assert context_window_of(FunctionModel(Recorder(), name="anthropic:claude-sonnet-4-5")) == 200_000

    class Windowed(FunctionModel):
        n_ctx = 2048

    assert context_window_of(Windowed(Recorder())) == 2048


async def test_the_models_own_token_count_is_used() -> None:
    memory = WorkingMemory(max_tokens=10, summary_model=FunctionModel(Summarizer()))
    recorder = Recorder()
    agent = Agent(CountingModel(recorder), working_memory=memory)
    await agent.run("next", message_history=conversation(20))
    assert memory.last_fit is not None
    assert memory.last_fit.tokens_before == 41 and memory.last_fit.tokens_after == len(recorder.seen[0]) <= 10


async def test_a_custom_token_counter_is_used() -> None:
    def words(messages: list[ModelMessage]) -> int:
        return len(texts(messages).split())

    memory = WorkingMemory(max_tokens=300, token_counter=words, summary_model=FunctionModel(Summarizer()))
    agent, recorder = make_agent(memory)
    await agent.run("next", message_history=conversation(20))
    assert memory.last_fit is not None and memory.last_fit.evicted > 0
    assert words(recorder.seen[0]) <= 300


def test_estimate_tokens() -> None:
    assert estimate_tokens([]) == 0
    assert estimate_tokens([ModelRequest([UserPromptPart("a" * 9)])]) == 4 + 3
    call = ModelResponse([ToolCallPart("tool", {"a": 1}, "c")])
    assert estimate_tokens([call]) == 4 + 1 + 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"context_window": 0}, "context_window"),
        ({"context_fraction": 0.0}, "context_fraction"),
        ({"evict_to": 1.5}, "evict_to"),
        ({"keep_last_turns": 0}, "keep_last_turns"),
        ({"summary_max_tokens": 0}, "summary_max_tokens"),
    ],
)
def test_invalid_settings_are_user_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(UserError, match=match):
        WorkingMemory(**kwargs)  # type: ignore[arg-type]


async def test_summary_request_shape() -> None:
    seen: list[tuple[list[ModelMessage], ModelSettings | None, ModelRequestParameters]] = []

    class Capturing(FunctionModel):
        async def request(
            self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
        ) -> ModelResponse:
            seen.append((messages, settings, params))
            return await super().request(messages, settings, params)

    memory = WorkingMemory(max_tokens=600, summary_max_tokens=50, summary_model=Capturing(Summarizer()))
    agent, _ = make_agent(memory)
    await agent.run("next", message_history=conversation(20))
    ((messages, settings, params),) = seen
    assert settings == ModelSettings(max_tokens=50)
    assert params == ModelRequestParameters()
    first = messages[0]
    assert isinstance(first, ModelRequest) and isinstance(first.parts[0], SystemPromptPart)
    assert first.parts[0].content.startswith("You condense")

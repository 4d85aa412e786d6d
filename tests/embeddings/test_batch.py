"""`BatchingEmbedder`: concurrent calls share requests, against a real loopback embeddings server.

Time never passes by itself here: the `max_wait_s` timer runs on a `ManualClock` the test advances, and the
server can hold its answers on an event, so every interleaving is forced rather than hoped for.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import openai
import pytest

from miniagent import Agent, ModelMessage, ModelResponse, TextPart, ToolCallPart
from miniagent.embeddings import BatchingEmbedder, Embedder, HashEmbedder, OpenAIEmbedder, normalize
from miniagent.errors import UserError
from miniagent.memory import LongTermMemory
from miniagent.store import SQLStore
from miniagent.testing import AgentInfo, FunctionModel, ManualClock

from ._server import EmbeddingsServer, vector_for

pytestmark = pytest.mark.anyio

WAIT = 0.01
"""The `max_wait_s` of these tests (on a manual clock)."""


def expected(text: str, dimensions: int = 8) -> list[float]:
    """The vector an `OpenAIEmbedder` on the loopback server returns for `text`."""
    return normalize(vector_for(text, dimensions))


def batching(
    server: EmbeddingsServer,
    clock: ManualClock,
    *,
    max_batch: int = 64,
    max_wait_s: float = WAIT,
    max_pending: int = 1024,
    dedupe: bool = True,
) -> BatchingEmbedder:
    """A `BatchingEmbedder` over an `OpenAIEmbedder` on `server`, its timer on `clock`."""
    inner = OpenAIEmbedder("m", dimensions=server.dimensions, client=server.client())
    return BatchingEmbedder(
        inner, max_batch=max_batch, max_wait_s=max_wait_s, max_pending=max_pending, dedupe=dedupe, clock=clock
    )


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds: state that no event announces (a hang guard, not a timing assertion)."""
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110  # the state belongs to code that has no event to set
            await anyio.sleep(0.001)


class Recorder:
    """Runs `embed` calls in a task group and keeps what each returned or raised, by its first text."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.results: dict[str, list[list[float]]] = {}
        self.errors: dict[str, BaseException] = {}

    async def __call__(self, texts: Sequence[str]) -> None:
        try:
            self.results[texts[0]] = await self.embedder.embed(texts)
        except Exception as exc:
            self.errors[texts[0]] = exc


class Counting:
    """A `HashEmbedder` that records the texts of every call (an embedder of our own, not a mock)."""

    def __init__(self, dimensions: int = 64) -> None:
        self.inner = HashEmbedder(dimensions)
        self.calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return await self.inner.embed(texts)


# ---- grouping ----------------------------------------------------------------------------------------------------


async def test_fifty_concurrent_calls_make_at_most_ceil_n_over_max_batch_requests() -> None:
    clock = ManualClock()
    async with EmbeddingsServer() as server:
        embedder = batching(server, clock, max_batch=8)
        calls = Recorder(embedder)
        texts = [f"fact number {i}" for i in range(50)]
        async with anyio.create_task_group() as tg:
            for text in texts:
                tg.start_soon(calls, [text])
            await server.wait_for(6)  # six full batches go at once...
            assert embedder.pending == 2 and server.count == 6
            clock.advance(WAIT)  # ...the last two when the oldest of them has waited `max_wait_s`
        assert server.count == 7 == math.ceil(50 / 8) == embedder.requests
        assert [len(r) for r in server.requests] == [8, 8, 8, 8, 8, 8, 2]
        assert sorted(t for r in server.requests for t in r) == sorted(texts)
        assert not calls.errors
        assert calls.results == {text: [expected(text)] for text in texts}  # each caller got its own text's vector
        assert embedder.pending == embedder.in_flight == 0


async def test_a_call_of_more_than_max_batch_texts_is_split_across_consecutive_requests() -> None:
    clock = ManualClock()
    async with EmbeddingsServer() as server:
        embedder = batching(server, clock, max_batch=8)
        texts = [f"text {i}" for i in range(20)]
        calls = Recorder(embedder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, texts)
            await until(lambda: server.count == 2 and embedder.in_flight == 0)  # two full batches, in turn
            assert embedder.pending == 4
            clock.advance(WAIT)  # the tail waits for company, then goes
        assert server.requests == [texts[:8], texts[8:16], texts[16:]]
        assert calls.results == {texts[0]: [expected(t) for t in texts]}


async def test_callers_whose_texts_share_requests_get_their_own_vectors_in_order() -> None:
    async with EmbeddingsServer() as server:
        embedder = batching(server, ManualClock(), max_batch=4, max_wait_s=0)
        calls = Recorder(embedder)
        a = [f"a{i}" for i in range(5)]
        b = [f"b{i}" for i in range(5)]
        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, a)
            tg.start_soon(calls, b)
        assert server.requests == [a[:4], [a[4], *b[:3]], b[3:]]
        assert calls.results == {"a0": [expected(t) for t in a], "b0": [expected(t) for t in b]}


async def test_the_timer_counts_from_the_oldest_queued_text() -> None:
    clock = ManualClock()
    async with EmbeddingsServer() as server:
        embedder = batching(server, clock, max_batch=8)
        calls = Recorder(embedder)
        async with anyio.create_task_group() as tg:
            for text in ["a", "b", "c"]:
                tg.start_soon(calls, [text])
            await until(lambda: embedder.pending == 3)
            clock.advance(WAIT / 2)
            tg.start_soon(calls, ["d"])  # arrives half way: it does not restart the timer
            await until(lambda: embedder.pending == 4)
            clock.advance(WAIT / 2 - WAIT / 10)
            assert server.count == 0 and embedder.pending == 4  # not due yet: no timer fired
            clock.advance(WAIT / 10)
            await server.wait_for(1)
        assert server.requests == [["a", "b", "c", "d"]]
        assert calls.results == {t: [expected(t)] for t in "abcd"}


async def test_max_wait_zero_sends_at_once() -> None:
    clock = ManualClock()
    async with EmbeddingsServer() as server:
        embedder = batching(server, clock, max_wait_s=0)
        assert await embedder.embed(["alone"]) == [expected("alone")]
        assert server.requests == [["alone"]] and clock.pending == 0  # no timer was armed


@pytest.mark.parametrize(("dedupe", "sent"), [(True, ["x", "y"]), (False, ["x", "y", "x", "x"])])
async def test_identical_texts_of_one_request_are_sent_once(dedupe: bool, sent: list[str]) -> None:
    async with EmbeddingsServer() as server:
        embedder = batching(server, ManualClock(), max_batch=4, dedupe=dedupe)
        got: list[list[list[float]]] = []

        async def call(texts: list[str]) -> None:
            got.append(await embedder.embed(texts))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, ["x", "y"])
            tg.start_soon(call, ["x"])
            tg.start_soon(call, ["x"])
        assert server.requests == [sent]
        assert sorted(got) == sorted([[expected("x"), expected("y")], [expected("x")], [expected("x")]])
        assert len({id(vectors[0]) for vectors in got}) == 3  # equal vectors, never one shared list


# ---- failures, cancellation, backpressure ----------------------------------------------------------------------


async def test_a_failed_request_fails_exactly_its_callers() -> None:
    clock = ManualClock()
    async with EmbeddingsServer(fail=lambda texts: 500 if "poison" in texts else None) as server:
        embedder = batching(server, clock, max_batch=4)
        calls = Recorder(embedder)
        first = ["a", "b", "poison", "c"]
        second = ["d", "e", "f", "g"]
        async with anyio.create_task_group() as tg:
            for text in [*first, *second]:
                tg.start_soon(calls, [text])
        assert server.requests == [first, second]
        assert sorted(calls.errors) == sorted(first) and sorted(calls.results) == sorted(second)
        for error in calls.errors.values():
            assert isinstance(error, openai.InternalServerError)
            assert "one request of 4 texts to 'm', for 4 concurrent `embed` calls, failed" in "".join(error.__notes__)
        assert calls.results == {t: [expected(t)] for t in second}


async def test_a_failing_call_drops_its_texts_still_queued() -> None:
    async with EmbeddingsServer(fail=lambda texts: 503 if "poison" in texts else None) as server:
        embedder = batching(server, ManualClock(), max_batch=2)
        with pytest.raises(openai.APIStatusError):
            await embedder.embed(["poison", "one", "two", "three"])
        assert server.requests == [["poison", "one"]] and embedder.pending == 0


async def test_an_embedder_returning_the_wrong_number_of_vectors_is_reported() -> None:
    class Short(Counting):
        async def embed(self, texts: Sequence[str]) -> list[list[float]]:
            return (await super().embed(texts))[:-1]

    embedder = BatchingEmbedder(Short(), max_wait_s=0)
    with pytest.raises(UserError, match=r"'hash-64' returned 1 vectors for 2 texts: an `Embedder` must return one"):
        await embedder.embed(["a", "b"])


async def test_a_cancelled_waiting_call_is_taken_out_of_the_queue() -> None:
    clock = ManualClock()
    async with EmbeddingsServer() as server:
        embedder = batching(server, clock, max_batch=8)
        calls = Recorder(embedder)
        doomed = anyio.CancelScope()

        async def first() -> None:
            with doomed:  # the first caller holds the timer: cancelled, it hands it over
                await embedder.embed(["doomed", "twice"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            for text in "abc":
                tg.start_soon(calls, [text])
            await until(lambda: embedder.pending == 5)
            doomed.cancel()
            await until(lambda: embedder.pending == 3)
            clock.advance(WAIT)
        assert server.requests == [["a", "b", "c"]]
        assert calls.results == {t: [expected(t)] for t in "abc"}


async def test_cancelling_the_caller_that_sends_a_request_resends_the_others_texts() -> None:
    clock = ManualClock()
    gate = anyio.Event()
    async with EmbeddingsServer(gate=gate) as server:
        embedder = batching(server, clock, max_batch=2)
        calls = Recorder(embedder)
        sender = anyio.CancelScope()
        sender_left = anyio.Event()

        async def send_b() -> None:
            with sender:
                await embedder.embed(["b"])  # it fills the batch: this caller sends ["a", "b"]
            sender_left.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, ["a"])
            tg.start_soon(send_b)
            await server.wait_for(1)
            assert embedder.in_flight == 2
            sender.cancel()
            await sender_left.wait()
            assert embedder.pending == 1 and embedder.in_flight == 0  # "a" is back at the head of the queue
            clock.advance(WAIT)  # "a" was queued at 0: it is due
            await server.wait_for(2)
            gate.set()
        assert server.requests == [["a", "b"], ["a"]]
        assert calls.results == {"a": [expected("a")]}


async def test_callers_wait_for_room_in_order_and_a_cancelled_one_gives_its_turn() -> None:
    gate = anyio.Event()
    async with EmbeddingsServer(gate=gate) as server:
        embedder = batching(server, ManualClock(), max_batch=2, max_pending=2, max_wait_s=0)
        calls = Recorder(embedder)
        waiting = anyio.CancelScope()

        async def call_c() -> None:
            with waiting:
                await calls(["c"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, ["a", "b"])
            await server.wait_for(1)
            tg.start_soon(call_c)
            await until(lambda: embedder.waiting_for_room == 1)
            tg.start_soon(calls, ["d"])
            await until(lambda: embedder.waiting_for_room == 2)
            assert embedder.pending == 0 and embedder.in_flight == 2  # no room: c and d are not queued
            waiting.cancel()
            await until(lambda: embedder.waiting_for_room == 1)
            gate.set()
        assert server.requests == [["a", "b"], ["d"]]
        assert calls.results == {"a": [expected("a"), expected("b")], "d": [expected("d")]}


async def test_a_call_larger_than_max_pending_goes_alone() -> None:
    gate = anyio.Event()
    async with EmbeddingsServer(gate=gate) as server:
        embedder = batching(server, ManualClock(), max_batch=2, max_pending=2, max_wait_s=0)
        calls = Recorder(embedder)
        async with anyio.create_task_group() as tg:
            tg.start_soon(calls, ["p", "q", "r", "s"])  # more than `max_pending`, but nothing else is pending
            await server.wait_for(1)
            tg.start_soon(calls, ["t"])
            await until(lambda: embedder.waiting_for_room == 1)
            gate.set()
        assert server.requests == [["p", "q"], ["r", "s"], ["t"]]
        assert calls.results == {"p": [expected(t) for t in "pqrs"], "t": [expected("t")]}


# ---- closing, delegation, validation -----------------------------------------------------------------------------


async def test_aclose_sends_what_is_queued_at_once() -> None:
    async with EmbeddingsServer() as server:
        embedder = batching(server, ManualClock(), max_batch=8)  # the manual clock never advances
        calls = Recorder(embedder)
        async with anyio.create_task_group() as tg:
            for text in ["a", "b", "c"]:
                tg.start_soon(calls, [text])
            await until(lambda: embedder.pending == 3)
            await embedder.aclose()
            assert server.requests == [["a", "b", "c"]]
        assert calls.results == {t: [expected(t)] for t in "abc"}
        with pytest.raises(UserError, match="is closed"):
            await embedder.embed(["d"])
        await embedder.aclose()  # idle: returns at once


async def test_async_with_closes() -> None:
    async with EmbeddingsServer() as server, batching(server, ManualClock()) as embedder:
        pass
    with pytest.raises(UserError, match=r"closed \(`aclose\(\)` was called\): make a new one"):
        await embedder.embed(["x"])


def test_name_and_dimensions_are_the_wrapped_embedders() -> None:
    embedder = BatchingEmbedder(HashEmbedder(48))
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dimensions) == ("hash-48", 48)
    assert repr(embedder) == f"BatchingEmbedder({embedder.wrapped!r}, max_batch=64, max_wait_s=0.005)"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch": 0}, "`max_batch` must be a whole number of texts, at least 1; got 0"),
        ({"max_wait_s": -1.0}, "`max_wait_s` must be a number of seconds, 0 or more; got -1.0"),
        ({"max_wait_s": float("nan")}, "`max_wait_s` must be a number of seconds"),
        ({"max_batch": 8, "max_pending": 4}, r"`max_pending` must be at least `max_batch` \(8\)"),
    ],
)
def test_bad_options_are_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(UserError, match=message):
        BatchingEmbedder(HashEmbedder(), **options)  # type: ignore[arg-type]  # each case sets one option


def test_only_an_embedder_is_wrapped() -> None:
    with pytest.raises(UserError, match="BatchingEmbedder wraps an Embedder"):
        BatchingEmbedder(object())  # type: ignore[arg-type]  # the mistake under test


def test_one_embedder_serves_one_event_loop_after_another() -> None:
    inner = Counting()
    embedder = BatchingEmbedder(inner, max_wait_s=0.001)

    async def round_trip(cancel_one: bool) -> None:
        async with anyio.create_task_group() as tg:
            for text in ["u", "v"]:
                tg.start_soon(embedder.embed, [text])
            if cancel_one:
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await embedder.embed(["never"])

    anyio.run(round_trip, True)
    anyio.run(round_trip, False)
    assert ["never"] not in inner.calls and sorted(t for c in inner.calls for t in c) == ["u", "u", "v", "v"]


# ---- concurrent agent runs ---------------------------------------------------------------------------------------


async def test_concurrent_runs_share_recall_and_extraction_requests(tmp_path: Path) -> None:
    def chat(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        if any(t.name == "final_result" for t in info.params.output_tools):
            found = re.search(r"My name is (\w+)\.", str(messages))
            assert found is not None
            name = found[1]
            return ModelResponse([ToolCallPart("final_result", json.dumps({"facts": [f"The user is {name}."]}), "x")])
        return ModelResponse([TextPart("Noted.")])

    runs = 6
    clock = ManualClock()
    inner = Counting()
    embedder = BatchingEmbedder(inner, max_wait_s=WAIT, clock=clock)
    memory = LongTermMemory(embedder, min_score=0.05)
    async with await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 's.db'}") as store:
        assert memory.memories(store).embedder is embedder  # used as given, shared by every run of the agent
        agent = Agent(FunctionModel(chat), store=store, long_term_memory=memory)

        def queued(requests: int) -> Callable[[], bool]:
            return lambda: len(inner.calls) == requests and embedder.pending == runs

        async with anyio.create_task_group() as tg:
            for i in range(runs):
                tg.start_soon(functools.partial(agent.run, f"My name is Name{i}.", user_id=f"user{i}"))
            # Three rounds: recall before each run, then extraction's recall of the turn and its new facts.
            for requests in range(3):
                await until(queued(requests))
                clock.advance(WAIT)
        assert [len(c) for c in inner.calls] == [runs, runs, runs]  # 3 requests instead of 18
        unbatched = LongTermMemory(inner).memories(store)  # the same embedder's name: the same vectors
        for i in range(runs):
            assert [m.text for m in await unbatched.list(user_id=f"user{i}")] == [f"The user is Name{i}."]
            (hit,) = await unbatched.recall(f"The user is Name{i}.", user_id=f"user{i}")
            assert hit.score is not None and hit.score > 0.99  # stored with the vector of its own text

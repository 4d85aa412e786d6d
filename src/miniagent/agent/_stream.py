"""Streaming a run: text deltas, partial structured output and every typed event, as they happen."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..events import AgentEvent, RunFinished, StreamRestarted, TextDelta, ToolCallArgsDelta
from ..usage import Usage
from ._output import OUTPUT_TOOL_NAME, OutputSchema
from ._result import RunResult
from ._run import EventSink

if TYPE_CHECKING:
    import asyncio

OutputT = TypeVar("OutputT")
T = TypeVar("T")

__all__ = ["StreamedRun"]


class _End:
    __slots__ = ()


_END = _End()


class StreamedRun(Generic[OutputT]):
    """A run in progress, streamed. Use it as `async with agent.run_stream(prompt) as run:`.

    Leaving the `async with` block before the run ends cancels it cleanly: running tools are cancelled and
    the partial usage stays readable on [`usage`][miniagent.agent.StreamedRun.usage].
    """

    def __init__(
        self,
        start: Callable[[EventSink], Coroutine[Any, Any, RunResult[OutputT]]],
        output_schema: OutputSchema[OutputT],
        usage: Usage,
    ) -> None:
        self._start = start
        self._schema = output_schema
        self._usage = usage
        import asyncio

        self._queue: asyncio.Queue[AgentEvent | _End] = asyncio.Queue()
        self._task: asyncio.Task[RunResult[OutputT]] | None = None
        self._consumed = False
        self._result: RunResult[OutputT] | None = None
        self._generators: list[AsyncGenerator[Any, None]] = []

    def _track(self, gen: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        # Generators a consumer abandons (`break`) are closed on exit from the `async with`, not left to
        # asyncio's finalizer, which would close them later in a task of its own.
        self._generators.append(gen)
        return gen

    async def _sink(self, event: AgentEvent) -> None:
        self._queue.put_nowait(event)

    async def _produce(self) -> RunResult[OutputT]:
        try:
            return await self._start(self._sink)
        finally:
            self._queue.put_nowait(_END)

    async def __aenter__(self) -> StreamedRun[OutputT]:
        import asyncio

        self._task = asyncio.create_task(self._produce())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.cancel()
        for gen in reversed(self._generators):
            await gen.aclose()
        self._generators.clear()

    async def cancel(self) -> None:
        """Stop the run if it is still going: the model stream and running tools are cancelled."""
        task = self._task
        if task is None or task.done():
            return
        import asyncio

        task.cancel()
        await asyncio.wait([task])

    @property
    def usage(self) -> Usage:
        """What the run has consumed so far (live; partial if the run was cancelled)."""
        return self._usage

    def events(self) -> AsyncIterator[AgentEvent]:
        """Every event of the run, in order, ending with `RunFinished`, `RunFailed` or `RunCancelled`.

        The run's exception, if it failed, is raised after its `RunFailed` event has been yielded.
        """
        return self._track(self._events())

    async def _events(self) -> AsyncGenerator[AgentEvent, None]:
        if self._task is None:
            raise RuntimeError("use `async with agent.run_stream(...) as run:` before reading events")
        if self._consumed:
            raise RuntimeError("a streamed run's events can be read only once")
        self._consumed = True
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                break
            yield item
        task = self._task
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            raise exc
        self._result = task.result()

    def stream_text(self, *, delta: bool = True) -> AsyncIterator[str]:
        """The model's text as it streams: each new piece (`delta=True`) or the whole text so far.

        When a stream breaks off and starts again (a retry or a fallback model), the whole text starts again from
        the new attempt; with `delta=True`, read `events()` to see the `StreamRestarted` that voids earlier pieces.
        """
        return self._track(self._stream_text(delta))

    async def _stream_text(self, delta: bool) -> AsyncGenerator[str, None]:
        text = ""
        async for event in self.events():
            if isinstance(event, TextDelta):
                text += event.delta
                yield event.delta if delta else text
            elif isinstance(event, StreamRestarted):
                text = ""

    def stream_output(self) -> AsyncIterator[OutputT]:
        """The output as it streams: partially filled typed objects, then the validated final output.

        For a structured `output_type`, fields not yet received are `None` (or their default) in the partial
        objects. For `str` output, the text so far.
        """
        return self._track(self._stream_output())

    async def _stream_output(self) -> AsyncGenerator[OutputT, None]:
        args: dict[tuple[int, int], str] = {}
        text = ""
        last: OutputT | None = None
        async for event in self.events():
            if isinstance(event, ToolCallArgsDelta) and event.tool_name == OUTPUT_TOOL_NAME:
                key = (event.step, event.index)
                args[key] = args.get(key, "") + event.delta
                partial = self._schema.partial(args[key])
                if partial is not None and partial != last:
                    last = partial
                    yield partial
            elif isinstance(event, TextDelta) and self._schema.text:
                text += event.delta
                yield text  # type: ignore[misc]  # OutputT is str here
            elif isinstance(event, StreamRestarted):  # the step's partial output is void: start it again
                text = ""
                args = {key: value for key, value in args.items() if key[0] != event.step}
            elif isinstance(event, RunFinished):
                yield event.output

    async def get_output(self) -> OutputT:
        """Wait for the run to end and return its validated output (reading and dropping remaining events)."""
        return (await self.get_result()).output

    async def get_result(self) -> RunResult[OutputT]:
        """Wait for the run to end and return its result."""
        if self._result is None:
            if not self._consumed:
                async for _ in self.events():
                    pass
            if self._result is None:
                assert self._task is not None
                self._result = await self._task
        return self._result

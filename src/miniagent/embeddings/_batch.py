"""`BatchingEmbedder`: concurrent `embed` calls grouped into one request to the wrapped embedder.

There is no background task, so the wrapper needs no `async with` and works in whatever event loop calls it.
The callers do the batching between them:

- a call queues its texts (after waiting for room when `max_pending` texts are already queued or in flight);
- when `max_batch` texts are queued, the caller that sees it sends them at once, as one request;
- otherwise one waiting caller holds the timer: when the oldest queued text has waited `max_wait_s`, it sends
  what is queued (up to `max_batch` texts);
- every other caller waits on an event of its own, set when its vectors are in (or its batch failed), or when it
  must take over the timer or send a full batch.

A request is awaited outside of any lock, so several batches can be in flight at once. The state is only touched
between awaits, in one event loop, so it needs no lock either. Wake-ups are targeted (one per batch, not one per
queued text), so `N` waiting callers cost `O(N)` wake-ups, not `O(N²)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from types import TracebackType
from typing import Final, NamedTuple

import anyio

from .._utils import SYSTEM_CLOCK, Clock
from ..errors import UserError
from ._base import Embedder

__all__ = ["BatchingEmbedder"]


class _Call:
    """One `embed` call: its texts, their vectors as they arrive, and the event its caller waits on."""

    __slots__ = ("texts", "vectors", "unanswered", "error", "traceback", "abandoned", "event")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.vectors: list[list[float]] = [[] for _ in texts]
        self.unanswered = len(texts)
        self.error: BaseException | None = None
        self.traceback: TracebackType | None = None
        self.abandoned = False
        """The caller left (cancelled): its texts are dropped from the queue and its vectors ignored."""
        self.event = anyio.Event()

    @property
    def done(self) -> bool:
        return self.unanswered == 0 or self.error is not None or self.abandoned

    def wake(self) -> None:
        self.event.set()


class _Entry(NamedTuple):
    """One queued text: whose it is, where its vector goes, and when it was queued."""

    call: _Call
    position: int
    queued_at: float


class BatchingEmbedder:
    """Groups the `embed` calls of concurrent runs into one request to the wrapped embedder.

    Each long-term-memory recall embeds one text, and each extraction one or a few: with many runs at once, that is
    many small requests, each paying the provider's per-request overhead. Wrapped, the texts of calls made within
    `max_wait_s` of each other go out together, up to `max_batch` per request, and each caller still gets exactly
    its own vectors, in order. `name` and `dimensions` are the wrapped embedder's, so stored vectors stay
    comparable with unbatched ones.

    - A call of more than `max_batch` texts is split across consecutive requests.
    - If a request fails, every call with a text in it raises that exception (with a note saying it came from a
      batch); other requests are unaffected.
    - A cancelled call's texts are taken out of the queue if they were not sent yet; if the cancelled caller was
      the one sending a request, the other callers' texts in it go back to the head of the queue and are sent
      again.
    - At most `max_pending` texts are queued or in flight; further calls wait for room (backpressure), in order.
    - Identical texts in one request are sent once (`dedupe`).

    Use it from one event loop at a time (it keeps no loop-bound state between calls, so `run_sync` after
    `run_sync` is fine).

    Example:
        ```python
        import anyio

        from miniagent.embeddings import BatchingEmbedder, HashEmbedder


        async def main() -> None:
            embedder = BatchingEmbedder(HashEmbedder(), max_batch=64, max_wait_s=0.005)
            async with anyio.create_task_group() as tg:
                for fact in ["I live in Lyon", "I have a cat", "I like jazz"]:
                    tg.start_soon(embedder.embed, [fact])
            assert embedder.requests == 1  # three calls, one request


        anyio.run(main)
        ```

    Args:
        embedder: The embedder to send the batches to.
        max_batch: The most texts in one request.
        max_wait_s: How long a queued text may wait for others before it is sent anyway (`0`: at once).
        max_pending: The most texts queued or in flight; a call that does not fit waits (a call of more than this
            is let through alone, when nothing else is pending). At least `max_batch`.
        dedupe: Send identical texts of one request once.
        clock: The clock of the `max_wait_s` timer (tests pass a `ManualClock`).
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.005,
        max_pending: int = 1024,
        dedupe: bool = True,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(embedder, Embedder):
            raise UserError(f"BatchingEmbedder wraps an Embedder (`name`, `dimensions`, `embed`), got {embedder!r}.")
        if max_batch < 1:
            raise UserError(f"`max_batch` must be a whole number of texts, at least 1; got {max_batch!r}.")
        if not 0 <= max_wait_s < float("inf"):
            raise UserError(f"`max_wait_s` must be a number of seconds, 0 or more; got {max_wait_s!r}.")
        if max_pending < max_batch:
            raise UserError(
                f"`max_pending` must be at least `max_batch` ({max_batch}), or no batch could fill up; "
                f"got {max_pending!r}."
            )
        self.wrapped: Final = embedder
        """The embedder the batches are sent to."""
        self.max_batch: Final = max_batch
        """The most texts in one request."""
        self.max_wait_s: Final = float(max_wait_s)
        """How long a queued text may wait for others."""
        self.max_pending: Final = max_pending
        """The most texts queued or in flight."""
        self.dedupe: Final = dedupe
        """Whether identical texts of one request are sent once."""
        self.clock: Final[Clock] = clock or SYSTEM_CLOCK
        """The clock of the `max_wait_s` timer."""
        self._queue: deque[_Entry] = deque()
        self._in_flight = 0
        self._requests = 0
        self._waiting: dict[_Call, None] = {}  # callers idle until woken, oldest first
        self._admission: deque[_Call] = deque()  # callers waiting for room, in order
        self._holder: _Call | None = None  # the caller holding the `max_wait_s` timer
        self._closed = False
        self._drained: anyio.Event | None = None

    # ---- the Embedder contract, delegated ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The wrapped embedder's name (vectors stay comparable with its unbatched ones)."""
        return self.wrapped.name

    @property
    def dimensions(self) -> int:
        """The wrapped embedder's vector length."""
        return self.wrapped.dimensions

    def __repr__(self) -> str:
        return f"BatchingEmbedder({self.wrapped!r}, max_batch={self.max_batch}, max_wait_s={self.max_wait_s})"

    # ---- what is going on ----------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Texts queued, not sent yet."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Texts in requests that have not answered yet."""
        return self._in_flight

    @property
    def waiting_for_room(self) -> int:
        """Calls waiting because `max_pending` texts are already queued or in flight."""
        return len(self._admission)

    @property
    def requests(self) -> int:
        """Requests sent to the wrapped embedder so far."""
        return self._requests

    # ---- embedding -----------------------------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, from a request shared with concurrent calls.

        Raises:
            UserError: the embedder was closed.
            Exception: whatever the wrapped embedder raised for the request that carried these texts.
        """
        if not texts:
            return []
        if self._closed:
            raise UserError("This `BatchingEmbedder` is closed (`aclose()` was called): make a new one.")
        call = _Call(list(texts))
        try:
            await self._admit(call)
            now = self.clock.now()
            self._queue.extend(_Entry(call, i, now) for i in range(len(call.texts)))
            while not call.done:
                if self._ready():
                    await self._send(call)
                elif self._queue and self._holder is None:
                    await self._hold(call)
                else:
                    await self._idle(call)
        except BaseException:
            self._abandon(call)
            raise
        finally:
            if self._holder is None or call.abandoned:  # someone must take over the timer, or see a new head
                self._kick()
        if call.error is not None:
            raise call.error.with_traceback(call.traceback)
        return call.vectors

    async def aclose(self) -> None:
        """Send every queued text now (not waiting for `max_wait_s`) and return once all are answered.

        Calls already waiting for room are served too; `embed` called afterwards raises `UserError`. The wrapped
        embedder is not closed (it is not owned).
        """
        self._closed = True
        if not (self._queue or self._in_flight or self._admission):
            return
        if self._drained is None:
            self._drained = anyio.Event()
        drained = self._drained
        self._kick()
        await drained.wait()

    async def __aenter__(self) -> BatchingEmbedder:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ---- the callers' roles --------------------------------------------------------------------------------

    def _ready(self) -> bool:
        """Whether the head of the queue must be sent now: a full batch, closing, or its oldest text is due."""
        if not self._queue:
            return False
        return (
            len(self._queue) >= self.max_batch
            or self._closed
            or self.clock.now() >= self._queue[0].queued_at + self.max_wait_s
        )

    def _fits(self, count: int) -> bool:
        load = len(self._queue) + self._in_flight
        return load == 0 or load + count <= self.max_pending

    async def _admit(self, call: _Call) -> None:
        """Wait until `call`'s texts fit under `max_pending`, behind the calls that came first."""
        if not self._admission and self._fits(len(call.texts)):
            return
        self._admission.append(call)
        try:
            while self._admission[0] is not call or not self._fits(len(call.texts)):
                call.event = anyio.Event()
                await call.event.wait()
        finally:
            self._admission.remove(call)
            if self._admission:  # the next one may fit too (it checks once these texts are queued)
                self._admission[0].wake()

    async def _idle(self, call: _Call) -> None:
        """Wait until `call` is answered, or until it is woken to take over the timer or send a batch."""
        call.event = anyio.Event()
        self._waiting[call] = None
        try:
            await call.event.wait()
        finally:
            self._waiting.pop(call, None)

    async def _hold(self, call: _Call) -> None:
        """Hold the timer: wait until the oldest queued text is due (or a batch fills, or `call` is answered)."""
        self._holder = call
        try:
            while not call.done and self._queue and not self._ready():
                delay = self._queue[0].queued_at + self.max_wait_s - self.clock.now()
                call.event = anyio.Event()
                with self.clock.deadline_scope(delay):
                    await call.event.wait()
        finally:
            self._holder = None

    def _kick(self) -> None:
        """Make sure someone acts on the queue: the timer's holder looks again, else an idle caller takes over."""
        if not self._queue:
            return
        if self._holder is not None:
            self._holder.wake()
        elif self._waiting:
            call = next(iter(self._waiting))
            del self._waiting[call]
            call.wake()

    async def _send(self, sender: _Call) -> None:
        """Send the head of the queue (up to `max_batch` texts) as one request, and hand out the vectors."""
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        texts, slots = self._texts(batch)
        self._in_flight += len(batch)
        self._requests += 1
        self._kick()  # the rest of the queue has a new oldest text
        try:
            vectors = await self.wrapped.embed(texts)
            if len(vectors) != len(texts):
                raise UserError(
                    f"{self.wrapped.name!r} returned {len(vectors)} vectors for {len(texts)} texts: an `Embedder` "
                    "must return one vector per text, in order."
                )
        except Exception as exc:
            self._in_flight -= len(batch)
            self._fail(batch, len(texts), exc)
        except BaseException:
            # The sender is cancelled: the other callers' texts go back to the head of the queue, to be sent again.
            self._in_flight -= len(batch)
            self._queue.extendleft(reversed([e for e in batch if e.call is not sender and not e.call.done]))
            self._released()
            raise
        else:
            self._in_flight -= len(batch)
            given: set[int] = set()
            for entry, slot in zip(batch, slots, strict=True):
                call = entry.call
                if call.done:
                    continue  # its caller left, or another of its texts failed
                # A text sent once for several entries: each gets its own list.
                call.vectors[entry.position] = list(vectors[slot]) if slot in given else vectors[slot]
                given.add(slot)
                call.unanswered -= 1
                if call.unanswered == 0:
                    call.wake()
        self._released()

    def _texts(self, batch: list[_Entry]) -> tuple[list[str], list[int]]:
        """The texts to send for `batch`, and for each entry the index of its text among them."""
        if not self.dedupe:
            return [e.call.texts[e.position] for e in batch], list(range(len(batch)))
        index: dict[str, int] = {}
        slots = [index.setdefault(e.call.texts[e.position], len(index)) for e in batch]
        return list(index), slots

    def _fail(self, batch: list[_Entry], sent: int, exc: Exception) -> None:
        """Fail every live call with a text in `batch`; their texts still queued are dropped."""
        calls = list(dict.fromkeys(e.call for e in batch if not e.call.done))
        exc.add_note(
            f"(`BatchingEmbedder`: one request of {sent} texts to {self.wrapped.name!r}, for {len(calls)} "
            "concurrent `embed` calls, failed; each of those calls raises this error, other requests are unaffected.)"
        )
        failed = set(calls)
        self._queue = deque(e for e in self._queue if e.call not in failed)
        for call in calls:
            call.error = exc
            call.traceback = exc.__traceback__
            call.wake()

    def _abandon(self, call: _Call) -> None:
        """`call`'s caller left (cancelled): drop its queued texts; vectors still coming for it are ignored."""
        call.abandoned = True
        if any(e.call is call for e in self._queue):
            self._queue = deque(e for e in self._queue if e.call is not call)
        self._released()

    def _released(self) -> None:
        """Texts left the queue or flight: the next call waiting for room may fit; `aclose` may be done."""
        if self._admission:
            self._admission[0].wake()
        if self._drained is not None and not (self._queue or self._in_flight or self._admission):
            self._drained.set()
            self._drained = None

"""The embedded job queue: one SQLite file (WAL), shared by the processes of one machine, with leases.

A job is a row of `queue_jobs`. A consumer claims ready rows in one write transaction (`BEGIN IMMEDIATE`: the
file's single writer lock, so two processes never claim the same row): each claimed row gets a fresh lease token,
one more delivery, and `available_at` moved to the lease's end. A row is ready when `available_at <= now`, which
covers three cases with one indexed condition: a new job, a released one whose delay passed, and one whose lease
expired because its consumer stopped renewing it (crashed, hung, closed). While a queue object is open it renews
the leases of its unsettled deliveries every `lease_s / 3` seconds, so a live consumer keeps its jobs however long
they run.

Settling names the row and its lease token: `ack` and `reject` delete the row, `release` clears the lease and makes
the row available after the delay. A settlement whose lease was lost (it expired and another consumer took the job)
changes nothing and is logged at debug: the other consumer has the job now, and the run's idempotency makes the
second execution harmless.

Consumers poll for ready rows every `poll_interval_s` (jobs enqueued by other processes are seen that late) and wake
at once for a job enqueued in this process (through any queue object of the same file and name). The file is opened
with the store's SQLite library (`pysqlite3` when installed): two SQLite libraries in one process do not see each
other's locks on one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeVar, cast

import anyio
import anyio.to_thread

from ..errors import QueueUnavailable, UserError
from ._base import Delivery, Job, decode_job, safe_url, unavailable

if TYPE_CHECKING:
    from ._base import QueueKind

__all__ = ["SQLiteQueue"]

_log = logging.getLogger("miniagent.queue")

_T = TypeVar("_T")

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS queue_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        job_id TEXT,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        available_at REAL NOT NULL,
        lease_token TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0
    )
    """,
    "CREATE INDEX IF NOT EXISTS queue_jobs_ready ON queue_jobs (queue, available_at)",
)
# `ORDER BY available_at, id` walks the index in order (its entries end with the rowid): enqueue order for new jobs.
_READY: Final = "FROM queue_jobs WHERE queue = ? AND available_at <= ?"
_MAX_BACKOFF_S: Final = 5.0


Sleep = Callable[[float], Awaitable[None]]
"""Waits some seconds (`anyio.sleep`); the lease renewer sleeps with it, so tests can step it."""


class _Closed(Exception):
    """The queue was closed while an operation waited for the connection (internal)."""


@dataclass(eq=False, slots=True)
class _Consumer:
    """One `consume()` iterator: its prefetch bound and what it holds."""

    prefetch: int
    epoch: int
    """The queue's `_epoch` when it started: `close()` moves it on, which ends the iterator."""
    loop: asyncio.AbstractEventLoop
    """The event loop it runs on (an enqueue on another thread wakes it through this loop)."""
    buffer: deque[Delivery] = field(default_factory=deque)
    """Claimed, not yet yielded (they count against `prefetch`, and go back if the iterator ends)."""
    in_flight: int = 0
    """Claimed and not settled: the buffer plus the yielded deliveries not settled yet."""
    wake: anyio.Event = field(default_factory=anyio.Event)


@dataclass(eq=False, slots=True)
class _Lease:
    """What a delivery's `token` holds: its row, the lease token that proves the claim, and who claimed it."""

    queue: SQLiteQueue = field(repr=False)
    row_id: int
    token: str
    job_id: str | None
    previous_available_at: float
    """The row's `available_at` before the claim (restored when an unyielded claim is given back)."""
    consumer: _Consumer | None = field(repr=False)


def _path_of(url: str) -> Path:
    """The file a `sqlite:///` URL names (`sqlite:///rel.db` relative, `sqlite:////abs.db` absolute)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("sqlite", "sqlite+aiosqlite") or not rest.startswith("/"):
        raise UserError(
            f"An SQLite job queue URL is `sqlite:///relative/queue.db` or `sqlite:////absolute/queue.db` "
            f"(got {safe_url(url)!r})."
        )
    raw = rest[1:]
    if raw in ("", ":memory:") or raw.startswith("file:") or "mode=memory" in raw:
        raise UserError(
            f"The SQLite job queue must be a file, so that a restart loses no job (got {safe_url(url)!r}): "
            "use e.g. `sqlite:////var/lib/miniagent/queue.db`, or leave MINIAGENT_QUEUE_URL unset for `queue.db` "
            "beside the store."
        )
    if "?" in raw:
        raise UserError(
            f"An SQLite job queue URL takes no query parameters (got {safe_url(url)!r}): pass options as keyword "
            "arguments of `open_queue`."
        )
    return Path(raw)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _positive_seconds(name: str, value: object) -> float:
    if not _is_number(value) or cast(float, value) <= 0:
        raise UserError(f"`{name}` must be a finite number of seconds > 0, got {value!r}.")
    return float(cast(float, value))


class SQLiteQueue:
    """The embedded [`JobQueue`][miniagent.queue.JobQueue]: durable jobs in one SQLite file, claimed with leases.

    Several processes of one machine (a server and its workers) may share the file; each job goes to one consumer
    at a time. Open it with [`open_queue`][miniagent.queue.open_queue] (`sqlite:///path/queue.db`); the docs of
    the `miniagent.queue._sqlite` module describe the table and the leases.

    Example:
        ```python
        import tempfile

        import anyio

        from miniagent.queue import Job, open_queue


        async def main() -> None:
            queue = open_queue(f"sqlite:///{tempfile.mkdtemp()}/queue.db", lease_s=30)
            await queue.enqueue(Job(run_id="r1", tenant_id="t", user_id="u", agent="echo", prompt="hi"))
            assert await queue.depth() == 1
            consume = queue.consume(prefetch=1)
            delivery = await anext(consume)
            assert delivery.job is not None and delivery.deliveries == 1
            await queue.release(delivery)  # back in the queue: delivered again, counting a second delivery
            again = await anext(consume)
            assert again.job == delivery.job and again.deliveries == 2
            await queue.ack(again)
            await queue.close()


        anyio.run(main)
        ```

    Args:
        url: `sqlite:///relative/queue.db` or `sqlite:////absolute/queue.db` (`sqlite+aiosqlite://` is accepted
            too). The directory is created when missing. An in-memory database is refused: it would lose jobs.
        name: The queue's name: queue objects with the same file and name share the jobs.
        lease_s: How long a claimed job stays with its consumer without a renewal (the queue renews every
            `lease_s / 3` while open); after that another consumer may take it.
        max_deliveries: Deliveries after which the worker dead-letters a job (kept for the worker; SQLite itself
            never drops a job).
        clock: Epoch seconds for `available_at` and leases (`time.time`); tests move it to expire leases.
        sleep: How the lease renewer waits between renewals (`anyio.sleep`); tests step it.
        poll_interval_s: How often a waiting consumer looks for jobs enqueued by other processes.
        publish_timeout_s: How long a write waits for the file's lock held by another process before it raises
            [`QueueUnavailable`][miniagent.errors.QueueUnavailable] (SQLite's busy timeout).

    Raises:
        UserError: the URL is not an SQLite file URL, or an option is out of range.
    """

    kind: QueueKind = "sqlite"
    """Always `sqlite`."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        lease_s: float,
        max_deliveries: int,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = anyio.sleep,
        poll_interval_s: float = 0.2,
        publish_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        """The queue's URL."""
        self.path = _path_of(url)
        """The SQLite file."""
        if not _is_name(name):
            raise UserError(f"The queue's `name` must be a non-empty string of at most 200 characters, got {name!r}.")
        self.name = name
        """The queue's name within the file."""
        self.lease_s = _positive_seconds("lease_s", lease_s)
        """How long a claim lasts without renewal."""
        if not _is_count(max_deliveries, 1):
            raise UserError(f"`max_deliveries` must be an integer >= 1, got {max_deliveries!r}.")
        self.max_deliveries = max_deliveries
        """Deliveries after which the worker dead-letters a job."""
        self.poll_interval_s = _positive_seconds("poll_interval_s", poll_interval_s)
        """How often a waiting consumer polls the file."""
        self.publish_timeout_s = _positive_seconds("publish_timeout_s", publish_timeout_s)
        """How long a write waits for another process's lock."""
        self._clock = clock
        self._sleep = sleep
        self._conn: sqlite3.Connection | None = None
        self._errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        self._lock = anyio.Lock()
        self._closed = False
        self._epoch = 0
        self._consumers: set[_Consumer] = set()
        self._leases: dict[int, _Lease] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._key = (os.path.realpath(self.path), name)

    def __repr__(self) -> str:
        return f"SQLiteQueue({safe_url(self.url)!r}, name={self.name!r})"

    # -- connection -----------------------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (creating it, its directory and the table when missing); idempotent, reopens after `close()`.

        Raises:
            QueueUnavailable: the file cannot be created, opened or written (a directory that cannot be created or
                written, a file that is not an SQLite database, a full disk).
        """
        with anyio.CancelScope(shield=True):  # an opened connection must not be dropped unclosed
            async with self._lock:
                if self._conn is not None:
                    return
                self._conn = await anyio.to_thread.run_sync(self._open)
                self._closed = False

    def _open(self) -> sqlite3.Connection:
        from ..store._sqlite_driver import sqlite_module

        module = sqlite_module()
        self._errors = (sqlite3.Error, cast("type[BaseException]", module.Error))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = cast(
                "sqlite3.Connection",
                module.connect(
                    str(self.path), timeout=self.publish_timeout_s, isolation_level=None, check_same_thread=False
                ),
            )
        except (OSError, *self._errors) as exc:
            raise self._unavailable(exc) from exc
        try:
            self._in_thread(conn, _prepare)
        except BaseException:
            conn.close()
            raise
        return conn

    def _unavailable(self, exc: BaseException) -> QueueUnavailable:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            hint = (
                f"Another process held the file's write lock for more than publish_timeout_s="
                f"{self.publish_timeout_s:g} s: look for a stuck process using {str(self.path)!r}, or raise "
                "`publish_timeout_s`."
            )
        else:
            hint = (
                f"Check that the directory {str(self.path.parent)!r} exists or can be created and is writable, that "
                f"the disk is not full, and that {self.path.name!r} is an SQLite database (a miniagent job queue); "
                "or set MINIAGENT_QUEUE_URL to another file."
            )
        return unavailable("sqlite", self.url, exc, hint)

    def _in_thread(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """`fn(conn)` in a worker thread; rolls back on error and raises database errors as `QueueUnavailable`."""
        try:
            return fn(conn)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(*self._errors):  # the error may have ended the transaction already
                    conn.rollback()
            if isinstance(exc, (OSError, *self._errors)):
                raise self._unavailable(exc) from exc
            raise

    async def _locked(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """`fn(connection)` in a worker thread; the caller holds `_lock`.

        Raises:
            _Closed: the queue is closed.
        """
        conn = self._conn
        if conn is None:
            raise _Closed
        return await anyio.to_thread.run_sync(self._in_thread, conn, fn)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """`fn(connection)` in a worker thread, one at a time (see `_locked`)."""
        async with self._lock:
            return await self._locked(fn)

    async def _ensure_open(self) -> None:
        if self._closed:
            raise UserError(f"{self!r} was closed: call `await queue.connect()` to open it again.")
        if self._conn is None:
            await self.connect()

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """`_run` for a public method: connects first, and says so clearly when the queue was closed meanwhile."""
        await self._ensure_open()
        try:
            return await self._run(fn)
        except _Closed:
            raise UserError(f"{self!r} was closed: call `await queue.connect()` to open it again.") from None

    async def close(self) -> None:
        """Stop the consume iterators (they end), stop renewing leases and close the file.

        Deliveries not settled yet are left to their leases: another consumer gets them once the leases expire.
        Jobs claimed but not yet handed out by an iterator are put back at once. Closing twice is harmless.
        """
        self._closed = True
        self._epoch += 1
        for consumer in self._consumers:
            consumer.wake.set()
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.wait([renewer])
        with anyio.CancelScope(shield=True):
            async with self._lock:
                conn = self._conn
                if conn is None:
                    return
                unyielded = [delivery for consumer in self._consumers for delivery in consumer.buffer]
                for consumer in self._consumers:
                    consumer.buffer.clear()
                if unyielded:
                    try:
                        await self._locked(lambda conn: _give_back(conn, unyielded))
                    except QueueUnavailable as exc:
                        _log.warning("Could not put back %d claimed job(s) of %r: %s", len(unyielded), self, exc)
                self._conn = None
                self._leases.clear()
                await anyio.to_thread.run_sync(conn.close)

    # -- producing ------------------------------------------------------------------------------------------------

    async def enqueue(self, job: Job) -> None:
        """Add `job`; returns once it is committed to the file.

        Raises:
            QueueUnavailable: it could not be written (nothing was added).
            UserError: the queue was closed.
        """
        await self._insert(job.to_bytes(), job.job_id, job.enqueued_at)

    async def _enqueue_raw(self, body: bytes) -> None:
        """Add a message body that may not be a job (for tests of undecodable messages)."""
        await self._insert(body, None, self._clock())

    async def _insert(self, body: bytes, job_id: str | None, enqueued_at: float) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO queue_jobs (queue, job_id, body, enqueued_at, available_at, deliveries) "
                "VALUES (?, ?, ?, ?, ?, 0)",
                (self.name, job_id, body, enqueued_at, self._clock()),
            )

        await self._call(insert)
        _wake_local(self._key)

    # -- consuming ------------------------------------------------------------------------------------------------

    def consume(self, *, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries in enqueue order, at most `prefetch` unsettled at a time, until `close()` or cancellation.

        Waits while no job is ready: it polls the file every `poll_interval_s`, and wakes at once for a job
        enqueued in this process. A database error while polling is logged and retried after a growing pause, so a
        consumer outlives a file that is briefly unavailable. Jobs claimed but not yet handed out when the iterator
        ends are put back as they were; the deliveries it handed out stay leased (renewed) until they are settled
        or the queue is closed.

        Raises:
            UserError: `prefetch` is not an integer >= 1, or the queue was closed.
        """
        if not _is_count(prefetch, 1):
            raise UserError(f"`prefetch` must be an integer >= 1, got {prefetch!r}.")
        return self._consume(prefetch)

    async def _consume(self, prefetch: int) -> AsyncIterator[Delivery]:
        await self._ensure_open()
        consumer = _Consumer(prefetch, self._epoch, asyncio.get_running_loop())
        self._consumers.add(consumer)
        _LOCAL_CONSUMERS.setdefault(self._key, set()).add(consumer)
        self._start_renewer()
        backoff = self.poll_interval_s
        try:
            while consumer.epoch == self._epoch:
                if consumer.buffer:
                    yield consumer.buffer.popleft()
                    continue
                consumer.wake = anyio.Event()  # before looking: an enqueue from now on ends the wait below
                room = prefetch - consumer.in_flight
                wait: float | None = None  # full: only a settlement (or `close()`) can change anything
                if room > 0:
                    try:
                        if await self._claim(consumer, room):
                            backoff = self.poll_interval_s
                            continue
                        wait = self.poll_interval_s
                    except _Closed:
                        return
                    except QueueUnavailable as exc:
                        _log.warning("Polling %r failed, retrying in %.1f s: %s", self, backoff, exc)
                        wait, backoff = backoff, min(backoff * 2, _MAX_BACKOFF_S)
                if consumer.epoch != self._epoch:
                    return
                with anyio.move_on_after(wait):
                    await consumer.wake.wait()
        finally:
            self._consumers.discard(consumer)
            local = _LOCAL_CONSUMERS.get(self._key)
            if local is not None:
                local.discard(consumer)
                if not local:
                    del _LOCAL_CONSUMERS[self._key]
            if consumer.buffer:
                unyielded = list(consumer.buffer)
                consumer.buffer.clear()
                with anyio.CancelScope(shield=True):
                    await self._put_back(unyielded)

    async def _claim(self, consumer: _Consumer, limit: int) -> int:
        """Claim up to `limit` ready jobs into `consumer`'s buffer; how many it got."""

        def claim(conn: sqlite3.Connection) -> list[tuple[int, str | None, bytes, int, float, str]]:
            if conn.execute(f"SELECT 1 {_READY} LIMIT 1", (self.name, self._clock())).fetchone() is None:
                return []  # nothing ready: no write lock taken, so idle pollers of other processes do not contend
            conn.execute("BEGIN IMMEDIATE")
            now = self._clock()
            rows = conn.execute(
                f"SELECT id, job_id, body, deliveries, available_at {_READY} ORDER BY available_at, id LIMIT ?",
                (self.name, now, limit),
            ).fetchall()
            claimed = []
            for row_id, job_id, body, deliveries, available_at in rows:
                token = uuid.uuid4().hex
                conn.execute(
                    "UPDATE queue_jobs SET available_at = ?, lease_token = ?, deliveries = deliveries + 1 WHERE id = ?",
                    (now + self.lease_s, token, row_id),
                )
                claimed.append((row_id, job_id, bytes(body), deliveries + 1, available_at, token))
            conn.execute("COMMIT")
            return claimed

        # Shielded and under the lock: claimed rows reach the buffer, where `close()` or the iterator's `finally`
        # finds them to put back.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                rows = await self._locked(claim)
                for row_id, job_id, body, deliveries, available_at, token in rows:
                    lease = _Lease(self, row_id, token, job_id, available_at, consumer)
                    self._leases[row_id] = lease
                    consumer.buffer.append(_delivery(body, deliveries, lease))
                consumer.in_flight += len(rows)
        return len(rows)

    async def _put_back(self, unyielded: list[Delivery]) -> None:
        """Give back claimed jobs that were never handed out: as they were, not counting a delivery."""
        for delivery in unyielded:
            lease = cast("_Lease", delivery.token)
            if self._leases.get(lease.row_id) is lease:
                del self._leases[lease.row_id]
        try:
            await self._run(lambda conn: _give_back(conn, unyielded))
        except _Closed:
            return  # `close()` put them back
        except QueueUnavailable as exc:
            _log.warning(
                "Could not put back %d claimed job(s) of %r (their leases will expire): %s", len(unyielded), self, exc
            )

    # -- leases ---------------------------------------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            loop = asyncio.get_running_loop()
            self._renewer = loop.create_task(self._renew_forever(), name=f"miniagent-queue-leases-{self.name}")

    async def _renew_forever(self) -> None:
        """Every `lease_s / 3`, extend the leases of this queue object's unsettled deliveries."""
        while True:
            await self._sleep(self.lease_s / 3)
            leases = list(self._leases.values())
            if not leases:
                continue
            try:
                lost = await self._run(functools.partial(self._renew, leases=leases))
            except _Closed:
                return
            except QueueUnavailable as exc:
                _log.warning("Could not renew %d lease(s) of %r, retrying: %s", len(leases), self, exc)
                continue
            for lease in lost:  # settled meanwhile, or expired and taken by another consumer: nothing to renew
                if self._leases.get(lease.row_id) is lease:
                    del self._leases[lease.row_id]
                    _log.debug(
                        "Lost the lease of job %s of %r: it expired and another consumer took it", lease.job_id, self
                    )

    def _renew(self, conn: sqlite3.Connection, *, leases: list[_Lease]) -> list[_Lease]:
        return _renew(conn, leases, self._clock() + self.lease_s)

    # -- settling -------------------------------------------------------------------------------------------------

    async def ack(self, delivery: Delivery) -> None:
        """The job is done: delete it.

        A delivery whose lease was lost (it expired and another consumer took the job) is not deleted: the call
        changes nothing and logs at debug; the other consumer settles the job.

        Raises:
            UserError: `delivery` was already settled, is not from this queue, or the queue was closed.
            QueueUnavailable: the file could not be written (the delivery stays unsettled).
        """
        await self._settle(delivery, "ack", _delete)

    async def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        """Put the job back, available again after `delay_s`; its next delivery counts one more.

        A no-op logged at debug when the lease was lost (see `ack`).

        Raises:
            UserError: `delay_s` is not a finite number >= 0; `delivery` was already settled, is not from this
                queue, or the queue was closed.
            QueueUnavailable: the file could not be written (the delivery stays unsettled).
        """
        if not _is_number(delay_s) or delay_s < 0:
            raise UserError(f"`delay_s` must be a finite number of seconds >= 0, got {delay_s!r}.")

        def put_back(conn: sqlite3.Connection, lease: _Lease) -> bool:
            return (
                conn.execute(
                    "UPDATE queue_jobs SET available_at = ?, lease_token = NULL WHERE id = ? AND lease_token = ?",
                    (self._clock() + delay_s, lease.row_id, lease.token),
                ).rowcount
                == 1
            )

        await self._settle(delivery, "release", put_back)

    async def reject(self, delivery: Delivery, *, reason: str) -> None:
        """Remove a job that failed for good (the worker recorded its dead letter first); logs `reason`.

        A no-op logged at debug when the lease was lost (see `ack`).

        Raises:
            UserError: `delivery` was already settled, is not from this queue, or the queue was closed.
            QueueUnavailable: the file could not be written (the delivery stays unsettled).
        """
        if await self._settle(delivery, "reject", _delete):
            job_id = cast("_Lease", delivery.token).job_id
            _log.info("Rejected job %s of %r after %d delivery(ies): %s", job_id, self, delivery.deliveries, reason)

    async def _settle(
        self,
        delivery: Delivery,
        action: Literal["ack", "release", "reject"],
        statement: Callable[[sqlite3.Connection, _Lease], bool],
    ) -> bool:
        """Settle `delivery` with `statement`; whether it still held its lease (`False`: a logged no-op)."""
        lease = delivery.token
        if not isinstance(lease, _Lease) or lease.queue is not self:
            raise UserError(f"Cannot {action} a delivery that {self!r} did not hand out: settle it with its own queue.")
        if delivery.settled:
            raise UserError(
                f"Cannot {action} job {lease.job_id} of {self!r}: the delivery was already settled (acked, released "
                "or rejected); settle each delivery exactly once."
            )
        delivery.settled = True  # at once: a concurrent second settlement fails instead of racing this one
        try:
            with anyio.CancelScope(shield=True):  # a write that happened is recorded here, even if cancelled
                held = await self._call(lambda conn: statement(conn, lease))
        except BaseException:
            delivery.settled = False
            raise
        if self._leases.get(lease.row_id) is lease:
            del self._leases[lease.row_id]
        if lease.consumer is not None:
            lease.consumer.in_flight -= 1
            lease.consumer.wake.set()
            lease.consumer = None
        if not held:
            _log.debug(
                "%s of job %s of %r changed nothing: its lease expired and another consumer took it",
                action,
                lease.job_id,
                self,
            )
        return held

    # -- inspection -----------------------------------------------------------------------------------------------

    async def depth(self) -> int:
        """Jobs ready to be delivered: new ones, released ones whose delay passed, and ones whose lease expired.

        Raises:
            QueueUnavailable: the file cannot be read.
            UserError: the queue was closed.
        """

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute(f"SELECT count(*) {_READY}", (self.name, self._clock())).fetchone()[0])

        return await self._call(count)

    async def check(self) -> None:
        """Read the table once.

        Raises:
            QueueUnavailable: the file cannot be opened or read.
            UserError: the queue was closed.
        """
        await self._call(lambda conn: conn.execute("SELECT 1 FROM queue_jobs LIMIT 1").fetchall())


def _prepare(conn: sqlite3.Connection) -> None:
    """WAL, full sync and the table (in a worker thread, on a new connection)."""
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("PRAGMA synchronous=FULL")  # a returned `enqueue` survives a power cut, not only a crash
    for statement in _SCHEMA:
        conn.execute(statement)


def _give_back(conn: sqlite3.Connection, unyielded: list[Delivery]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for delivery in unyielded:
        lease = cast("_Lease", delivery.token)
        conn.execute(
            "UPDATE queue_jobs SET available_at = ?, lease_token = NULL, deliveries = deliveries - 1 "
            "WHERE id = ? AND lease_token = ?",
            (lease.previous_available_at, lease.row_id, lease.token),
        )
    conn.execute("COMMIT")


def _renew(conn: sqlite3.Connection, leases: list[_Lease], until: float) -> list[_Lease]:
    """Extend `leases` to `until`; the ones no longer held."""
    conn.execute("BEGIN IMMEDIATE")
    lost = []
    for lease in leases:
        cursor = conn.execute(
            "UPDATE queue_jobs SET available_at = ? WHERE id = ? AND lease_token = ?",
            (until, lease.row_id, lease.token),
        )
        if cursor.rowcount == 0:
            lost.append(lease)
    conn.execute("COMMIT")
    return lost


def _delete(conn: sqlite3.Connection, lease: _Lease) -> bool:
    cursor = conn.execute("DELETE FROM queue_jobs WHERE id = ? AND lease_token = ?", (lease.row_id, lease.token))
    return cursor.rowcount == 1


def _delivery(body: bytes, deliveries: int, lease: _Lease) -> Delivery:
    try:
        job: Job | None = decode_job(body)
        error = None
    except ValueError as exc:
        job, error = None, str(exc)
    return Delivery(job=job, body=body, deliveries=deliveries, error=error, token=lease)


# The consumers of each (file, queue name) in this process: an enqueue through any queue object wakes them at once
# (other processes' enqueues are seen at the next poll). A consumer on another thread's event loop is woken through
# that loop.
_LOCAL_CONSUMERS: dict[tuple[str, str], set[_Consumer]] = {}


def _wake_local(key: tuple[str, str]) -> None:
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for consumer in list(_LOCAL_CONSUMERS.get(key, ())):
        if consumer.loop is running:
            consumer.wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop has closed: its consumer is gone
                consumer.loop.call_soon_threadsafe(_set_wake, consumer)


def _set_wake(consumer: _Consumer) -> None:
    consumer.wake.set()

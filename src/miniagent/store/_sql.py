"""`SQLStore`: the store on SQLAlchemy 2 (async): SQLite via aiosqlite (default) or PostgreSQL via asyncpg."""

from __future__ import annotations

import copy
import datetime as dt
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, delete, event, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..errors import StoreError, ThreadConflict, ThreadNotFound, UserError
from ..events import event_from_json, event_to_json
from ..messages import ModelMessage, ModelRequest, UserPromptPart, messages_from_json, messages_to_json
from ..usage import Usage
from ._api_keys import ApiKeysMixin
from ._base import (
    DEFAULT_TENANT,
    DEFAULT_USER,
    Branch,
    Now,
    PruneReport,
    RunRecord,
    RunStatus,
    StoredEvent,
    StoredMessage,
    ThreadInfo,
    traced,
    utc_now,
)
from ._connect import make_engine
from ._dead_letters import DeadLettersMixin, dead_letter_row
from ._feedback import FeedbackMixin
from ._models import MessageRow, RunEventRow, RunRow, TenantRow, ThreadRow, UserRow
from ._profiles import ProfilesMixin
from ._queued import QueuedRunsMixin, run_record
from ._usage import ModelUsage, UsageMixin

if TYPE_CHECKING:
    from ..events import AgentEvent
    from ..settings import Settings
    from ._base import DeadLetter
    from ._connect import Sleep
    from ._tool_results import SQLToolResults

__all__ = ["SQLStore", "default_database_url"]

_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATED: set[str] = set()  # URLs brought to the head revision by this process


def default_database_url(settings: Settings) -> str:
    """`MINIAGENT_DATABASE_URL`, else a SQLite file under `MINIAGENT_DATA_DIR` or the user data dir."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite+aiosqlite:///{settings.resolved_data_dir() / 'miniagent.db'}"


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite returns naive datetimes (stored as UTC); PostgreSQL aware ones.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _one_json(message: ModelMessage) -> str:
    # The list adapter's compact output is `[{...}]`: strip the brackets to get the one object.
    return messages_to_json([message])[1:-1].decode()


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return asdict(usage)


def _preview(message: ModelMessage) -> str:
    if isinstance(message, ModelRequest):
        for part in message.parts:
            if isinstance(part, UserPromptPart):
                return part.content[:80]
    return ""


class SQLStore(ProfilesMixin, DeadLettersMixin, UsageMixin, ApiKeysMixin, FeedbackMixin, QueuedRunsMixin):
    """The store on a SQL database: SQLite (embedded default) or PostgreSQL. One instance belongs to one event loop.

    Every method runs in one transaction: when it raises, nothing of it was written. Writes on SQLite take the write
    lock up front (`BEGIN IMMEDIATE`, WAL mode, a busy timeout), so concurrent writers queue instead of failing.

    Example:
        ```python
        import tempfile

        import anyio

        from miniagent.store import SQLStore


        async def main() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                async with await SQLStore.open(f"sqlite+aiosqlite:///{tmp}/chat.db") as store:
                    thread = await store.create_thread(user_id="alice")
                    assert (await store.get_thread(thread.id, user_id="alice")).leaf_id is None


        anyio.run(main)
        ```

    Args:
        url: A SQLAlchemy async URL: `sqlite+aiosqlite:///path.db` or `postgresql+asyncpg://user:pw@host/db`.
        tenant_id: The tenant of calls that name none.
        now: The clock for timestamps and retention (tests inject one).
        busy_timeout_s: How long a SQLite writer waits for the lock.
    """

    def __init__(
        self,
        url: str,
        *,
        tenant_id: str = DEFAULT_TENANT,
        now: Now = utc_now,
        busy_timeout_s: float = 30.0,
        default_retention_days: float | None = None,
    ) -> None:
        self.url = url
        self.tenant_id = tenant_id
        self.now = now
        self.default_retention_days = default_retention_days
        self.is_sqlite = url.startswith("sqlite")
        self.sqlite_path = self._sqlite_path(url) if self.is_sqlite else None
        self.engine: AsyncEngine = make_engine(url, busy_timeout_s=busy_timeout_s)
        if self.is_sqlite:
            self._setup_sqlite(busy_timeout_s)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def _sqlite_path(url: str) -> Path | None:
        _, _, rest = url.partition(":///")
        return Path(rest.split("?", 1)[0]) if rest and rest != ":memory:" else None

    def _setup_sqlite(self, busy_timeout_s: float) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Transactions are ours (BEGIN IMMEDIATE below), not the driver's implicit ones.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    # ---- lifecycle ---------------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        migrate: bool | None = None,
        now: Now = utc_now,
        connect_attempts: int = 3,
        retry_delay_s: float = 0.5,
        sleep: Sleep | None = None,
    ) -> SQLStore:
        """Open the store at `url` (default: from settings) and, for SQLite (or `migrate=True`), bring its schema
        to the latest migration.

        A database server is connected to at once: a connection failure (refused, no socket, starting up) is retried
        `connect_attempts` times in all, waiting `retry_delay_s` and then twice as long each time (`sleep` waits;
        tests inject one), then raised as a `StoreError` that says the database is down.
        """  # noqa: D205
        if settings is None:
            from ..settings import get_settings

            settings = get_settings()
        url = url or default_database_url(settings)
        store = cls(url, tenant_id=settings.tenant_id, now=now, default_retention_days=settings.retention_days)
        if store.sqlite_path is not None:
            try:
                store.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"Cannot create the store's directory {str(store.sqlite_path.parent)!r} ({exc}); "
                    "set MINIAGENT_DATA_DIR to a writable directory."
                ) from exc
        if not store.is_sqlite:  # a server may be starting: retry connection failures, then say it is down
            from ._connect import connect_with_retry

            try:
                where = f"the database {store.engine.url.render_as_string(hide_password=True)!r}"
                async with store._errors():  # errors that are not worth a retry (credentials...) mapped too
                    await connect_with_retry(
                        store.engine, attempts=connect_attempts, delay_s=retry_delay_s, sleep=sleep, where=where
                    )
            except BaseException:
                await store.close()
                raise
        if migrate if migrate is not None else store.is_sqlite:
            try:
                await store.migrate()
            except BaseException:
                await store.close()
                raise
        return store

    def for_tenant(self, tenant_id: str) -> SQLStore:
        """This store as `tenant_id` sees it: the same engine and connections, another tenant (never close it)."""
        if not tenant_id or len(tenant_id) > 64:
            raise UserError(f"A tenant id must be a non-empty string of at most 64 characters, got {tenant_id!r}.")
        if tenant_id == self.tenant_id:
            return self
        view = copy.copy(self)
        view.tenant_id = tenant_id
        return view

    async def close(self) -> None:
        """Close every connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> SQLStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @traced("migrate")
    async def migrate(self, revision: str = "head") -> str | None:
        """Apply the Alembic migrations up to `revision`; returns the revision the database is at."""
        if revision == "head" and self.url in _MIGRATED:
            return None
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))

        def upgrade(connection: Connection) -> str | None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            return MigrationContext.configure(connection).get_current_revision()

        async with self._errors(), self.engine.begin() as conn:
            current = await conn.run_sync(upgrade)
        if revision == "head":
            _MIGRATED.add(self.url)
        async with self._session() as session:
            await self._ensure_tenant(session, self.tenant_id)
        return current

    # ---- errors and sessions -----------------------------------------------------------------------------

    def _where(self) -> str:
        return f"the SQLite file {str(self.sqlite_path)!r}" if self.sqlite_path is not None else "the database"

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Map driver errors to `StoreError`s that say what to do (the one boundary for third-party exceptions)."""
        try:
            yield
        except (ThreadConflict, ThreadNotFound, StoreError):
            raise
        except IntegrityError as exc:
            raise StoreError(
                f"A write to {self._where()} violated a constraint ({exc.orig}); nothing was written."
            ) from exc
        except (OperationalError, ProgrammingError, DBAPIError) as exc:
            text = str(exc.orig if exc.orig is not None else exc).lower()
            where = self._where()
            if "not a database" in text or "malformed" in text:
                message = (
                    f"{where} is not a valid SQLite database (corrupt or another file): move it aside to start a new "
                    "store, or restore it from a backup; MINIAGENT_DATA_DIR or MINIAGENT_DATABASE_URL choose another."
                )
            elif "readonly" in text or "read-only" in text:
                message = (
                    f"{where} is read-only: give this process write access to it and its directory, or point "
                    "MINIAGENT_DATA_DIR / MINIAGENT_DATABASE_URL elsewhere."
                )
            elif "no such table" in text or ("relation" in text and "does not exist" in text):
                message = f"{where} has no miniagent schema: run `miniagent migrate` (nothing was written)."
            elif "unable to open" in text:
                message = f"Cannot open {where}: check that its directory exists and is writable."
            elif "full" in text and ("disk" in text or "database" in text):
                message = (
                    f"{where} is full (no space left on its disk, or its size limit): this write was rolled back and "
                    "everything committed before it is intact; free some space (or `miniagent prune`) and retry."
                )
            elif "locked" in text or "busy" in text:
                message = f"{where} stayed locked by another writer: retry, or raise the busy timeout."
            else:
                message = (
                    f"The store at {where} failed ({type(exc.orig or exc).__name__}: {exc.orig or exc}); "
                    "check that the database is running and reachable (nothing of this operation was written)."
                )
            raise StoreError(message) from exc
        except (OSError, SQLAlchemyError) as exc:
            raise StoreError(
                f"Cannot reach {self._where()} ({type(exc).__name__}: {exc}): check that the database is running and "
                "MINIAGENT_DATABASE_URL is right; nothing of this operation was written."
            ) from exc

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed at the end of the block, rolled back if it raises.

        Shielded from cancellation: a task cancelled mid-transaction (a run cancelled or interrupted at shutdown)
        finishes the transaction and gets the cancellation at its next checkpoint (the agent loop has one per step).
        Cancelled inside it, SQLAlchemy would invalidate the connection and close it in a shielded task that the
        cancellation abandons: a close left pending past the engine's disposal, which can hang the event loop's
        shutdown (aiosqlite).
        """
        import anyio

        with anyio.CancelScope(shield=True):
            async with self._errors(), self._sessions() as session, session.begin():
                yield session

    async def _insert_missing(self, session: AsyncSession, model: Any, values: dict[str, Any]) -> None:
        """Insert a row unless one with its key exists (concurrent first writes of a tenant or user both pass)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            await session.execute(pg_insert(model).values(**values).on_conflict_do_nothing())
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            await session.execute(sqlite_insert(model).values(**values).on_conflict_do_nothing())

    async def _ensure_tenant(self, session: AsyncSession, tenant_id: str) -> None:
        if await session.get(TenantRow, tenant_id) is None:
            values = {"id": tenant_id, "name": None, "retention_days": None, "created_at": self.now()}
            await self._insert_missing(session, TenantRow, values)

    async def _ensure_user(self, session: AsyncSession, tenant_id: str, user_id: str) -> None:
        await self._ensure_tenant(session, tenant_id)
        if await session.get(UserRow, (tenant_id, user_id)) is None:
            values = {"tenant_id": tenant_id, "id": user_id, "created_at": self.now()}
            await self._insert_missing(session, UserRow, values)

    async def _thread(self, session: AsyncSession, thread_id: str, user_id: str, tenant_id: str) -> ThreadRow:
        row = await session.get(ThreadRow, thread_id)
        if row is None or row.user_id != user_id or row.tenant_id != tenant_id:
            raise ThreadNotFound(
                f"No thread {thread_id!r} for user {user_id!r}: check the id, or start a new thread "
                "(`store.create_thread()`, or run without `thread_id`)."
            )
        return row

    @staticmethod
    def _info(row: ThreadRow) -> ThreadInfo:
        return ThreadInfo(
            row.id,
            user_id=row.user_id,
            tenant_id=row.tenant_id,
            title=row.title,
            leaf_id=row.leaf_id,
            created_at=_aware(row.created_at),
            updated_at=_aware(row.updated_at),
        )

    # ---- threads -----------------------------------------------------------------------------------------

    @traced("create_thread")
    async def create_thread(
        self,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        title: str | None = None,
        retention_days: float | None = None,
    ) -> ThreadInfo:
        """Start a new, empty thread for `user_id`."""
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            await self._ensure_user(session, tenant, user_id)
            row = ThreadRow(
                id=uuid.uuid4().hex,
                tenant_id=tenant,
                user_id=user_id,
                title=title,
                leaf_id=None,
                retention_days=retention_days,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
        return self._info(row)

    @traced("get_thread")
    async def get_thread(
        self, thread_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> ThreadInfo:
        """A thread of this user, or `ThreadNotFound`."""
        async with self._session() as session:
            return self._info(await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id))

    @traced("list_threads")
    async def list_threads(
        self, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None, limit: int = 50
    ) -> list[ThreadInfo]:
        """The user's threads, most recently active first."""
        async with self._session() as session:
            rows = await session.scalars(
                select(ThreadRow)
                .where(ThreadRow.tenant_id == (tenant_id or self.tenant_id), ThreadRow.user_id == user_id)
                .order_by(ThreadRow.updated_at.desc(), ThreadRow.id)
                .limit(limit)
            )
            return [self._info(r) for r in rows]

    @traced("delete_thread")
    async def delete_thread(self, thread_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None) -> None:
        """Delete a thread with its messages, runs and events."""
        async with self._session() as session:
            row = await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id)
            await self._delete_threads(session, [row.id])

    async def _delete_threads(self, session: AsyncSession, ids: list[str]) -> None:
        runs = select(RunRow.id).where(RunRow.thread_id.in_(ids))
        await session.execute(delete(RunEventRow).where(RunEventRow.run_id.in_(runs)))
        await session.execute(delete(RunRow).where(RunRow.thread_id.in_(ids)))
        # Children before parents, so the self-referencing foreign key holds at every statement.
        max_depth = await session.scalar(select(func.max(MessageRow.depth)).where(MessageRow.thread_id.in_(ids)))
        for depth in range(max_depth or 0, -1, -1):
            await session.execute(delete(MessageRow).where(MessageRow.thread_id.in_(ids), MessageRow.depth == depth))
        from ._models import ThreadSummaryRow

        await session.execute(delete(ThreadSummaryRow).where(ThreadSummaryRow.thread_id.in_(ids)))
        await session.execute(delete(ThreadRow).where(ThreadRow.id.in_(ids)))

    # ---- messages ----------------------------------------------------------------------------------------

    async def _path(self, session: AsyncSession, thread_id: str, leaf_id: str | None) -> list[MessageRow]:
        if leaf_id is None:
            return []
        path = select(MessageRow.id, MessageRow.parent_id).where(MessageRow.id == leaf_id).cte(recursive=True)
        path = path.union_all(select(MessageRow.id, MessageRow.parent_id).where(MessageRow.id == path.c.parent_id))
        rows = await session.scalars(
            select(MessageRow)
            .where(MessageRow.id.in_(select(path.c.id)), MessageRow.thread_id == thread_id)
            .order_by(MessageRow.depth)
        )
        return list(rows)

    @staticmethod
    def _stored(rows: Sequence[MessageRow]) -> list[StoredMessage]:
        if not rows:
            return []
        messages = messages_from_json("[" + ",".join(r.data for r in rows) + "]")
        return [
            StoredMessage(
                r.id, m, parent_id=r.parent_id, depth=r.depth, run_id=r.run_id, created_at=_aware(r.created_at)
            )
            for r, m in zip(rows, messages, strict=True)
        ]

    @traced("history")
    async def history(
        self,
        thread_id: str,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        leaf_id: str | None = None,
    ) -> list[StoredMessage]:
        """The path from the root to `leaf_id` (default: the thread's current leaf), in order."""
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id)
            rows = await self._path(session, thread.id, leaf_id or thread.leaf_id)
            if leaf_id is not None and not rows:
                raise ThreadNotFound(f"No message {leaf_id!r} in thread {thread_id!r}: list them with `branches()`.")
            return self._stored(rows)

    @traced("messages")
    async def messages(
        self, thread_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> list[ModelMessage]:
        """The current branch's messages, ready to pass to a model."""
        return [m.message for m in await self.history(thread_id, user_id=user_id, tenant_id=tenant_id)]

    @traced("append")
    async def append(
        self,
        thread_id: str,
        messages: Sequence[ModelMessage],
        *,
        expected_leaf: str | None,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        run_id: str | None = None,
        run_steps: int | None = None,
        run_usage: Usage | None = None,
        events: Sequence[AgentEvent] = (),
        run_status: RunStatus | None = None,
        run_error: str | None = None,
        model_usage: Sequence[ModelUsage] = (),
        dead_letter: DeadLetter | None = None,
    ) -> list[str]:
        """Append `messages` after `expected_leaf` and make the last one the thread's leaf, in one transaction.

        Optimistic concurrency: if the thread's leaf is no longer `expected_leaf` (another writer appended, or
        the user switched branch), nothing is written and [`ThreadConflict`][miniagent.errors.ThreadConflict] is
        raised. With `run_id`, the run's steps, usage and `events` are saved in the same transaction, with one usage
        record per `model_usage` entry (a model's name and one response's usage) and the run's `dead_letter`.
        """
        tenant = tenant_id or self.tenant_id
        now = self.now()
        ids = [uuid.uuid4().hex for _ in messages]
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant)
            if messages:
                # The conditional update is the concurrency check: on PostgreSQL it waits for a concurrent writer's
                # row lock and then sees its new leaf; on SQLite BEGIN IMMEDIATE already serialized the writers.
                result = await session.execute(
                    update(ThreadRow)
                    .where(ThreadRow.id == thread.id, ThreadRow.leaf_id.is_not_distinct_from(expected_leaf))
                    .values(leaf_id=ids[-1], updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                if cast(Any, result).rowcount != 1:
                    raise ThreadConflict(
                        f"Thread {thread_id!r} moved on while this write was prepared (its leaf is no longer "
                        f"{expected_leaf!r}): another run appended to it or the branch was switched. Reload the "
                        "thread and retry; nothing was written."
                    )
                depth = 0
                if expected_leaf is not None:
                    depth = (
                        await session.scalar(select(MessageRow.depth).where(MessageRow.id == expected_leaf)) or 0
                    ) + 1
                parent = expected_leaf
                for message_id, message in zip(ids, messages, strict=True):
                    session.add(
                        MessageRow(
                            id=message_id,
                            tenant_id=tenant,
                            thread_id=thread.id,
                            parent_id=parent,
                            depth=depth,
                            kind=message.kind,
                            data=_one_json(message),
                            run_id=run_id,
                            created_at=now,
                        )
                    )
                    parent = message_id
                    depth += 1
                if thread.title is None:
                    title = next((_preview(m) for m in messages if _preview(m)), None)
                    if title:
                        await session.execute(
                            update(ThreadRow)
                            .where(ThreadRow.id == thread.id)
                            .values(title=title[:80])
                            .execution_options(synchronize_session=False)
                        )
            if run_id is not None:
                await self._save_run(
                    session,
                    run_id,
                    steps=run_steps,
                    usage=run_usage,
                    events=events,
                    now=now,
                    status=run_status,
                    error=run_error,
                )
            self._record_usage(
                session, model_usage, tenant_id=tenant, user_id=user_id, thread_id=thread.id, run_id=run_id, now=now
            )
            if dead_letter is not None:
                session.add(dead_letter_row(dead_letter))
        return ids

    async def _save_run(
        self,
        session: AsyncSession,
        run_id: str,
        *,
        steps: int | None,
        usage: Usage | None,
        events: Sequence[AgentEvent],
        now: dt.datetime,
        status: RunStatus | None = None,
        error: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"updated_at": now, "prompt": None}  # a queued run's prompt is in the thread now
        if steps is not None:
            values["steps"] = steps
        if usage is not None:
            values["usage"] = _usage_dict(usage)
            values["cost_usd"] = usage.cost_usd
        if status is not None:
            values["status"] = status
            if status != "running":
                values["finished_at"] = now
        if error is not None:
            values["error"] = error
        await session.execute(
            update(RunRow).where(RunRow.id == run_id).values(**values).execution_options(synchronize_session=False)
        )
        if events:
            last = await session.scalar(select(func.max(RunEventRow.seq)).where(RunEventRow.run_id == run_id)) or 0
            tenant = await session.scalar(select(RunRow.tenant_id).where(RunRow.id == run_id)) or self.tenant_id
            for i, ev in enumerate(events, start=last + 1):
                session.add(
                    RunEventRow(
                        run_id=run_id,
                        seq=i,
                        tenant_id=tenant,
                        kind=ev.kind,
                        data=event_to_json(ev).decode(),
                        created_at=now,
                    )
                )

    # ---- branching ---------------------------------------------------------------------------------------

    async def _message(self, session: AsyncSession, thread: ThreadRow, message_id: str) -> MessageRow:
        row = await session.get(MessageRow, message_id)
        if row is None or row.thread_id != thread.id:
            raise ThreadNotFound(f"No message {message_id!r} in thread {thread.id!r}: list them with `history()`.")
        return row

    @traced("edit_message")
    async def edit_message(
        self,
        thread_id: str,
        message_id: str,
        message: ModelMessage,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
    ) -> str:
        """Replace a past message by `message` as a new sibling branch (same parent) and make it the current leaf.

        The old branch stays, listed by `branches()`. Continue with `agent.run(None, thread_id=...)` to have the
        model answer the edited message. Returns the new message's id.
        """
        tenant = tenant_id or self.tenant_id
        now = self.now()
        new_id = uuid.uuid4().hex
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant)
            old = await self._message(session, thread, message_id)
            session.add(
                MessageRow(
                    id=new_id,
                    tenant_id=tenant,
                    thread_id=thread.id,
                    parent_id=old.parent_id,
                    depth=old.depth,
                    kind=message.kind,
                    data=_one_json(message),
                    run_id=None,
                    created_at=now,
                )
            )
            thread.leaf_id = new_id
            thread.updated_at = now
        return new_id

    @traced("regenerate")
    async def regenerate(
        self, thread_id: str, message_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> str:
        """Prepare a new answer to replace the response `message_id`: the leaf moves to its parent request, so the
        next `agent.run(None, thread_id=...)` writes a sibling branch. Returns the new leaf's id.
        """  # noqa: D205
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id)
            row = await self._message(session, thread, message_id)
            if row.parent_id is None:
                raise ThreadNotFound(f"Message {message_id!r} has no parent request to answer again.")
            thread.leaf_id = row.parent_id
            thread.updated_at = self.now()
            return row.parent_id

    @traced("branches")
    async def branches(
        self, thread_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> list[Branch]:
        """Every leaf of the thread's tree (one per alternative conversation), oldest first."""
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id)
            rows = list(
                await session.execute(
                    select(
                        MessageRow.id, MessageRow.parent_id, MessageRow.depth, MessageRow.created_at, MessageRow.data
                    )
                    .where(MessageRow.thread_id == thread.id)
                    .order_by(MessageRow.created_at, MessageRow.depth)
                )
            )
            parents = {r.parent_id for r in rows}
            by_id = {r.id: r for r in rows}
            decoded = dict(zip(by_id, messages_from_json("[" + ",".join(r.data for r in rows) + "]"), strict=True))
            branches = []
            for r in rows:
                if r.id in parents and r.id != thread.leaf_id:
                    continue
                preview, cursor = "", by_id.get(r.id)
                while cursor is not None and not preview:
                    preview = _preview(decoded[cursor.id])
                    cursor = by_id.get(cursor.parent_id) if cursor.parent_id else None
                branches.append(
                    Branch(
                        r.id,
                        length=r.depth + 1,
                        preview=preview,
                        current=r.id == thread.leaf_id,
                        updated_at=_aware(r.created_at),
                    )
                )
            return branches

    @traced("switch")
    async def switch(
        self, thread_id: str, leaf_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> None:
        """Make `leaf_id` (any message of the thread) the current leaf: the history is the path to it."""
        async with self._session() as session:
            thread = await self._thread(session, thread_id, user_id, tenant_id or self.tenant_id)
            await self._message(session, thread, leaf_id)
            thread.leaf_id = leaf_id
            thread.updated_at = self.now()

    # ---- runs and events ---------------------------------------------------------------------------------

    @traced("start_run")
    async def start_run(
        self,
        run_id: str,
        *,
        thread_id: str | None,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        agent_name: str | None = None,
        replay_of: str | None = None,
        adopt: bool = False,
    ) -> None:
        """Record a run as `running` (owned by this process, so `recover_interrupted` can tell a dead one).

        With `adopt`, a run already recorded under `run_id` (a queued run its worker has claimed) is continued
        instead of inserted.

        Args:
            run_id: The run's id.
            thread_id: Its thread (`None` for a run kept without one).
            user_id: The user it runs for.
            tenant_id: Their tenant (default: the store's).
            correlation_id: The request's correlation id.
            agent_name: The agent that runs.
            replay_of: The run it replays (a dead letter's run), if any.
            adopt: Continue the run recorded under `run_id` if there is one (a claimed queued run).
        """
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            if thread_id is not None:
                await self._thread(session, thread_id, user_id, tenant)
            else:
                await self._ensure_tenant(session, tenant)
            existing = await session.get(RunRow, run_id) if adopt else None
            if existing is not None:
                if existing.tenant_id != tenant or existing.status != "running" or existing.thread_id != thread_id:
                    raise StoreError(
                        f"Run {run_id!r} cannot be continued here: it is {existing.status!r} (a worker continues a "
                        "run only once it has claimed it, on its own thread)."
                    )
                existing.correlation_id = existing.correlation_id or correlation_id
                existing.agent_name = agent_name[:200] if agent_name else existing.agent_name
                existing.updated_at = now
                return
            session.add(
                RunRow(
                    id=run_id,
                    tenant_id=tenant,
                    thread_id=thread_id,
                    user_id=user_id,
                    status="running",
                    steps=0,
                    usage=_usage_dict(Usage()),
                    cost_usd=0.0,
                    error=None,
                    owner=f"{socket.gethostname()}:{os.getpid()}",
                    created_at=now,
                    updated_at=now,
                    finished_at=None,
                    correlation_id=correlation_id,
                    agent_name=agent_name[:200] if agent_name else None,
                    replay_of=replay_of,
                )
            )

    @traced("finish_run")
    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        steps: int,
        usage: Usage,
        error: str | None = None,
        events: Sequence[AgentEvent] = (),
        model_usage: Sequence[ModelUsage] = (),
        dead_letter: DeadLetter | None = None,
    ) -> None:
        """Record a run's end: its final state, steps, usage, error and last events (with the usage records of its
        last responses and its dead letter, as `append` does).
        """  # noqa: D205
        now = self.now()
        async with self._session() as session:
            await self._save_run(
                session, run_id, steps=steps, usage=usage, events=events, now=now, status=status, error=error
            )
            if model_usage:
                row = await session.get(RunRow, run_id)
                if row is not None:
                    self._record_usage(
                        session,
                        model_usage,
                        tenant_id=row.tenant_id,
                        user_id=row.user_id,
                        thread_id=row.thread_id,
                        run_id=run_id,
                        now=now,
                    )
            if dead_letter is not None:
                session.add(dead_letter_row(dead_letter))

    @traced("record_run")
    async def record_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        steps: int,
        usage: Usage,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        correlation_id: str | None = None,
        agent_name: str | None = None,
        error: str | None = None,
        events: Sequence[AgentEvent] = (),
        model_usage: Sequence[ModelUsage] = (),
    ) -> None:
        """Record a whole run without a thread at its end, in one transaction: its row (already in its final state),
        its events and its usage records (`start_run` + `finish_run` in one write, for runs with nothing to protect
        before they end, such as an OpenAI-compatible request).

        Args:
            run_id: The run's id.
            status: Its final state (not `running`).
            steps: Its steps.
            usage: What it used.
            user_id: The user it ran for.
            tenant_id: Their tenant (default: the store's).
            correlation_id: The request's correlation id.
            agent_name: The agent that ran.
            error: Its error, if it failed.
            events: Its events, in order (numbered from 1).
            model_usage: The usage records of its model responses.

        Raises:
            UserError: `status` is `running` (use `start_run` for a run in progress).
        """  # noqa: D205
        if status == "running":
            raise UserError("`record_run` records a run that has ended: pass its final status, or use `start_run`.")
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            await self._ensure_tenant(session, tenant)
            session.add(
                RunRow(
                    id=run_id,
                    tenant_id=tenant,
                    thread_id=None,
                    user_id=user_id,
                    status=status,
                    steps=steps,
                    usage=_usage_dict(usage),
                    cost_usd=usage.cost_usd,
                    error=error,
                    owner=f"{socket.gethostname()}:{os.getpid()}",
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                    correlation_id=correlation_id,
                    agent_name=agent_name[:200] if agent_name else None,
                    replay_of=None,
                )
            )
            await session.flush()  # the run's row before the rows that refer to it
            session.add_all(
                RunEventRow(
                    run_id=run_id,
                    seq=seq,
                    tenant_id=tenant,
                    kind=event.kind,
                    data=event_to_json(event).decode(),
                    created_at=now,
                )
                for seq, event in enumerate(events, start=1)
            )
            if model_usage:
                self._record_usage(
                    session, model_usage, tenant_id=tenant, user_id=user_id, thread_id=None, run_id=run_id, now=now
                )

    @staticmethod
    def _run_record(row: RunRow) -> RunRecord:
        return run_record(row)

    @traced("get_run")
    async def get_run(self, run_id: str, *, tenant_id: str | None = None) -> RunRecord:
        """A run's record, or `ThreadNotFound`."""
        async with self._session() as session:
            row = await session.get(RunRow, run_id)
            if row is None or row.tenant_id != (tenant_id or self.tenant_id):
                raise ThreadNotFound(f"No run {run_id!r}: check the id.")
            return self._run_record(row)

    @traced("list_runs")
    async def list_runs(
        self,
        *,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        status: RunStatus | None = None,
        thread_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """The user's runs, newest first: all of them, or those in `status`, or of `thread_id` (or both)."""
        query = select(RunRow).where(RunRow.tenant_id == (tenant_id or self.tenant_id), RunRow.user_id == user_id)
        if status is not None:
            query = query.where(RunRow.status == status)
        if thread_id is not None:
            query = query.where(RunRow.thread_id == thread_id)
        query = query.order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit).offset(offset)
        async with self._session() as session:
            return [self._run_record(row) for row in await session.scalars(query)]

    @traced("events")
    async def events(self, run_id: str, *, after_seq: int = 0, tenant_id: str | None = None) -> list[StoredEvent]:
        """The run's persisted events after `after_seq` (resume a stream from the last event seen)."""
        async with self._session() as session:
            rows = await session.execute(
                select(RunEventRow.seq, RunEventRow.data)
                .where(
                    RunEventRow.run_id == run_id,
                    RunEventRow.seq > after_seq,
                    RunEventRow.tenant_id == (tenant_id or self.tenant_id),
                )
                .order_by(RunEventRow.seq)
            )
            return [StoredEvent(seq, event_from_json(data)) for seq, data in rows]

    @traced("recover_interrupted")
    async def recover_interrupted(self, *, all_owners: bool = False) -> list[str]:
        """Mark the runs left `running` by a dead process as `interrupted`; returns their ids. Call at startup.

        A run of this host whose process is gone is dead. Runs of other hosts are left alone unless `all_owners`
        (use it when one process owns the database, or after stopping every worker).
        """
        host, me = socket.gethostname(), os.getpid()
        async with self._session() as session:
            rows = list(
                await session.execute(
                    select(RunRow.id, RunRow.owner).where(
                        RunRow.status == "running", RunRow.via_queue.is_not(True)
                    )  # a queued run's worker lease decides, not its process
                )
            )
            dead = [run_id for run_id, owner in rows if all_owners or _owner_dead(owner, host, me)]
            if dead:
                await session.execute(
                    update(RunRow)
                    .where(RunRow.id.in_(dead), RunRow.status == "running")
                    .values(
                        status="interrupted",
                        error="The process running it stopped before the run ended (crash or kill); its committed "
                        "messages are kept: continue the thread to resume.",
                        finished_at=self.now(),
                        updated_at=self.now(),
                    )
                    .execution_options(synchronize_session=False)
                )
            return dead

    def tool_results(self) -> SQLToolResults:
        """The last good result of each tool call (a `LastGoodCache` for tools that fall back to it)."""
        from ._tool_results import SQLToolResults

        return SQLToolResults(self)

    # ---- retention ---------------------------------------------------------------------------------------

    @traced("set_retention")
    async def set_retention(
        self,
        *,
        days: float | None,
        tenant_id: str | None = None,
        thread_id: str | None = None,
        user_id: str = DEFAULT_USER,
    ) -> None:
        """Set the time to live (days without activity) of a tenant, or of one thread; `None` removes it."""
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            if thread_id is not None:
                thread = await self._thread(session, thread_id, user_id, tenant)
                thread.retention_days = days
            else:
                await self._ensure_tenant(session, tenant)
                row = await session.get(TenantRow, tenant)
                assert row is not None
                row.retention_days = days

    @traced("prune")
    async def prune(self, *, now: dt.datetime | None = None) -> PruneReport:
        """Delete threads idle for longer than their TTL (the thread's, else its tenant's, else the default)."""
        now = now or self.now()
        async with self._session() as session:
            rows = await session.execute(
                select(ThreadRow.id, ThreadRow.updated_at, ThreadRow.retention_days, TenantRow.retention_days).join(
                    TenantRow, TenantRow.id == ThreadRow.tenant_id
                )
            )
            expired = []
            for thread_id, updated_at, thread_days, tenant_days in rows:
                days = thread_days if thread_days is not None else tenant_days
                days = days if days is not None else self.default_retention_days
                if days is not None and _aware(updated_at) + dt.timedelta(days=days) < now:
                    expired.append(thread_id)
            if expired:
                await self._delete_threads(session, expired)
            return PruneReport(threads=len(expired), thread_ids=expired)


def _owner_dead(owner: str | None, host: str, me: int) -> bool:
    if not owner:
        return True
    owner_host, _, pid_text = owner.rpartition(":")
    if owner_host != host:
        return False
    try:
        pid = int(pid_text)
    except ValueError:
        return True
    if pid == me:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

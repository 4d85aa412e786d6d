"""The dead-letter table: runs that failed for good, with their input, error chain and correlation id.

[`DeadLettersMixin`][miniagent.store._dead_letters.DeadLettersMixin] gives
[`SQLStore`][miniagent.store.SQLStore] `add_dead_letter`, `list_dead_letters`, `get_dead_letter`, `mark_replayed`
and `purge_dead_letters`. A persisted run writes its dead letter itself (in the transaction that records the failed
state) when [`is_permanent_failure`][miniagent.errors.is_permanent_failure] says so;
[`replay_dead_letter`][miniagent.store.replay_dead_letter] runs one again.

Error texts can quote secrets (a key echoed in an exception, a bearer token in a URL): the error, every link of the
chain and the metadata pass through the observability redactor before they are stored, as logs and spans do. The
input (the prompt and messages a replay needs) is kept as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, select

from ..errors import DeadLetterNotFound, StoreError, UserError
from ._base import DEFAULT_USER, DeadLetter, ErrorLink, Now, traced
from ._models import DeadLetterRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..messages import ModelMessage

__all__ = ["DeadLettersMixin", "error_chain", "new_dead_letter"]

_MAX_LINKS = 20
_MAX_MESSAGE = 4_000
_MAX_LIMIT = 10_000


def _redact(text: str) -> str:
    """`text` with secrets replaced by `[REDACTED]` (the observability redactor; imported on first use)."""
    from ..observability._redact import default_redactor

    return default_redactor().redact(text)


def _link(exc: BaseException, relation: Literal["error", "cause", "context", "failure"], name: str | None) -> ErrorLink:
    status = getattr(exc, "status_code", None)
    retryable = getattr(exc, "retryable", None)
    upstream = getattr(exc, "upstream", None)
    stage = getattr(exc, "stage", None)
    model_name = getattr(exc, "model_name", None)
    provider = getattr(exc, "provider", None)
    request_id = getattr(exc, "request_id", None)
    upstream = upstream if isinstance(upstream, str) else name
    return ErrorLink(
        type(exc).__name__,
        _redact(str(exc))[:_MAX_MESSAGE],  # redacted whole: a secret cut in two would no longer be recognized
        relation=relation,
        retryable=retryable if isinstance(retryable, bool) else None,
        status_code=status if isinstance(status, int) else None,
        upstream=_redact(upstream) if upstream is not None else None,
        provider=provider if isinstance(provider, str) else None,
        model_name=model_name if isinstance(model_name, str) else None,
        request_id=request_id if isinstance(request_id, str) else None,
        stage=stage if isinstance(stage, str) else None,
    )


def error_chain(exc: BaseException | str) -> list[ErrorLink]:
    """The error, then its causes (`__cause__`, else `__context__`) and an `AllModelsFailed`'s failures, in order.

    Each exception appears once; the chain is cut at 20 links. A string (a broker's reason) is one link. Messages
    are redacted (API keys, bearer tokens, passwords and configured secrets become `[REDACTED]`).
    """
    if isinstance(exc, str):
        return [ErrorLink("Error", _redact(exc)[:_MAX_MESSAGE])]
    from ..errors import AllModelsFailed

    links: list[ErrorLink] = []
    seen: set[int] = set()

    def visit(
        error: BaseException, relation: Literal["error", "cause", "context", "failure"], name: str | None = None
    ) -> None:
        if id(error) in seen or len(links) >= _MAX_LINKS:
            return
        seen.add(id(error))
        links.append(_link(error, relation, name))
        if isinstance(error, AllModelsFailed):
            for model, failure in error.failures:
                visit(failure, "failure", model)
        if error.__cause__ is not None:
            visit(error.__cause__, "cause")
        elif error.__context__ is not None and not error.__suppress_context__:
            visit(error.__context__, "context")

    visit(exc, "error")
    return links


def _prompt_of(messages: Sequence[ModelMessage]) -> str | None:
    from ..messages import ModelRequest, UserPromptPart

    for message in reversed(messages):
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    return part.content
            return None
    return None


def new_dead_letter(
    *,
    run_id: str,
    messages: Sequence[ModelMessage],
    error: BaseException | str,
    tenant_id: str,
    created_at: dt.datetime,
    user_id: str = DEFAULT_USER,
    thread_id: str | None = None,
    agent_name: str | None = None,
    prompt: str | None = None,
    correlation_id: str | None = None,
    meta: dict[str, Any] | None = None,
    replay_of: str | None = None,
) -> DeadLetter:
    """A new dead letter (not yet stored): its error text and chain come from `error` (redacted), the prompt from
    `messages`.
    """  # noqa: D205
    if not run_id or not isinstance(run_id, str):
        raise UserError(f"A dead letter needs the failed run's id, got {run_id!r}.")
    text = _redact(error if isinstance(error, str) else f"{type(error).__name__}: {error}")
    return DeadLetter(
        uuid.uuid4().hex,
        run_id=run_id,
        tenant_id=tenant_id,
        user_id=user_id,
        thread_id=thread_id,
        agent_name=agent_name,
        prompt=prompt if prompt is not None else _prompt_of(messages),
        messages=list(messages),
        error=text[:_MAX_MESSAGE],
        error_chain=error_chain(error),
        correlation_id=correlation_id,
        created_at=created_at,
        meta=_redacted_meta(meta),
        replay_of=replay_of,
    )


def _redacted_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    if not meta:
        return {}
    from ..observability._redact import default_redactor

    hidden = default_redactor().redact_value(meta)
    return dict(hidden) if isinstance(hidden, dict) else {}


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def dead_letter_row(letter: DeadLetter) -> DeadLetterRow:
    """The table row of a dead letter."""
    from ..messages import messages_to_json

    data = '{"prompt":' + json.dumps(letter.prompt) + ',"messages":' + messages_to_json(letter.messages).decode() + "}"
    return DeadLetterRow(
        id=letter.id,
        tenant_id=letter.tenant_id,
        run_id=letter.run_id,
        thread_id=letter.thread_id,
        user_id=letter.user_id,
        agent_name=letter.agent_name,
        input=data,
        error_chain=[link.to_json() for link in letter.error_chain],
        error=letter.error,
        correlation_id=letter.correlation_id,
        meta=dict(letter.meta),
        replay_of=letter.replay_of,
        created_at=letter.created_at,
        replayed_at=letter.replayed_at,
        replayed_run_id=letter.replayed_run_id,
    )


def _letter(row: DeadLetterRow) -> DeadLetter:
    from ..messages import messages_from_json

    try:
        data = json.loads(row.input)
        messages = messages_from_json(json.dumps(data.get("messages", [])))
        prompt = data.get("prompt")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise StoreError(
            f"Dead letter {row.id!r} has an unreadable input ({exc}); purge it with `miniagent dlq purge {row.id}`."
        ) from exc
    return DeadLetter(
        row.id,
        run_id=row.run_id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        thread_id=row.thread_id,
        agent_name=row.agent_name,
        prompt=prompt if isinstance(prompt, str) else None,
        messages=messages,
        error=row.error,
        error_chain=[ErrorLink.from_json(link) for link in row.error_chain or []],
        correlation_id=row.correlation_id,
        created_at=_aware(row.created_at),
        meta=dict(row.meta or {}),
        replay_of=row.replay_of,
        replayed_at=_aware(row.replayed_at) if row.replayed_at is not None else None,
        replayed_run_id=row.replayed_run_id,
    )


def _check_id(value: object, what: str = "dead letter id") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise UserError(f"Invalid {what} {value!r}: pass an id as `miniagent dlq list` shows it.")
    return value


def _is_number(value: object, *, integer: bool = False) -> bool:
    # Typed callers are checked by mypy; this is for the CLI and untyped code (a bool is not a number here).
    return not isinstance(value, bool) and isinstance(value, int if integer else int | float)


class DeadLettersMixin:
    """The dead-letter methods of [`SQLStore`][miniagent.store.SQLStore]; each one is one transaction, per tenant."""

    if TYPE_CHECKING:
        tenant_id: str
        now: Now

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    @traced("add_dead_letter")
    async def add_dead_letter(
        self,
        *,
        run_id: str,
        messages: Sequence[ModelMessage],
        error: BaseException | str,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
        thread_id: str | None = None,
        agent_name: str | None = None,
        prompt: str | None = None,
        correlation_id: str | None = None,
        meta: dict[str, Any] | None = None,
        replay_of: str | None = None,
    ) -> DeadLetter:
        """Record a run that failed for good: its input (`messages`: the history it started from and its request,
        last), its error (an exception, whose causes make the chain, or a reason) and its correlation id.

        A persisted run writes its own dead letter; call this for failures found elsewhere (a broker's dead letters).
        """  # noqa: D205
        letter = new_dead_letter(
            run_id=run_id,
            messages=messages,
            error=error,
            tenant_id=tenant_id or self.tenant_id,
            created_at=self.now(),
            user_id=user_id,
            thread_id=thread_id,
            agent_name=agent_name,
            prompt=prompt,
            correlation_id=correlation_id,
            meta=meta,
            replay_of=replay_of,
        )
        async with self._session() as session:
            session.add(dead_letter_row(letter))
        return letter

    @traced("list_dead_letters")
    async def list_dead_letters(
        self,
        *,
        limit: int = 50,
        before: dt.datetime | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[DeadLetter]:
        """The tenant's dead letters, newest first: at most `limit`, created before `before` (to page back).

        Args:
            limit: How many, from 1 to 10000.
            before: Only those created before this time (pass the last one's `created_at` for the next page).
            user_id: Only this user's.
            tenant_id: The tenant (default: the store's).
        """
        if not _is_number(limit, integer=True) or not 1 <= limit <= _MAX_LIMIT:
            raise UserError(f"`limit` must be an integer from 1 to {_MAX_LIMIT}, got {limit!r}.")
        if before is not None and before.tzinfo is None:
            raise UserError(f"`before` must be an aware datetime (e.g. in UTC), got the naive {before!r}.")
        query = select(DeadLetterRow).where(DeadLetterRow.tenant_id == (tenant_id or self.tenant_id))
        if before is not None:
            query = query.where(DeadLetterRow.created_at < before.astimezone(dt.UTC))
        if user_id is not None:
            query = query.where(DeadLetterRow.user_id == user_id)
        query = query.order_by(DeadLetterRow.created_at.desc(), DeadLetterRow.id.desc()).limit(limit)
        async with self._session() as session:
            return [_letter(row) for row in await session.scalars(query)]

    async def _dead_letter_row(self, session: AsyncSession, dead_letter_id: str, tenant: str) -> DeadLetterRow:
        row = await session.get(DeadLetterRow, _check_id(dead_letter_id))
        if row is None or row.tenant_id != tenant:
            raise DeadLetterNotFound(
                f"No dead letter {dead_letter_id!r} in tenant {tenant!r}: list them with `miniagent dlq list`."
            )
        return row

    @traced("get_dead_letter")
    async def get_dead_letter(self, dead_letter_id: str, *, tenant_id: str | None = None) -> DeadLetter:
        """One dead letter of the tenant, or [`DeadLetterNotFound`][miniagent.errors.DeadLetterNotFound]."""
        async with self._session() as session:
            return _letter(await self._dead_letter_row(session, dead_letter_id, tenant_id or self.tenant_id))

    @traced("mark_replayed")
    async def mark_replayed(self, dead_letter_id: str, run_id: str, *, tenant_id: str | None = None) -> DeadLetter:
        """Link a dead letter to the run that replayed it (`replayed_run_id`, `replayed_at`); returns it updated."""
        _check_id(run_id, "run id")
        async with self._session() as session:
            row = await self._dead_letter_row(session, dead_letter_id, tenant_id or self.tenant_id)
            row.replayed_run_id = run_id
            row.replayed_at = self.now()
            return _letter(row)

    @traced("purge_dead_letters")
    async def purge_dead_letters(
        self,
        *,
        older_than_days: float | None = None,
        ids: Sequence[str] | None = None,
        tenant_id: str | None = None,
    ) -> int:
        """Delete the tenant's dead letters older than `older_than_days`, or those in `ids` (exactly one of the two);
        returns how many were deleted (ids of another tenant, or unknown, are not counted).
        """  # noqa: D205
        if (older_than_days is None) == (ids is None):
            raise UserError("Pass exactly one of `older_than_days` (a number of days) or `ids` (dead letter ids).")
        tenant = tenant_id or self.tenant_id
        query = delete(DeadLetterRow).where(DeadLetterRow.tenant_id == tenant)
        if older_than_days is not None:
            if not _is_number(older_than_days) or older_than_days < 0:
                raise UserError(f"`older_than_days` must be a number of days >= 0, got {older_than_days!r}.")
            query = query.where(DeadLetterRow.created_at < self.now() - dt.timedelta(days=older_than_days))
        else:
            wanted = [_check_id(i) for i in ids or []]
            if not wanted:
                return 0
            query = query.where(DeadLetterRow.id.in_(wanted))
        async with self._session() as session:
            result = await session.execute(query.execution_options(synchronize_session=False))
            return int(getattr(result, "rowcount", 0) or 0)

"""Per-message feedback: a user's thumbs up (+1) or down (-1) on a message of their thread, with an optional comment.

One rating per user and message (setting it again replaces it). Feedback belongs to the message's thread: deleting
the thread deletes it (the foreign keys cascade).
"""

from __future__ import annotations

import datetime as dt
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select

from ..errors import ThreadNotFound, UserError
from ._base import DEFAULT_USER, Now, traced
from ._models import FeedbackRow, MessageRow, ThreadRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["MAX_FEEDBACK_COMMENT", "Feedback", "FeedbackMixin", "Rating"]

Rating = Literal[1, -1]
"""A rating: `1` (thumbs up) or `-1` (thumbs down)."""

MAX_FEEDBACK_COMMENT = 4000
"""The longest comment, in characters."""


@dataclass(frozen=True, slots=True)
class Feedback:
    """A user's rating of one message."""

    id: str
    """The feedback's id."""
    _: KW_ONLY
    message_id: str
    """The rated message."""
    thread_id: str
    """Its thread."""
    user_id: str
    """Who rated it."""
    tenant_id: str
    """Their tenant."""
    rating: Rating
    """`1` (thumbs up) or `-1` (thumbs down)."""
    comment: str | None
    """What the user said about it, if anything."""
    created_at: dt.datetime
    """When it was first given."""
    updated_at: dt.datetime
    """When it was last changed."""


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _feedback(row: FeedbackRow) -> Feedback:
    return Feedback(
        row.id,
        message_id=row.message_id,
        thread_id=row.thread_id,
        user_id=row.user_id,
        tenant_id=row.tenant_id,
        rating=1 if row.rating > 0 else -1,
        comment=row.comment,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
    )


class FeedbackMixin:
    """The feedback methods of [`SQLStore`][miniagent.store.SQLStore]; each one is one transaction.

    A message is rated only by the owner of its thread: a message of another user or tenant is
    [`ThreadNotFound`][miniagent.errors.ThreadNotFound], never their data.
    """

    if TYPE_CHECKING:
        tenant_id: str
        now: Now

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    async def _owned_message(self, session: AsyncSession, message_id: str, user_id: str, tenant: str) -> MessageRow:
        message = await session.get(MessageRow, message_id)
        thread = await session.get(ThreadRow, message.thread_id) if message is not None else None
        if message is None or thread is None or thread.tenant_id != tenant or thread.user_id != user_id:
            raise ThreadNotFound(
                f"No message {message_id!r} for user {user_id!r}: check the id (list a thread's messages first)."
            )
        return message

    @traced("set_feedback")
    async def set_feedback(
        self,
        message_id: str,
        *,
        rating: int,
        comment: str | None = None,
        user_id: str = DEFAULT_USER,
        tenant_id: str | None = None,
    ) -> Feedback:
        """Rate a message of the user's thread (`1` or `-1`, with an optional comment), replacing an earlier rating.

        Raises:
            UserError: the rating is not 1 or -1, or the comment is too long.
            ThreadNotFound: no such message in a thread of this user.
        """
        if rating not in (1, -1) or isinstance(rating, bool):
            raise UserError(f"A rating is 1 (thumbs up) or -1 (thumbs down), got {rating!r}.")
        if comment is not None and len(comment) > MAX_FEEDBACK_COMMENT:
            raise UserError(f"A feedback comment is limited to {MAX_FEEDBACK_COMMENT} characters; shorten it.")
        tenant = tenant_id or self.tenant_id
        now = self.now()
        async with self._session() as session:
            message = await self._owned_message(session, message_id, user_id, tenant)
            row = await session.scalar(
                select(FeedbackRow).where(
                    FeedbackRow.tenant_id == tenant,
                    FeedbackRow.user_id == user_id,
                    FeedbackRow.message_id == message_id,
                )
            )
            if row is None:
                row = FeedbackRow(
                    id=uuid.uuid4().hex,
                    tenant_id=tenant,
                    user_id=user_id,
                    thread_id=message.thread_id,
                    message_id=message_id,
                    created_at=now,
                )
                session.add(row)
            row.rating = rating
            row.comment = comment or None
            row.updated_at = now
            await session.flush()
            return _feedback(row)

    @traced("get_feedback")
    async def get_feedback(
        self, message_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> Feedback | None:
        """The user's rating of a message of their thread, or `None` (`ThreadNotFound` for another's message)."""
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            await self._owned_message(session, message_id, user_id, tenant)
            row = await session.scalar(
                select(FeedbackRow).where(
                    FeedbackRow.tenant_id == tenant,
                    FeedbackRow.user_id == user_id,
                    FeedbackRow.message_id == message_id,
                )
            )
            return _feedback(row) if row is not None else None

    @traced("list_feedback")
    async def list_feedback(
        self, thread_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> list[Feedback]:
        """The user's ratings of the messages of their thread, oldest first."""
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            thread = await session.get(ThreadRow, thread_id)
            if thread is None or thread.tenant_id != tenant or thread.user_id != user_id:
                raise ThreadNotFound(f"No thread {thread_id!r} for user {user_id!r}: check the id.")
            rows = await session.scalars(
                select(FeedbackRow)
                .where(
                    FeedbackRow.thread_id == thread_id,
                    FeedbackRow.tenant_id == tenant,
                    FeedbackRow.user_id == user_id,
                )
                .order_by(FeedbackRow.created_at, FeedbackRow.id)
            )
            return [_feedback(r) for r in rows]

    @traced("delete_feedback")
    async def delete_feedback(
        self, message_id: str, *, user_id: str = DEFAULT_USER, tenant_id: str | None = None
    ) -> bool:
        """Remove the user's rating of a message of their thread; returns whether there was one."""
        tenant = tenant_id or self.tenant_id
        async with self._session() as session:
            await self._owned_message(session, message_id, user_id, tenant)
            row = await session.scalar(
                select(FeedbackRow).where(
                    FeedbackRow.tenant_id == tenant,
                    FeedbackRow.user_id == user_id,
                    FeedbackRow.message_id == message_id,
                )
            )
            if row is None:
                return False
            await session.delete(row)
            return True

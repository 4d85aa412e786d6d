"""Cost tracking: one usage record per model response, and the reports over them (`miniagent usage`).

A persisted run writes the records of a step in the step's own transaction (see `SQLStore.append(model_usage=)`),
so the run's `cost_usd` and the sum of its records always agree. The records keep no foreign key: they outlive
pruned threads and runs, so past costs stay in the reports. `cost_usd` is `NULL` for a model whose price is unknown,
and a report says so (`UsageRow.cost_usd is None`) instead of adding a zero.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from ..errors import UserError
from ._base import USAGE_GROUPS, Now, UsageGroup, UsageRow, traced
from ._models import UsageRecordRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from ..usage import Usage

__all__ = ["UsageMixin", "usage_bounds"]

ModelUsage = tuple[str, "Usage"]
"""A model's name and what one of its responses consumed (`usage.cost_usd` `None` when its price is unknown)."""


def _bound(value: dt.date | dt.datetime, name: str, *, end: bool) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise UserError(f"`{name}` must be an aware datetime (e.g. in UTC) or a date, got the naive {value!r}.")
        return value.astimezone(dt.UTC)
    if not isinstance(value, dt.date):
        raise UserError(f"`{name}` must be a date or an aware datetime, got {value!r}.")
    day = value + dt.timedelta(days=1) if end else value
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def usage_bounds(
    since: dt.date | dt.datetime | None, until: dt.date | dt.datetime | None
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The time range of a report: from `since` (a date: its start, UTC) to before `until` (a date: its end, UTC)."""
    start = _bound(since, "since", end=False) if since is not None else None
    stop = _bound(until, "until", end=True) if until is not None else None
    if start is not None and stop is not None and start >= stop:
        raise UserError(f"`since` ({since}) must be before `until` ({until}): the range is empty.")
    return start, stop


def _groups(group_by: Sequence[str] | str) -> list[UsageGroup]:
    if isinstance(group_by, str):
        group_by = [part.strip() for part in group_by.split(",") if part.strip()]
    groups: list[UsageGroup] = []
    for name in group_by:
        if name not in USAGE_GROUPS:
            raise UserError(f"Cannot group usage by {name!r}: choose among {', '.join(USAGE_GROUPS)}.")
        if name not in groups:
            groups.append(name)
    return groups


class UsageMixin:
    """The usage methods of [`SQLStore`][miniagent.store.SQLStore]: record model responses, report their cost."""

    if TYPE_CHECKING:
        tenant_id: str
        now: Now
        is_sqlite: bool

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

    def _record_usage(
        self,
        session: AsyncSession,
        entries: Sequence[ModelUsage],
        *,
        tenant_id: str,
        user_id: str,
        thread_id: str | None,
        run_id: str | None,
        now: dt.datetime,
    ) -> None:
        for model_name, usage in entries:
            session.add(
                UsageRecordRow(
                    id=uuid.uuid4().hex,
                    tenant_id=tenant_id,
                    user_id=user_id,
                    thread_id=thread_id,
                    run_id=run_id,
                    model_name=(model_name or "unknown")[:200],
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost_usd=usage.cost_usd,
                    created_at=now,
                )
            )

    def _day(self) -> Any:
        if self.is_sqlite:  # stored as UTC text: date() takes its day
            return func.date(UsageRecordRow.created_at)
        return func.date(func.timezone("UTC", UsageRecordRow.created_at))

    async def _usage_rows(self, groups: Sequence[UsageGroup], filters: list[Any]) -> list[UsageRow]:
        columns: dict[UsageGroup, Any] = {
            "day": self._day(),
            "model": UsageRecordRow.model_name,
            "user": UsageRecordRow.user_id,
            "thread": UsageRecordRow.thread_id,
        }
        keys = [columns[g].label(g) for g in groups]
        query = select(
            *keys,
            func.count().label("requests"),
            func.coalesce(func.sum(UsageRecordRow.input_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.output_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.cache_read_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.reasoning_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.cost_usd), 0.0),
            func.count(UsageRecordRow.cost_usd),
        ).where(*filters)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        async with self._session() as session:
            rows = list(await session.execute(query))
        report: list[UsageRow] = []
        for row in rows:
            values = dict(zip(groups, row[: len(groups)], strict=True))
            requests, inp, out, cached, reasoning, cost, priced = row[len(groups) :]
            if not requests:  # an aggregate without groups over no rows
                continue
            day = values.get("day")
            report.append(
                UsageRow(
                    day=dt.date.fromisoformat(day) if isinstance(day, str) else day,
                    model=values.get("model"),
                    user_id=values.get("user"),
                    thread_id=values.get("thread"),
                    requests=int(requests),
                    input_tokens=int(inp),
                    output_tokens=int(out),
                    cache_read_tokens=int(cached),
                    reasoning_tokens=int(reasoning),
                    priced_cost_usd=float(cost),
                    unpriced_requests=int(requests) - int(priced),
                )
            )
        return report

    def _usage_filters(
        self,
        tenant_id: str | None,
        since: dt.date | dt.datetime | None,
        until: dt.date | dt.datetime | None,
        **equal: str | None,
    ) -> list[Any]:
        start, stop = usage_bounds(since, until)
        filters: list[Any] = [UsageRecordRow.tenant_id == (tenant_id or self.tenant_id)]
        if start is not None:
            filters.append(UsageRecordRow.created_at >= start)
        if stop is not None:
            filters.append(UsageRecordRow.created_at < stop)
        for column, value in equal.items():
            if value is not None:
                filters.append(getattr(UsageRecordRow, column) == value)
        return filters

    @traced("usage_report")
    async def usage_report(
        self,
        *,
        group_by: Sequence[UsageGroup] | str = ("day", "model", "user"),
        since: dt.date | dt.datetime | None = None,
        until: dt.date | dt.datetime | None = None,
        user_id: str | None = None,
        tenant_id: str | None = None,
    ) -> list[UsageRow]:
        """Tokens and cost of the tenant's model responses, one row per group, ordered by the groups.

        Args:
            group_by: Any of `day` (UTC), `model`, `user`, `thread`, in column order (a comma-separated string works).
            since: From this date (its start, UTC) or aware datetime.
            until: Up to this date (included) or before this aware datetime.
            user_id: Only this user's responses.
            tenant_id: The tenant (default: the store's).
        """
        groups = _groups(group_by)
        return await self._usage_rows(groups, self._usage_filters(tenant_id, since, until, user_id=user_id))

    @traced("usage_totals")
    async def usage_totals(
        self,
        *,
        run_id: str | None = None,
        thread_id: str | None = None,
        user_id: str | None = None,
        since: dt.date | dt.datetime | None = None,
        until: dt.date | dt.datetime | None = None,
        tenant_id: str | None = None,
    ) -> UsageRow:
        """What a run, a thread, a user or (with no filter) the whole tenant consumed and cost, in one row."""
        filters = self._usage_filters(tenant_id, since, until, run_id=run_id, thread_id=thread_id, user_id=user_id)
        rows = await self._usage_rows([], filters)
        return rows[0] if rows else UsageRow()

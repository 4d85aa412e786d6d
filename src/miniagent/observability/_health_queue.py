"""The job queue check: the queue of background runs (`MINIAGENT_QUEUE_URL`, default an SQLite file) answers.

Not critical: a server whose queue is down still answers synchronous requests (background runs get 503
`queue_unavailable`), so the check reports the failure in the readiness detail without failing the probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._health_base import Check, CheckResult

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["queue_check"]


async def _check_queue(settings: Settings, clock: Callable[[], float] = time.perf_counter) -> CheckResult:
    from ..errors import MiniAgentError
    from ..queue import default_queue_url, open_queue, safe_url

    url = default_queue_url(settings)
    shown = safe_url(url)
    try:
        queue = open_queue(url, name=settings.queue_name)
    except MiniAgentError as exc:
        return CheckResult("fail", f"{shown}: {exc}", fix="fix MINIAGENT_QUEUE_URL (sqlite://, amqp:// or redis://)")
    try:
        start = clock()
        await queue.connect()
        await queue.check()
        depth = await queue.depth()
        latency = clock() - start
    except MiniAgentError as exc:
        return CheckResult(
            "fail",
            f"background runs are refused: {exc}",
            fix="start the broker or fix MINIAGENT_QUEUE_URL; synchronous requests keep working meanwhile",
        )
    finally:
        await queue.close()
    return CheckResult(
        "ok", f"{queue.kind} queue at {shown} answers in {latency * 1000:.1f} ms, {depth} job(s) waiting"
    )


def queue_check(*, name: str = "queue", critical: bool = False, timeout_s: float | None = None) -> Check:
    """The job queue of background runs answers (and how many jobs wait).

    Args:
        name: The check's name.
        critical: Whether a failure fails the report (default: no — synchronous requests still work).
        timeout_s: Its own timeout; `None` uses the runner's.
    """
    return Check(
        name,
        _check_queue,
        kind="readiness",
        critical=critical,
        timeout_s=timeout_s,
        description="the job queue of background runs answers",
    )

"""Rate limits and daily budgets on the API: checked before each request, charged after each run.

Each API request counts against two subjects, its API key (`key:<id>`, none for a JWT) and its user
(`user:<tenant>/<user>`), with the same [`LimitPolicy`][miniagent.limits.LimitPolicy] from the settings:

- `enforce_limits` (a dependency the app puts on the `/v1` and `/api/v1` routers) takes a token from both buckets,
  after refusing the request if a daily budget of either is used up, so an exhausted budget stops a request before
  the model runs. A refusal is 429: `rate_limited` (with `Retry-After`) or `budget_exceeded` (naming the budget and
  when it resets, `Retry-After` until then and `x-should-retry: false` so OpenAI SDKs do not retry). Answers carry
  `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the bucket is full again).
  An unreachable Redis is 503 `limits_unavailable`: limits are never silently dropped.
- It also sets [`current_principal`][miniagent.server._limits.current_principal] for the request. Runs started in
  the request (inline, streamed or in the background: tasks copy the context) end with `RunFinished`, `RunFailed`
  or `RunCancelled`; a process-wide event handler adds their tokens and cost to both subjects' daily counters.
  Code that runs an agent outside a request's context calls [`charge_usage`][miniagent.server._limits.charge_usage].
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Response
from starlette.requests import HTTPConnection

from .. import events as _events
from ..events import AgentEvent, RunCancelled, RunFailed, RunFinished
from ..limits import Admission, BudgetExceeded, LimiterUnavailable, LimitPolicy, RateLimiter, limiter_from_settings
from ._deps import PrincipalDep, get_state
from ._errors import ApiError
from ._state import Principal, ServerState

if TYPE_CHECKING:
    from ..queue import Job
    from ..settings import Settings

if TYPE_CHECKING:
    from ..usage import Usage

__all__ = [
    "LIMITS_CLOCK_KEY",
    "RESPONSE_HEADERS_KEY",
    "LimitHeadersMiddleware",
    "Limits",
    "charge_usage",
    "current_principal",
    "enforce_limits",
    "setup_limits",
    "subject_keys",
]

_log = logging.getLogger("miniagent.server")

LIMITS_CLOCK_KEY = "limits.clock"
"""`state.extras[LIMITS_CLOCK_KEY]`, set before start-up: the limiter's wall clock (tests pass a manual one)."""
_EXTRAS_KEY = "limits"
RESPONSE_HEADERS_KEY = "miniagent.response_headers"
"""Where `enforce_limits` leaves the `X-RateLimit-*` headers in the request's ASGI scope, for
[`LimitHeadersMiddleware`][miniagent.server._limits.LimitHeadersMiddleware] to add to the answer."""

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "miniagent_current_principal", default=None
)
"""The principal of the API request being handled (set by `enforce_limits`), or `None` outside one."""


@dataclass(eq=False)
class Limits:
    """The app's limits: its policy, its limiter, and the usage charges still in flight."""

    policy: LimitPolicy
    """What each subject may do."""
    limiter: RateLimiter
    """Where buckets and counters live (in process, or Redis)."""
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    """Usage charges not yet written (awaited before the next admission and at shutdown)."""

    async def settle(self) -> None:
        """Wait for the usage charges in flight (so a budget a run just used up is seen)."""
        while self.pending:
            await asyncio.wait(list(self.pending))

    def charge_soon(self, principal: Principal, usage: Usage) -> None:
        """Add a run's usage to the principal's counters, in a task of the running loop."""
        tokens, usd = usage.total_tokens, usage.cost_usd
        if tokens <= 0 and not usd:
            return
        task = asyncio.get_running_loop().create_task(self.charge(principal, tokens, usd))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def charge(self, principal: Principal, tokens: int, usd: float | None) -> None:
        """Add tokens and cost (`None`: unknown, counted as 0) to the principal's counters; never raises."""
        if usd is None and self.policy.usd_per_day is not None:
            _log.warning("a run's cost is unknown (a model without a price): it does not count against usd/day")
        try:
            await self.limiter.add_usage(subject_keys(principal), tokens=tokens, usd=usd or 0.0)
        except LimiterUnavailable as exc:  # the run is over: its usage cannot be refused, only lost (logged)
            _log.error("usage of a run not counted against the daily budgets: %s", exc)


_charges: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("miniagent_limits_charges", default=None)
_handler_lock = threading.Lock()
_handler_users = 0
_remove_handler: Callable[[], None] | None = None


def _on_event(event: AgentEvent) -> None:
    """The process-wide event handler: a run of an API request ended: charge its usage to the request's subjects."""
    if not isinstance(event, RunFinished | RunFailed | RunCancelled):
        return
    limits = _charges.get()
    principal = current_principal.get()
    if limits is not None and principal is not None:
        limits.charge_soon(principal, event.usage)


def _use_handler() -> Callable[[], None]:
    global _handler_users, _remove_handler
    with _handler_lock:
        _handler_users += 1
        if _remove_handler is None:
            _remove_handler = _events.add_event_handler(_on_event)

    def release() -> None:
        global _handler_users, _remove_handler
        with _handler_lock:
            _handler_users -= 1
            if _handler_users == 0 and _remove_handler is not None:
                _remove_handler()
                _remove_handler = None

    return release


@contextlib.contextmanager
def _charging_with(limits: Limits | None, principal: Principal) -> Iterator[None]:
    charges = _charges.set(limits)
    who = current_principal.set(principal)
    try:
        yield
    finally:
        current_principal.reset(who)
        _charges.reset(charges)


def job_principal(job: Job) -> Principal:
    """The principal a queued run charges: the API key (if any) and the user that queued it."""
    return Principal(
        job.tenant_id, job.user_id, frozenset({"chat"}), via="api-key" if job.key_id else "jwt", key_id=job.key_id
    )


def charging(state: ServerState, job: Job) -> AbstractContextManager[None]:
    """Runs started inside the block charge their usage to the key and user that queued `job`.

    The in-process worker of a server enters it around each run it starts.
    """
    return _charging_with(state.extras.get(_EXTRAS_KEY), job_principal(job))


def worker_charging(
    settings: Settings,
) -> tuple[Callable[[Job], AbstractContextManager[None]], Callable[[], Awaitable[None]]] | None:
    """For `miniagent worker`: a job context charging runs' usage to the daily budgets, and its closer.

    `None` when no budget or rate limit is configured. Budgets are shared with the servers through Redis.
    """
    policy = LimitPolicy.from_settings(settings)
    if not policy.enabled:
        return None
    limits = Limits(policy, limiter_from_settings(settings))
    release = _use_handler()

    async def close() -> None:
        try:
            await limits.settle()
        finally:
            release()
            await limits.limiter.aclose()

    return (lambda job: _charging_with(limits, job_principal(job))), close


def subject_keys(principal: Principal) -> tuple[str, ...]:
    """The limiter keys of a principal: its API key's (if any), then its user's (tenant and user escaped)."""
    user = f"user:{quote(principal.tenant_id, safe='')}/{quote(principal.user_id, safe='')}"
    return (f"key:{principal.key_id}", user) if principal.key_id else (user,)


async def setup_limits(state: ServerState) -> None:
    """At start-up: the app's policy from the settings, and its limiter (Redis when `state.redis` is set).

    A limiter already on `state.limiter` is kept. Without any limit configured nothing is set up and
    `enforce_limits` does nothing.
    """
    policy = LimitPolicy.from_settings(state.settings)
    if not policy.enabled:
        return
    if state.limiter is None:
        clock = state.extras.get(LIMITS_CLOCK_KEY)
        state.limiter = limiter_from_settings(state.settings, redis=state.redis, clock=clock)
    limits = Limits(policy, state.limiter)
    state.extras[_EXTRAS_KEY] = limits
    release = _use_handler()

    async def shutdown() -> None:
        try:
            await limits.settle()
        finally:
            release()
            await limits.limiter.aclose()

    state.on_shutdown.append(shutdown)


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value - 1e-9)))


def _in_words(seconds: float) -> str:
    minutes = math.ceil(seconds / 60)
    if minutes < 2:
        return f"{math.ceil(seconds)} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _subject(principal: Principal, key: str) -> str:
    return "API key" if key.startswith("key:") and principal.key_id else "user"


def _rate_headers(admission: Admission) -> dict[str, str]:
    tightest = admission.tightest
    if tightest is None:
        return {}
    return {
        "X-RateLimit-Limit": str(tightest.limit),
        "X-RateLimit-Remaining": str(tightest.remaining),
        "X-RateLimit-Reset": str(math.ceil(tightest.reset_s - 1e-9)),
    }


def _budget_error(principal: Principal, budget: BudgetExceeded) -> ApiError:
    resets = dt.datetime.fromtimestamp(budget.resets_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if budget.budget == "tokens/day":
        amount, used, setting = f"{budget.limit:.0f} tokens per day", f"{budget.used:.0f} used", "TOKENS"
    else:
        amount, used, setting = f"{budget.limit:g} USD per day", f"{budget.used:.4g} USD spent", "USD"
    who = _subject(principal, budget.key)
    return ApiError(
        429,
        "budget_exceeded",
        f"The daily budget of this {who} ({amount}) is used up ({used}); it resets at {resets} (in "
        f"{_in_words(budget.reset_s)}). Wait until then, or ask the operator to raise "
        f"MINIAGENT_BUDGET_{setting}_PER_DAY.",
        headers={"Retry-After": _seconds(budget.reset_s), "x-should-retry": "false"},
        extra={
            "budget": budget.budget,
            "subject": who,
            "limit": budget.limit,
            "used": budget.used,
            "resets_at": resets,
        },
    )


def _rate_error(principal: Principal, admission: Admission, policy: LimitPolicy) -> ApiError:
    blocked = next(b for b in admission.buckets if b.remaining < 1)
    who = _subject(principal, blocked.key)
    wait = admission.retry_after_s
    return ApiError(
        429,
        "rate_limited",
        f"Too many requests for this {who}: {policy.rpm:g} per minute, at most {blocked.limit} at once. "
        f"Retry in {_in_words(wait)} (see Retry-After).",
        headers={"Retry-After": _seconds(wait), **_rate_headers(admission)},
        extra={"subject": who, "limit": blocked.limit, "retry_after_s": round(wait, 3)},
    )


async def enforce_limits(connection: HTTPConnection, response: Response, principal: PrincipalDep) -> None:
    """The dependency on the API routers: admit the request against its key's and user's limits, or refuse it.

    Raises:
        ApiError: 429 `rate_limited` or `budget_exceeded`; 503 `limits_unavailable` when Redis does not answer.
    """
    current_principal.set(principal)
    limits: Limits | None = get_state(connection).extras.get(_EXTRAS_KEY)
    if limits is None:
        return
    _charges.set(limits)
    keys = subject_keys(principal)
    try:
        if limits.pending:
            await limits.settle()
        admission = await limits.limiter.admit(limits.policy.buckets(keys), limits.policy.budgets(keys))
    except LimiterUnavailable as exc:
        _log.error("rate limiter unavailable: %s", exc)
        raise ApiError(
            503,
            "limits_unavailable",
            "The rate limiter is unavailable, so requests are refused for now; retry in a moment. Operators: "
            "check Redis (`miniagent doctor`).",
            headers={"Retry-After": "1"},
        ) from exc
    if admission.budget is not None:
        raise _budget_error(principal, admission.budget)
    if not admission.allowed:
        raise _rate_error(principal, admission, limits.policy)
    headers = _rate_headers(admission)
    response.headers.update(headers)  # answers FastAPI builds from a returned model
    connection.scope[RESPONSE_HEADERS_KEY] = [(k.lower().encode(), v.encode()) for k, v in headers.items()]


class LimitHeadersMiddleware:
    """Adds the `X-RateLimit-*` headers of `enforce_limits` to answers that endpoints built themselves
    (`JSONResponse`, `StreamingResponse`), which FastAPI does not merge dependency headers into.

    A pure ASGI middleware: `app.add_middleware(LimitHeadersMiddleware)`. A header the answer already has is kept.
    """  # noqa: D205

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = scope.get(RESPONSE_HEADERS_KEY)
                if extra:
                    headers = list(message.get("headers", ()))
                    present = {bytes(name).lower() for name, _ in headers}
                    message["headers"] = headers + [(k, v) for k, v in extra if k not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def charge_usage(state: ServerState, principal: Principal, usage: Usage) -> None:
    """Add `usage` to the principal's daily counters now (for runs outside a request's context).

    Runs started while handling a request are charged automatically; calling this for them too counts them twice.
    """
    limits: Limits | None = state.extras.get(_EXTRAS_KEY)
    if limits is None:
        return
    await limits.charge(principal, usage.total_tokens, usage.cost_usd)

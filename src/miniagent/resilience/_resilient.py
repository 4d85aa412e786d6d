"""`ResilientModel`: one retry layer and a circuit breaker around any model, for requests and streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from .._utils import SYSTEM_CLOCK, Clock
from ..context import current_run, emit_event
from ..errors import CircuitOpen, ModelAPIError, UserError
from ..events import RetryScheduled
from ..messages import ModelMessage, ModelResponse
from ..models import Model, ModelRequestParameters, ModelSettings, StreamChunk, StreamDone, StreamReset
from ._breaker import BreakerRegistry, CircuitBreaker, default_breakers
from ._retry import Attempts, RetryPolicy, annotate, default_retryable

__all__ = ["DEFAULT_RETRY", "ResilientModel"]

DEFAULT_RETRY: Final = RetryPolicy()
"""The policy agents and wrappers use when given none: 4 attempts, 0.5-30 s jittered delays, a 120 s deadline."""


async def close_stream(chunks: AsyncIterator[StreamChunk]) -> None:
    """Close a model's stream now (not at garbage collection), so an abandoned attempt stops generating."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def one_line(text: str, limit: int = 300) -> str:
    """`text` on one line, shortened to `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class ResilientModel(Model):
    """A model whose failed requests are retried by a [`RetryPolicy`][miniagent.resilience.RetryPolicy] and whose
    upstream is guarded by a [`CircuitBreaker`][miniagent.resilience.CircuitBreaker].

    Every agent wraps its model in one (with the agent's `retry` policy) unless it already is a `ResilientModel` or a
    [`FallbackModel`][miniagent.resilience.FallbackModel], so there is exactly one retry layer and each attempt is
    counted once. Each retry is announced by a `RetryScheduled` event (cause `model-error`) before the wait. A stream
    that breaks off (or ends without its final chunk) is requested again; if it had already produced chunks, a
    `StreamReset` comes first, so the consumer discards the partial response and never sees two attempts mixed.
    With the breaker open, `CircuitOpen` is raised at once, without calling the model.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.errors import ModelOverloaded
        from miniagent.resilience import BreakerRegistry, ResilientModel, RetryPolicy
        from miniagent.testing import RecordingClock, ScriptedModel

        clock = RecordingClock()
        flaky = ScriptedModel([ModelOverloaded("503", model_name="m", status_code=503), "Hello!"])
        model = ResilientModel(flaky, retry=RetryPolicy(max_attempts=3), breaker=False, clock=clock)
        assert Agent(model=model).run_sync("Hi").output == "Hello!"
        assert len(clock.sleeps) == 1  # one retry, waited on the injected clock
        ```

    Args:
        model: The model to protect.
        retry: The retry policy (`None`: never retry).
        breaker: `True` for the breaker of `model.upstream` in `breakers` (default: the process-wide registry),
            `False` for none, or a breaker of your own.
        clock: The clock the retry delays are slept on and the deadline is measured with.
        breakers: The registry `breaker=True` takes the breaker from.
    """  # noqa: D205 (the summary needs both lines)

    __slots__ = ("wrapped", "retry", "breaker", "clock")

    def __init__(
        self,
        model: Model,
        *,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        breaker: CircuitBreaker | bool = True,
        clock: Clock | None = None,
        breakers: BreakerRegistry | None = None,
    ) -> None:
        if not isinstance(model, Model):
            raise UserError(f"ResilientModel wraps a Model, got {type(model).__name__}.")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise UserError(f"`retry` must be a RetryPolicy or None, got {type(retry).__name__}.")
        self.wrapped: Final = model
        """The protected model."""
        self.retry: Final = retry or RetryPolicy.none()
        """The retry policy."""
        if breaker is True:
            guard: CircuitBreaker | None = (breakers or default_breakers()).get(model.upstream)
        elif breaker is False:
            guard = None
        elif isinstance(breaker, CircuitBreaker):
            guard = breaker
        else:
            raise UserError(f"`breaker` must be True, False or a CircuitBreaker, got {breaker!r}.")
        self.breaker: Final = guard
        """The upstream's breaker, if any."""
        self.clock: Final[Clock] = clock or SYSTEM_CLOCK
        """The clock of delays and the deadline."""

    # ---- the Model contract, delegated ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The wrapped model's name."""
        return self.wrapped.name

    @property
    def upstream(self) -> str:
        """The wrapped model's upstream."""
        return self.wrapped.upstream

    @property
    def supports_streaming(self) -> bool:
        """Whether the wrapped model streams."""
        return self.wrapped.supports_streaming

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        """The wrapped model's count."""
        return self.wrapped.count_tokens(messages)

    async def aclose(self) -> None:
        """Close the wrapped model."""
        await self.wrapped.aclose()

    def __repr__(self) -> str:
        return f"ResilientModel({self.wrapped!r})"

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """Ask the wrapped model, retrying what the policy allows."""
        attempts = Attempts(self.retry, self.clock.now())
        breaker = self.breaker
        while True:
            attempts.begin()
            if breaker is not None and not await breaker.allow():
                raise self._circuit_open()
            try:
                response = await self.wrapped.request(messages, settings, params)
            except Exception as exc:
                delay = await self._failed(exc, attempts)
                if delay is None:
                    raise
                await self.clock.sleep(delay)
                continue
            except BaseException:
                if breaker is not None:
                    await breaker.record_cancelled()
                raise
            if breaker is not None:
                await breaker.record_success()
            return response

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """Stream the wrapped model's response; a cut stream is requested again after a `StreamReset`."""
        attempts = Attempts(self.retry, self.clock.now())
        breaker = self.breaker
        dirty = False  # chunks of an attempt that then failed have reached the consumer
        while True:
            attempts.begin()
            if breaker is not None and not await breaker.allow():
                raise self._circuit_open()
            chunks = self.wrapped.request_stream(messages, settings, params)
            last: StreamChunk | None = None
            error: Exception | None = None
            try:
                # The consumer (the loop) only ever closes or cancels this generator (BaseExceptions), so an
                # `Exception` here comes from the model's stream.
                async for chunk in chunks:
                    last = chunk
                    dirty = True
                    yield chunk
            except Exception as exc:
                error = exc
            except BaseException:  # cancelled, or closed by the consumer: no verdict unless the stream had ended
                if breaker is not None:
                    await (breaker.record_success() if isinstance(last, StreamDone) else breaker.record_cancelled())
                raise
            finally:
                await close_stream(chunks)
            if error is None:
                if isinstance(last, StreamDone):
                    if breaker is not None:
                        await breaker.record_success()
                    return
                # The stream ended without its final chunk: a cut (the server closed it early), retried as one.
                error = ModelAPIError(
                    f"The stream from {self.wrapped.name!r} ended before the response was complete (no final chunk): "
                    "the connection was closed early. Retry the request; if it keeps happening, check the server or "
                    "any proxy in between.",
                    model_name=self.wrapped.name,
                    retryable=True,
                )
            delay = await self._failed(error, attempts)
            if delay is None:
                raise error
            if dirty:  # the consumer discards the partial response before the new attempt streams
                yield StreamReset(one_line(str(error)), model_name=self.wrapped.name)
                dirty = False
            await self.clock.sleep(delay)

    # ---- helpers -----------------------------------------------------------------------------------------

    async def _failed(self, exc: Exception, attempts: Attempts) -> float | None:
        """Record a failed attempt; the delay before the next one (after announcing it), or `None` to give up."""
        breaker = self.breaker
        if breaker is not None:
            if default_retryable(exc):  # the upstream's health: transport, timeouts, 5xx, 429, cut streams
                await breaker.record_failure()
                if breaker.state == "open" and attempts.policy.max_attempts > 1:  # it opened: no retry into it
                    annotate(exc, f"not retried: the circuit breaker of {breaker.upstream!r} opened")
                    return None
            else:  # it answered (a bad request, a refusal): not the upstream's fault
                await breaker.record_success()
        delay = attempts.retry_delay(exc, self.clock.now())
        if delay is None:
            return None
        run = current_run()
        message = one_line(str(exc))
        await emit_event(
            RetryScheduled(
                run.run_id if run is not None else "",
                run.step if run is not None else 0,
                "model-error",
                attempts.attempt,
                delay,
                message,
                error_type=type(exc).__name__,
                upstream=self.wrapped.upstream,
            )
        )
        return delay

    def _circuit_open(self) -> CircuitOpen:
        breaker = self.breaker
        assert breaker is not None
        wait = breaker.retry_in_s()
        when = f"it lets a probe request through in {wait:.1f} s" if wait > 0 else "a probe request is testing it"
        return CircuitOpen(
            f"The circuit breaker of {breaker.upstream!r} is open: {self.wrapped.name!r} failed too often recently, "
            f"so it was not called ({when}). Wait, or put it in a FallbackModel to answer from another model "
            "meanwhile.",
            model_name=self.wrapped.name,
            upstream=breaker.upstream,
            retry_in_s=wait,
        )

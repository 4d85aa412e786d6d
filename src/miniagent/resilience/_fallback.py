"""`FallbackModel`: a chain of models; when one fails for good, the next answers, even mid-stream."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, Literal, cast

from .._utils import Clock
from ..context import current_run, emit_event
from ..errors import AllModelsFailed, ModelAPIError, UserError
from ..events import FallbackUsed
from ..messages import ModelMessage, ModelResponse
from ..models import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    StreamReset,
)
from ..models._base import response_chunks
from ._breaker import BreakerRegistry
from ._resilient import DEFAULT_RETRY, ResilientModel, close_stream, one_line
from ._retry import RetryPolicy

__all__ = ["FallbackModel", "InvalidModelResponse"]


class InvalidModelResponse(ModelAPIError):
    """A model of a fallback chain answered with a response that cannot be used (the chain moved on).

    Not raised to the caller: it appears in `AllModelsFailed.failures` and in `FallbackUsed` events.
    """

    default_retryable = False


class _Member:
    """One model of the chain, resolved (and wrapped in the chain's retry policy) on first use."""

    __slots__ = ("spec", "label", "_model")

    def __init__(self, spec: Model | str) -> None:
        self.spec = spec
        self.label = spec if isinstance(spec, str) else spec.name
        self._model: Model | None = None

    def resolve(self, chain: FallbackModel) -> Model:
        model = self._model
        if model is None:
            from ..models import infer_model

            raw = infer_model(self.spec)
            self.label = raw.name
            model = self._model = chain._protect(raw)
        return model

    @property
    def resolved(self) -> Model | None:
        return self._model


def _check_spec(spec: object, where: str) -> Model | str:
    if isinstance(spec, Model):
        return spec
    if isinstance(spec, str) and spec.strip():
        return spec.strip()
    raise UserError(f"FallbackModel: {where} must be a Model or a model string like 'local', got {spec!r}.")


class FallbackModel(Model):
    """Models tried in order: when one fails for good, its breaker is open, or its answer is unusable, the next
    answers.

    Each member is wrapped in a [`ResilientModel`][miniagent.resilience.ResilientModel] with the chain's `retry`
    policy and its upstream's breaker, so a member is retried first and the chain moves on only when it fails for
    good (a non-retryable error, retries exhausted, or an open breaker: at once). Strings are resolved through the
    model registry on first use (`'local'`, `'openai:gpt-4o-mini'`...). Each move is a `FallbackUsed` event. It
    works after a stream has started: the consumer gets a `StreamReset` (a `StreamRestarted` event) and only the
    next model's output, never two models mixed. The response carries the model that produced it
    (`RunResult.model_name`). When every model fails, `AllModelsFailed` names each one and why.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.errors import ContextLengthExceeded, ModelAuthError
        from miniagent.resilience import FallbackModel
        from miniagent.testing import ScriptedModel

        primary = ScriptedModel([ModelAuthError("bad key", model_name="primary", status_code=401)], name="primary")
        backup = ScriptedModel(["Hello from the backup."], name="backup")
        long_context = ScriptedModel([], name="long")
        model = FallbackModel([primary, backup], routes={ContextLengthExceeded: [long_context]})
        result = Agent(model=model).run_sync("Hi")
        assert result.output == "Hello from the backup." and result.model_name == "backup"
        ```

    Args:
        models: The chain, first choice first: models or model strings.
        routes: Per error class, the models to try next instead of the rest of the chain (e.g.
            `{ContextLengthExceeded: [long_context_model], ContentFiltered: ["anthropic:claude-sonnet-4-5"]}`); the
            most specific class of the error wins.
        fallback_on_invalid: Also move on when a model's response is structurally unusable: empty, a call to a
            tool that was not offered, or tool arguments that are not a JSON object (the last model's response is
            kept, and the agent asks it to correct itself).
        retry: The retry policy of each member (`None`: no retries, move on at the first failure).
        breakers: The registry of the members' breakers (default: the process-wide one); `False` for none.
        clock: The clock of retry delays.

    Raises:
        UserError: an empty chain, or a member or route that is not a model.
    """  # noqa: D205 (the summary needs both lines)

    def __init__(
        self,
        models: Sequence[Model | str],
        *,
        routes: Mapping[type[ModelAPIError], Sequence[Model | str]] | None = None,
        fallback_on_invalid: bool = True,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        breakers: BreakerRegistry | Literal[False] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(models, str | Model) or not isinstance(cast(object, models), Sequence) or not models:
            raise UserError(
                "FallbackModel needs a non-empty list of models, e.g. FallbackModel([primary, 'local']); "
                f"got {models!r}."
            )
        members: dict[object, _Member] = {}

        def member(spec: object, where: str) -> _Member:
            checked = _check_spec(spec, where)
            key: object = checked if isinstance(checked, str) else id(checked)
            found = members.get(key)
            if found is None:
                found = members[key] = _Member(checked)
            return found

        self._chain: Final = [member(m, f"model #{i + 1}") for i, m in enumerate(models)]
        self._routes: dict[type[BaseException], list[_Member]] = {}
        for error_class, targets in (routes or {}).items():
            if not (isinstance(cast(object, error_class), type) and issubclass(error_class, BaseException)):
                raise UserError(
                    f"FallbackModel: a route's key must be an error class such as ContextLengthExceeded, got "
                    f"{error_class!r}."
                )
            if isinstance(targets, str | Model) or not isinstance(cast(object, targets), Sequence) or not targets:
                raise UserError(
                    f"FallbackModel: the route for {error_class.__name__} must be a non-empty list of models, got "
                    f"{targets!r}."
                )
            self._routes[error_class] = [member(t, f"a model of the {error_class.__name__} route") for t in targets]
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise UserError(f"`retry` must be a RetryPolicy or None, got {type(retry).__name__}.")
        if breakers is not False and breakers is not None and not isinstance(breakers, BreakerRegistry):
            raise UserError(f"`breakers` must be a BreakerRegistry, False or None, got {type(breakers).__name__}.")
        self.fallback_on_invalid: Final = bool(fallback_on_invalid)
        """Whether an unusable response moves the chain on."""
        self.retry: Final = retry
        """Each member's retry policy."""
        self.breakers: Final = breakers
        """The members' breaker registry (`False`: no breakers)."""
        self.clock: Final = clock
        """The clock of retry delays."""
        self._name = self._chain[0].label

    def _protect(self, model: Model) -> Model:
        if isinstance(model, ResilientModel | FallbackModel):
            return model
        return ResilientModel(
            model,
            retry=self.retry,
            breaker=self.breakers is not False,
            breakers=self.breakers or None,
            clock=self.clock,
        )

    # ---- the Model contract ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The first model's name: the model each request goes to first (a `FallbackUsed` event names any other)."""
        return self._name

    @property
    def upstream(self) -> str:
        """The chain (each member has its own breaker; the chain has none)."""
        return "fallback:" + ",".join(m.label for m in self._chain)

    @property
    def supports_streaming(self) -> bool:
        """Streams (a member that cannot stream sends its whole response as chunks)."""
        return True

    @property
    def models(self) -> list[Model | str]:
        """The chain as given (routes excluded)."""
        return [m.spec for m in self._chain]

    def count_tokens(self, messages: list[ModelMessage]) -> int:
        """The first model's count."""
        return self._chain[0].resolve(self).count_tokens(messages)

    async def aclose(self) -> None:
        """Close every member resolved so far."""
        seen: set[int] = set()
        for m in [*self._chain, *(t for targets in self._routes.values() for t in targets)]:
            model = m.resolved
            if model is not None and id(model) not in seen:
                seen.add(id(model))
                await model.aclose()

    def __repr__(self) -> str:
        return f"FallbackModel({[m.label for m in self._chain]!r})"

    # ---- requests ----------------------------------------------------------------------------------------

    async def request(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> ModelResponse:
        """The first usable response of the chain."""
        walk = _Walk(self)
        kept: ModelResponse | None = None  # an unusable response, answered if nothing better comes
        while (member := walk.next()) is not None:
            try:
                model = member.resolve(self)
                response = await model.request(messages, settings, params)
            except Exception as exc:
                await walk.failed(member, exc, after_stream_start=False)
                continue
            error = self._unusable(member, response, params, walk)
            if error is None:
                return _named(response, member.label)
            kept = kept or _named(response, member.label)
            await walk.failed(member, error, after_stream_start=False)
        if kept is not None:
            return kept
        raise walk.all_failed()

    async def request_stream(
        self, messages: list[ModelMessage], settings: ModelSettings | None, params: ModelRequestParameters
    ) -> AsyncIterator[StreamChunk]:
        """The first usable response of the chain, streamed; a failure mid-stream restarts on the next model."""
        walk = _Walk(self)
        kept: ModelResponse | None = None
        dirty = False  # chunks of a member that then failed have reached the consumer
        while (member := walk.next()) is not None:
            try:
                model = member.resolve(self)
            except Exception as exc:
                await walk.failed(member, exc, after_stream_start=dirty)
                continue
            assembler = ResponseAssembler(member.label) if self.fallback_on_invalid else None
            chunks = model.request_stream(messages, settings, params).__aiter__()
            error: Exception | None = None
            try:
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except Exception as exc:
                        error = exc
                        break
                    if isinstance(chunk, StreamDone):
                        chunk = _stamped(chunk, member.label)
                    if assembler is not None:
                        assembler.add(chunk)
                    dirty = True
                    yield chunk
            finally:
                await close_stream(chunks)
            if error is None:
                if assembler is None:
                    return
                response = assembler.response()
                error = self._unusable(member, response, params, walk)
                if error is None:
                    return  # a usable answer, or the last model's answer, which stands: the agent asks it to correct
                kept = kept or _named(response, member.label)
            await walk.failed(member, error, after_stream_start=dirty)
            if dirty and walk.queue:  # the consumer discards the partial response; the next model starts afresh
                yield StreamReset(walk.reason, model_name=walk.queue[0].label)
                dirty = False
        if kept is not None:
            if dirty:
                yield StreamReset(walk.reason, model_name=kept.model_name)
            for chunk in response_chunks(kept):
                yield chunk
            return
        raise walk.all_failed()

    # ---- helpers -----------------------------------------------------------------------------------------

    def _problem(self, response: ModelResponse, params: ModelRequestParameters) -> str | None:
        """What makes `response` unusable, or `None`."""
        if not self.fallback_on_invalid:
            return None
        calls = response.tool_calls
        if not calls and not response.text.strip():
            return "the response was empty"
        offered = {t.name for t in params.all_tools}
        for call in calls:
            if call.tool_name not in offered:
                return f"it called the tool {call.tool_name!r}, which was not offered"
            try:
                call.args_dict()
            except ValueError:
                return f"its arguments for the tool {call.tool_name!r} are not a JSON object"
        return None

    def _unusable(
        self, member: _Member, response: ModelResponse, params: ModelRequestParameters, walk: _Walk
    ) -> InvalidModelResponse | None:
        """The error that moves the chain on from `response`, or `None` to answer with it."""
        problem = self._problem(response, params)
        if problem is None:
            return None
        error = InvalidModelResponse(
            f"{member.label!r} answered with an unusable response: {problem}.",
            model_name=member.label,
            retryable=False,
        )
        return error if walk.has_next(error) else None


def _stamped(done: StreamDone, label: str) -> StreamDone:
    return done if done.model_name else dataclasses.replace(done, model_name=label)


def _named(response: ModelResponse, label: str) -> ModelResponse:
    return response if response.model_name else dataclasses.replace(response, model_name=label)


class _Walk:
    """Which member comes next: the rest of the chain, or a route chosen by the last error."""

    __slots__ = ("chain", "queue", "tried", "failures", "reason", "_last")

    def __init__(self, chain: FallbackModel) -> None:
        self.chain = chain
        self.queue = list(chain._chain)
        self.tried: set[int] = set()
        self.failures: list[tuple[str, BaseException]] = []
        self.reason = ""
        self._last: BaseException | None = None

    def _upcoming(self, error: BaseException | None) -> list[_Member]:
        queue = self.queue
        if error is not None:
            routes = self.chain._routes
            for cls in type(error).__mro__:
                route = routes.get(cast("type[BaseException]", cls))
                if route is not None:
                    queue = route
                    break
        return [m for m in queue if id(m) not in self.tried]

    def has_next(self, error: BaseException) -> bool:
        """Whether the chain would move on after `error`."""
        return bool(self._upcoming(error))

    def next(self) -> _Member | None:
        """The member to try now (marked as tried), or `None` when the chain is exhausted."""
        upcoming = self._upcoming(None)
        if not upcoming:
            return None
        member = upcoming[0]
        self.tried.add(id(member))
        self.queue = upcoming[1:]
        return member

    async def failed(self, member: _Member, error: BaseException, *, after_stream_start: bool) -> None:
        """Record `member`'s failure, choose what comes next, and announce the move."""
        self.failures.append((member.label, error))
        self._last = error
        self.reason = one_line(f"{type(error).__name__}: {error}")
        self.queue = self._upcoming(error)
        if not self.queue:
            return
        run = current_run()
        await emit_event(
            FallbackUsed(
                run.run_id if run is not None else "",
                run.step if run is not None else 0,
                member.label,
                self.queue[0].label,
                type(error).__name__,
                one_line(str(error)),
                after_stream_start=after_stream_start,
            )
        )

    def all_failed(self) -> AllModelsFailed:
        lines = "\n".join(f"- {name}: {type(exc).__name__}: {one_line(str(exc), 240)}" for name, exc in self.failures)
        error = AllModelsFailed(
            f"Every model of the fallback chain failed:\n{lines}\nCheck each upstream (status pages, keys, "
            "network), or add a model that does not share their failure (e.g. 'local').",
            model_name=self.chain.name,
            failures=self.failures,
        )
        error.__cause__ = self._last
        return error

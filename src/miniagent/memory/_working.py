"""Fitting a history to a token budget: recent turns verbatim, older ones scored, the evicted ones summarized."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import TypeAlias

from ..errors import UnexpectedModelBehavior, UserError
from ..messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ..models import Model, ModelRequestParameters, ModelSettings, infer_model
from ..models._prices import price_response
from ..usage import Usage
from ._summary import (
    SUMMARY_INSTRUCTIONS,
    SUMMARY_NOTE,
    InMemorySummaryStore,
    StoredSummary,
    SummaryStore,
    fingerprint,
    render_transcript,
    summary_prompt,
)
from ._tokens import CHARS_PER_TOKEN, TokenCounter, context_window_of, token_counter_for

__all__ = ["HistoryFit", "PinSpec", "WorkingMemory"]

PinSpec: TypeAlias = "Collection[int] | Callable[[int, ModelMessage], bool]"
"""Which messages are pinned: indices into the full history, or a predicate `(index, message) -> bool`."""

# The importance score of an evictable unit (lowest evicted first; see `WorkingMemory`).
_RECENCY_WEIGHT = 1.0
_USER_BONUS = 0.5
_ANSWER_BONUS = 0.3
_REFERENCED_BONUS = 0.6
_RETRY_PENALTY = -0.3

_SALIENT = re.compile(r"[\w][\w.@/-]*[\w]")


@dataclass(slots=True)
class HistoryFit:
    """What [`WorkingMemory.fit`][miniagent.memory.WorkingMemory.fit] sent to the model, and why."""

    messages: list[ModelMessage]
    """The fitted history, as the model received it (a copy of the full history when nothing was evicted)."""
    _: KW_ONLY
    budget: int
    """The token budget the history was fitted to."""
    tokens_before: int
    """Tokens of the full history."""
    tokens_after: int
    """Tokens of the fitted history."""
    kept: int
    """Messages of the history sent verbatim."""
    evicted: int
    """Messages of the history replaced by the summary."""
    summary: str | None = None
    """The summary at the start of the fitted history, if any."""
    summary_requests: int = 0
    """Requests made to the summary model for this fit (0 when the stored summary still applied)."""
    summary_usage: Usage = field(default_factory=Usage)
    """What those summary requests consumed."""

    @property
    def within_budget(self) -> bool:
        """Whether the fitted history fits the budget (it may not when the protected messages alone exceed it)."""
        return self.tokens_after <= self.budget


@dataclass(slots=True)
class _Unit:
    """Messages that are kept or evicted together: a response with tool calls and the request answering them."""

    indices: list[int]
    messages: list[ModelMessage]  # system prompt parts taken out: they are kept apart, always
    tokens: int = 0
    score: float = 0.0
    pinned: bool = False

    @property
    def starts_turn(self) -> bool:
        first = self.messages[0]
        return isinstance(first, ModelRequest) and any(isinstance(p, UserPromptPart) for p in first.parts)


class WorkingMemory:
    """Fits a conversation to a token budget before each model request; pass it as `Agent(working_memory=...)`.

    Nothing changes while the history fits the budget. When it does not:

    - system prompt parts are always kept, and so are the last `keep_last_turns` turns (a turn starts at a user
      prompt) and every pinned message;
    - the history is cut into units that are kept or evicted whole, so a tool call and its result (or retry
      prompt) are never separated and the history stays valid for every provider;
    - the other units are scored by importance and the lowest-scored evicted first (ties: the oldest), until the
      history takes at most `evict_to` of the budget, which leaves room for the next turns;
    - the evicted messages are replaced by a running summary written by `summary_model` (default: the run's
      model), sent as a user note at the start of the fitted history. It is kept in `summary_store` with the
      messages it covers, so the next requests reuse it: the summary model is asked again only when more
      messages must be evicted, and then folds them into the previous summary.

    The score of a unit is its recency (0 for the oldest, 1 for the newest) plus 0.5 if it holds a user prompt,
    0.3 if it holds a text answer, 0.6 if it holds a tool result that a later model response refers to (a later
    response repeats a word the result introduced: a word of 5+ characters or a token with a digit that no earlier
    message holds), minus 0.3 for a retry prompt. If the protected messages alone exceed the budget, fewer recent
    turns are protected, down to the user prompt and the newest unit of the last turn; what is still over budget
    is sent as is
    ([`HistoryFit.within_budget`][miniagent.memory.HistoryFit.within_budget] is then `False`).

    Tokens are counted by the model's `count_tokens` when it has one, else by
    [`estimate_tokens`][miniagent.memory.estimate_tokens]; the last fit is in `last_fit`, and a run emits
    [`HistoryFitted`][miniagent.events.HistoryFitted] whenever the history it sends was fitted.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.memory import WorkingMemory

        memory = WorkingMemory(max_tokens=2_000, keep_last_turns=2, pin={1})
        agent = Agent(model="test", working_memory=memory)
        result = agent.run_sync("Hello!")
        assert memory.last_fit is not None and memory.last_fit.evicted == 0  # it fits: sent as is
        ```

    Args:
        max_tokens: The budget in tokens; default `context_fraction` of the model's context window.
        context_window: The model's context window, when neither the model nor the built-in table knows it.
        context_fraction: The share of the context window the history may take when `max_tokens` is not given;
            the rest is left for the answer.
        keep_last_turns: Recent turns always sent verbatim.
        pin: Messages always kept: a collection of indices into the full history (it may be a set you add to
            later), or a predicate `(index, message) -> bool`.
        summary_model: The model that writes summaries (a model or a name such as `'openai:gpt-4o-mini'`);
            default: the model of the run.
        summary_store: Where summaries are kept between requests; default: an
            [`InMemorySummaryStore`][miniagent.memory.InMemorySummaryStore] of this memory, except on a stored thread
            (`agent.run(..., thread_id=...)`), whose summary is kept in the store's database.
        summary_instructions: The system prompt of summary requests.
        summary_max_tokens: Most tokens of a summary (sent as the summary request's `max_tokens`, and reserved in
            the budget); default a tenth of the budget, at least 16.
        evict_to: When the history must be cut, it is cut to this share of the budget.
        token_counter: Counts a list of messages' tokens instead of the model.
        conversation_key: Names the conversation a history belongs to, for the summary store; default a hash of
            its first message. A stored summary is only used if the history still starts with the messages it
            was made from, so a shared key is never wrong, only slower.
    """

    def __init__(
        self,
        *,
        max_tokens: int | None = None,
        context_window: int | None = None,
        context_fraction: float = 0.75,
        keep_last_turns: int = 2,
        pin: PinSpec | None = None,
        summary_model: Model | str | None = None,
        summary_store: SummaryStore | None = None,
        summary_instructions: str = SUMMARY_INSTRUCTIONS,
        summary_max_tokens: int | None = None,
        evict_to: float = 0.75,
        token_counter: TokenCounter | None = None,
        conversation_key: Callable[[list[ModelMessage]], str] | None = None,
    ) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise UserError(f"`max_tokens` must be a positive number of tokens, got {max_tokens!r}.")
        if context_window is not None and context_window < 1:
            raise UserError(f"`context_window` must be a positive number of tokens, got {context_window!r}.")
        if not 0 < context_fraction <= 1:
            raise UserError(f"`context_fraction` must be in (0, 1], got {context_fraction!r}.")
        if not 0 < evict_to <= 1:
            raise UserError(f"`evict_to` must be in (0, 1], got {evict_to!r}.")
        if keep_last_turns < 1:
            raise UserError(f"`keep_last_turns` must be at least 1, got {keep_last_turns!r}.")
        if summary_max_tokens is not None and summary_max_tokens < 1:
            raise UserError(f"`summary_max_tokens` must be a positive number of tokens, got {summary_max_tokens!r}.")
        self.max_tokens = max_tokens
        self.context_window = context_window
        self.context_fraction = context_fraction
        self.keep_last_turns = keep_last_turns
        self.pin = pin
        self.summary_instructions = summary_instructions
        self.summary_max_tokens = summary_max_tokens
        self.evict_to = evict_to
        self.summary_store: SummaryStore = summary_store if summary_store is not None else InMemorySummaryStore()
        self._own_summary_store = summary_store is not None
        self._summary_model_spec = summary_model
        self._summary_model: Model | None = summary_model if isinstance(summary_model, Model) else None
        self._token_counter = token_counter
        self._conversation_key = conversation_key
        self.last_fit: HistoryFit | None = None
        """The most recent fit, to inspect what was sent."""

    def __repr__(self) -> str:
        return (
            f"WorkingMemory(max_tokens={self.max_tokens!r}, keep_last_turns={self.keep_last_turns!r}, "
            f"summary_model={self._summary_model_spec!r})"
        )

    def budget_for(self, model: Model) -> int:
        """The token budget of a history sent to `model`."""
        if self.max_tokens is not None:
            return self.max_tokens
        window = self.context_window if self.context_window is not None else context_window_of(model)
        return max(1, int(window * self.context_fraction))

    async def fit(
        self,
        messages: list[ModelMessage],
        *,
        model: Model,
        key: str | None = None,
        fallback_store: SummaryStore | None = None,
    ) -> HistoryFit:
        """Fit `messages` to the budget of `model`, summarizing what is evicted; also sets `last_fit`.

        Args:
            messages: The full history; it is not modified.
            model: The model the history is for: its budget and token count, and the default summary model.
            key: The conversation, for the summary store (e.g. a thread id); default `conversation_key`.
            fallback_store: Where the summary is kept when this memory was given no `summary_store` (an agent on a
                stored thread passes the store's [`SQLSummaryStore`][miniagent.store.SQLSummaryStore]).

        Raises:
            UnexpectedModelBehavior: the summary model returned no text.
        """
        count = self._token_counter or token_counter_for(model)
        budget = self.budget_for(model)
        total = count(messages)
        if total <= budget:
            fit = HistoryFit(
                list(messages), budget=budget, tokens_before=total, tokens_after=total, kept=len(messages), evicted=0
            )
            self.last_fit = fit
            return fit
        store = fallback_store if fallback_store is not None and not self._own_summary_store else self.summary_store
        fit = await self._fit(messages, model, count, budget, total, key, store)
        self.last_fit = fit
        return fit

    async def _fit(
        self,
        messages: list[ModelMessage],
        model: Model,
        count: TokenCounter,
        budget: int,
        total: int,
        key: str | None,
        store: SummaryStore,
    ) -> HistoryFit:
        system, units = _split(messages)
        if not units:
            return HistoryFit(
                list(messages), budget=budget, tokens_before=total, tokens_after=total, kept=len(messages), evicted=0
            )
        pinned = self._pinned(messages)
        for unit in units:
            unit.tokens = count(unit.messages)
            unit.pinned = any(i in pinned for i in unit.indices)
        _score(units)
        fixed = count([ModelRequest(list(system))]) if system else 0

        if key is None:
            key = self._conversation_key(messages) if self._conversation_key else "h:" + fingerprint(messages[:1])
        stored = await store.get(key)
        if stored is not None and not _applies(stored, messages):
            stored = None
        covered = set(stored.covered) if stored is not None else set()
        evicted = {k for k, u in enumerate(units) if not u.pinned and all(i in covered for i in u.indices)}
        previous = stored.text if stored is not None and evicted else None

        kept = sum(u.tokens for k, u in enumerate(units) if k not in evicted)
        if previous is not None and fixed + _note_tokens(count, previous) + kept <= budget:
            return self._result(messages, system, units, evicted, previous, count, budget, total)

        reserve = _note_tokens(count, "") + self._summary_tokens(budget)
        new = self._plan(units, evicted, budget, fixed + reserve + kept)
        if not new:
            if previous is not None:
                return self._result(messages, system, units, evicted, previous, count, budget, total)
            return HistoryFit(
                list(messages), budget=budget, tokens_before=total, tokens_after=total, kept=len(messages), evicted=0
            )
        summary_model = self._resolve_summary_model(model)
        window = (
            self.context_window
            if summary_model is model and self.context_window is not None
            else context_window_of(summary_model)
        )
        text, calls, usage = await self._summarize(
            summary_model, previous, [units[k] for k in sorted(new)], budget, window
        )
        evicted |= new
        covered_indices = tuple(sorted(i for k in evicted for i in units[k].indices))
        await store.put(
            key,
            StoredSummary(
                text, message_count=len(messages), covered=covered_indices, fingerprint=fingerprint(messages)
            ),
        )
        fit = self._result(messages, system, units, evicted, text, count, budget, total)
        fit.summary_requests = calls
        fit.summary_usage = usage
        return fit

    def _plan(self, units: list[_Unit], evicted: set[int], budget: int, start: int) -> set[int]:
        """The units to evict now: at the strictest protection level that fits the budget, down to `evict_to`."""
        target = int(budget * self.evict_to)
        chosen: set[int] = set()
        for protected in _protection_levels(units, self.keep_last_turns):
            candidates = sorted(
                (k for k, u in enumerate(units) if k not in evicted and k not in protected and not u.pinned),
                key=lambda k: (units[k].score, k),
            )
            tokens = start
            chosen = set()
            for k in candidates:
                if tokens <= target:
                    break
                chosen.add(k)
                tokens -= units[k].tokens
            if tokens <= budget:
                break
        return chosen

    def _pinned(self, messages: list[ModelMessage]) -> set[int]:
        pin = self.pin
        if pin is None:
            return set()
        if callable(pin):
            return {i for i, message in enumerate(messages) if pin(i, message)}
        return {i for i in pin if 0 <= i < len(messages)}

    def _summary_tokens(self, budget: int) -> int:
        return self.summary_max_tokens if self.summary_max_tokens is not None else max(16, budget // 10)

    def _resolve_summary_model(self, model: Model) -> Model:
        if self._summary_model_spec is None:
            return model
        if self._summary_model is None:
            self._summary_model = infer_model(self._summary_model_spec)
        return self._summary_model

    async def _summarize(
        self, model: Model, previous: str | None, units: list[_Unit], budget: int, window: int
    ) -> tuple[str, int, Usage]:
        """Fold the units into the summary: one request, or one per chunk of half the summary model's window."""
        settings = ModelSettings(max_tokens=self._summary_tokens(budget))
        chunk_chars = max(1, window // 2) * CHARS_PER_TOKEN
        chunks: list[list[ModelMessage]] = [[]]
        size = 0
        for unit in units:
            unit_chars = len(render_transcript(unit.messages))
            if chunks[-1] and size + unit_chars > chunk_chars:
                chunks.append([])
                size = 0
            chunks[-1].extend(unit.messages)
            size += unit_chars
        usage = Usage()
        text = previous
        for chunk in chunks:
            request = ModelRequest(
                [
                    SystemPromptPart(self.summary_instructions),
                    UserPromptPart(summary_prompt(text, render_transcript(chunk))),
                ]
            )
            response = await model.request([request], settings, ModelRequestParameters())
            cost = price_response(response, model.name)
            step = Usage(
                requests=1,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
                cache_read_tokens=response.usage.cache_read_tokens,
                reasoning_tokens=response.usage.reasoning_tokens,
                cost_usd=cost,
            )
            usage.incr(step)
            text = response.text.strip()
            if not text:
                raise UnexpectedModelBehavior(
                    f"The summary model {model.name!r} returned no text for the evicted messages; use another "
                    "`summary_model` or raise `max_tokens` of the working memory."
                )
        assert text is not None
        return text, len(chunks), usage

    def _result(
        self,
        messages: list[ModelMessage],
        system: list[SystemPromptPart],
        units: list[_Unit],
        evicted: set[int],
        summary: str,
        count: TokenCounter,
        budget: int,
        total: int,
    ) -> HistoryFit:
        lead: list[ModelRequestPart] = [*system, UserPromptPart(SUMMARY_NOTE + summary)]
        fitted: list[ModelMessage] = []
        kept = 0
        for k, unit in enumerate(units):
            if k not in evicted:
                fitted.extend(unit.messages)
                kept += len(unit.messages)
        if fitted and isinstance(fitted[0], ModelRequest):
            fitted[0] = ModelRequest([*lead, *fitted[0].parts])
        else:
            fitted.insert(0, ModelRequest(lead))
        return HistoryFit(
            fitted,
            budget=budget,
            tokens_before=total,
            tokens_after=count(fitted),
            kept=kept,
            evicted=sum(len(units[k].indices) for k in evicted),
            summary=summary,
        )


def _split(messages: list[ModelMessage]) -> tuple[list[SystemPromptPart], list[_Unit]]:
    """System prompt parts apart, and the rest cut into units where a cut keeps the history valid."""
    system: list[SystemPromptPart] = []
    units: list[_Unit] = []
    previous: ModelMessage | None = None
    for i, message in enumerate(messages):
        if isinstance(message, ModelRequest):
            parts: list[ModelRequestPart] = [p for p in message.parts if not isinstance(p, SystemPromptPart)]
            system.extend(p for p in message.parts if isinstance(p, SystemPromptPart))
            if not parts:
                continue
            if len(parts) != len(message.parts):
                message = ModelRequest(parts)
        # A request after a response with tool calls answers them: the two stay together.
        joined = (
            units
            and isinstance(message, ModelRequest)
            and isinstance(previous, ModelResponse)
            and bool(previous.tool_calls)
        )
        if joined:
            units[-1].indices.append(i)
            units[-1].messages.append(message)
        else:
            units.append(_Unit([i], [message]))
        previous = message
    return system, units


def _salient(text: str) -> set[str]:
    """Words of 5+ characters and tokens with a digit: what a later mention of a tool result would repeat."""
    return {w for w in (m.lower() for m in _SALIENT.findall(text)) if len(w) >= 5 or any(c.isdigit() for c in w)}


def _score(units: list[_Unit]) -> None:
    """Set each unit's importance (see `WorkingMemory`)."""
    # What each unit's tool results introduced: salient words not seen anywhere in the history before them.
    introduced: list[set[str]] = []
    seen: set[str] = set()
    for unit in units:
        new: set[str] = set()
        for message in unit.messages:
            for part in message.parts:
                words = _salient(_part_text(part))
                if isinstance(part, ToolReturnPart):
                    new |= words - seen
                seen |= words
        introduced.append(new)
    last = max(1, len(units) - 1)
    later: set[str] = set()  # salient words of the model responses after the unit being scored
    for k in range(len(units) - 1, -1, -1):
        unit = units[k]
        requests = [p for m in unit.messages if isinstance(m, ModelRequest) for p in m.parts]
        answered = any(
            isinstance(p, TextPart) and p.content.strip()
            for m in unit.messages
            if isinstance(m, ModelResponse)
            for p in m.parts
        )
        score = _RECENCY_WEIGHT * k / last
        score += _USER_BONUS if any(isinstance(p, UserPromptPart) for p in requests) else 0.0
        score += _ANSWER_BONUS if answered else 0.0
        score += _RETRY_PENALTY if any(isinstance(p, RetryPromptPart) for p in requests) else 0.0
        score += _REFERENCED_BONUS if introduced[k] & later else 0.0
        unit.score = score
        for message in unit.messages:
            if isinstance(message, ModelResponse):
                for rpart in message.parts:
                    later |= _salient(_part_text(rpart))


def _part_text(part: ModelRequestPart | ModelResponsePart) -> str:
    if isinstance(part, ToolReturnPart):
        return part.content_text()
    if isinstance(part, ToolCallPart):
        return part.args_json()
    return part.content


def _protection_levels(units: list[_Unit], keep_last_turns: int) -> Iterator[set[int]]:
    """The units protected from eviction, strictest first: the last N turns, fewer, then the last turn's ends."""
    starts = [k for k, u in enumerate(units) if u.starts_turn]
    last = len(units) - 1
    for n in range(keep_last_turns, 0, -1):
        first = starts[-n] if len(starts) >= n else (starts[0] if starts else last)
        yield set(range(first, len(units)))
    if starts:
        yield {starts[-1], last}
    yield {last}


def _note_tokens(count: TokenCounter, summary: str) -> int:
    return count([ModelRequest([UserPromptPart(SUMMARY_NOTE + summary)])])


def _applies(stored: StoredSummary, messages: list[ModelMessage]) -> bool:
    """Whether the history still starts with the messages the summary was made from."""
    n = stored.message_count
    return 0 < n <= len(messages) and fingerprint(messages[:n]) == stored.fingerprint

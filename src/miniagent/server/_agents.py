"""Which agents a server exposes: given to `create_app`, named by `module:attribute` paths
(`MINIAGENT_SERVER_AGENTS`, `miniagent serve PATH...`), or listed in a TOML file (`--config`).

```toml
[agents]
support = "myapp.agents:support_agent"
sales = "myapp.agents:sales_agent"
```
"""  # noqa: D205

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..agent import Agent
from ..errors import UserError
from ._state import AgentRegistry

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["DEFAULT_AGENT_NAME", "build_passthrough", "build_registry", "load_config", "parse_agent_specs"]

DEFAULT_AGENT_NAME = "default"
"""The name of the agent served when none is configured (the default chat agent on `MINIAGENT_DEFAULT_MODEL`)."""


def parse_agent_specs(specs: str | Iterable[str]) -> list[tuple[str | None, str]]:
    """`[name=]package.module:attribute` items (a comma-separated string or a list) as `(name, path)` pairs."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    pairs: list[tuple[str | None, str]] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        name, sep, path = text.partition("=")
        pairs.append((name.strip(), path.strip()) if sep else (None, text))
    return pairs


def load_config(path: Path) -> list[tuple[str | None, str]]:
    """The `[agents]` table of a TOML file as `(name, path)` pairs.

    Raises:
        UserError: The file cannot be read, is not TOML, or has no `[agents]` table of strings.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"Cannot read the server config {str(path)!r} ({exc}).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"The server config {str(path)!r} is not valid TOML ({exc}).") from exc
    agents = data.get("agents")
    if not isinstance(agents, dict) or not agents:
        raise UserError(
            f'The server config {str(path)!r} needs an [agents] table, e.g. `support = "myapp.agents:agent"`.'
        )
    pairs: list[tuple[str | None, str]] = []
    for name, target in agents.items():
        if not isinstance(target, str):
            raise UserError(f"In {str(path)!r}, agents.{name} must be a 'package.module:attribute' string.")
        pairs.append((name, target))
    return pairs


def _load(path: str) -> Agent[Any, Any]:
    from ..cli._chat import load_agent  # the loader `miniagent chat --agent` uses

    try:
        return load_agent(path)
    except UserError as exc:
        raise UserError(str(exc).replace("--agent", "the served agent")) from exc


def build_registry(
    agents: Mapping[str, Agent[Any, Any]] | Sequence[Agent[Any, Any]] | None, settings: Settings
) -> AgentRegistry:
    """The served agents: `agents` when given, else `server_config`'s, else `server_agents`', else the default one."""
    if agents is not None:
        if isinstance(agents, Agent):
            agents = [agents]
        registry = AgentRegistry(agents)
        if not len(registry):
            raise UserError("create_app(agents=...) is empty: pass at least one Agent, or None for the default.")
        return registry
    pairs: list[tuple[str | None, str]] = []
    if settings.server_config is not None:
        pairs += load_config(settings.server_config)
    if settings.server_agents:
        pairs += parse_agent_specs(settings.server_agents)
    registry = AgentRegistry()
    for name, path in pairs:
        registry.add(_load(path), name=name)
    if not len(registry):
        registry.add(Agent(model=settings.default_model, name=DEFAULT_AGENT_NAME))
    return registry


def build_passthrough(settings: Settings, agents: AgentRegistry) -> dict[str, Agent[Any, Any]]:
    """The pass-through models of `settings.server_passthrough_models`: a plain agent on each, by its model string.

    Each model is built now, through the model registry with these settings, so a string that names no provider,
    a provider whose extra is missing or a model without its API key stops the server at start-up.

    Raises:
        UserError: A model string is a served agent's name, or cannot be resolved (the message says why).
    """
    from ..models import registry as models

    served: dict[str, Agent[Any, Any]] = {}
    for spec in settings.server_passthrough_models:
        if spec in agents:
            raise UserError(
                f"The pass-through model {spec!r} has the name of a served agent: serve the agent under another "
                f"name (`name=package.module:attribute`) or remove {spec!r} from MINIAGENT_SERVER_PASSTHROUGH_MODELS."
            )
        try:
            model = models.resolve(spec, settings)
        except UserError as exc:
            raise UserError(
                f"The pass-through model {spec!r} (MINIAGENT_SERVER_PASSTHROUGH_MODELS) cannot be served: {exc}"
            ) from exc
        served[spec] = Agent(model, name=spec)
    return served

"""What request handlers share: the caller, the served agents and the app's state.

[`Principal`][miniagent.server.Principal] is the authenticated caller, [`AgentRegistry`][miniagent.server.AgentRegistry]
the served agents, [`ServerState`][miniagent.server.ServerState] the app's state (`app.state.miniagent`).

The state is built by `create_app` and filled in by the app's lifespan: the store is opened (and interrupted runs
recovered) at start-up, then the optional parts are set up, each by the module that owns it:

- `miniagent.server.native` may define `create_run_manager(state) -> RunManager` (background runs); the manager's
  `aclose()` is awaited at shutdown (finish or mark interrupted its runs).
- `miniagent.server._limits` may define `async setup_limits(state) -> None` (sets `state.limiter`) and
  `enforce_limits` (a dependency applied to the API routers).
- `state.redis` is a `redis.asyncio.Redis` client when `redis_url` is configured (closed at shutdown).
- Extra async callables appended to `state.on_shutdown` are awaited at shutdown, last added first, after the run
  manager's `aclose()` (so they see the end of every run) and before the store and Redis close.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from .._utils import SYSTEM_CLOCK, Clock
from ..agent import Agent
from ..errors import UserError
from ._errors import ApiError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..settings import Settings
    from ..store import SQLStore
    from ._auth import Authenticator
    from ._probes import HealthProbes

__all__ = ["SCOPES", "AgentRegistry", "Principal", "RunManager", "ServerState"]

SCOPES = ("chat", "threads", "admin")
"""The scopes the server knows: `chat` (OpenAI endpoints and runs), `threads` (native API), `admin` (key management;
it implies the others)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a user of a tenant, with scopes, authenticated by an API key or a JWT."""

    tenant_id: str
    """The tenant every query of the request is scoped to."""
    user_id: str
    """The user (an API key's user, a token's `sub`)."""
    scopes: frozenset[str]
    """What the request may do."""
    via: Literal["api-key", "jwt"]
    """How it was authenticated."""
    _: KW_ONLY
    key_id: str | None = None
    """The API key's id (`None` for a JWT)."""

    def has(self, scope: str) -> bool:
        """Whether the principal holds `scope` (`admin` implies every scope)."""
        return scope in self.scopes or "admin" in self.scopes


class AgentRegistry:
    """The agents a server exposes, by name.

    Example:
        ```python
        from miniagent import Agent
        from miniagent.server import AgentRegistry
        from miniagent.testing import EchoModel

        registry = AgentRegistry([Agent(EchoModel(), name="echo")])
        assert registry.names() == ["echo"] and registry.get("echo").name == "echo"
        ```
    """

    def __init__(self, agents: Mapping[str, Agent[Any, Any]] | Iterable[Agent[Any, Any]] = ()) -> None:
        self._agents: dict[str, Agent[Any, Any]] = {}
        pairs: list[tuple[object, object]] = (
            list(agents.items()) if isinstance(agents, Mapping) else [(getattr(a, "name", None), a) for a in agents]
        )  # typed callers pass Agents; a config or an untyped caller may not
        for name, agent in pairs:
            if not isinstance(agent, Agent):
                raise UserError(f"Served agents must be miniagent Agents; {name!r} is {type(agent).__name__}.")
            self.add(agent, name=name if isinstance(name, str) else None)

    def add(self, agent: Agent[Any, Any], *, name: str | None = None) -> None:
        """Serve `agent` under `name` (default: `agent.name`).

        Raises:
            UserError: The name is empty or already taken.
        """
        key: object = name if name is not None else agent.name
        if not isinstance(key, str) or not key.strip() or len(key) > 200:
            raise UserError(f"An agent's name must be a non-empty string of at most 200 characters, got {key!r}.")
        if key in self._agents:
            raise UserError(f"Two served agents are called {key!r}: give one another name (`name=agent`).")
        self._agents[key] = agent

    def get(self, name: str) -> Agent[Any, Any]:
        """The agent called `name`.

        Raises:
            ApiError: 404 `agent_not_found`, listing the available names.
        """
        agent = self._agents.get(name)
        if agent is None:
            names = self.names()
            raise ApiError(
                404,
                "agent_not_found",
                f"No agent {name!r}; available: {', '.join(repr(n) for n in names) or 'none'}.",
                extra={"available": names},
            )
        return agent

    def names(self) -> list[str]:
        """The served agents' names, in registration order."""
        return list(self._agents)

    def __contains__(self, name: object) -> bool:
        return name in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def __repr__(self) -> str:
        return f"AgentRegistry({self.names()!r})"


@runtime_checkable
class RunManager(Protocol):
    """What the app's lifespan needs of the background run manager (`state.runs`)."""

    async def aclose(self) -> None:
        """Finish the runs in flight, or record them `interrupted` so they can be resumed; called at shutdown."""
        ...


@dataclass(eq=False)
class ServerState:
    """Everything the app shares, at `app.state.miniagent` (handlers get it through `StateDep`)."""

    settings: Settings
    """The server's settings."""
    agents: AgentRegistry
    """The served agents."""
    _: KW_ONLY
    auth: Authenticator
    """Verifies API keys and JWTs."""
    health: HealthProbes
    """Runs the `/healthz` and `/readyz` checks."""
    metrics_registry: CollectorRegistry
    """The Prometheus registry `/metrics` serves."""
    clock: Clock = SYSTEM_CLOCK
    """Monotonic time for caches (tests inject a `ManualClock`)."""
    limiter: Any | None = None
    """The rate limiter and budgets (set by `miniagent.server._limits.setup_limits`), or `None`."""
    runs: Any | None = None
    """The background run manager (from `miniagent.server.native.create_run_manager`), or `None`."""
    redis: Any | None = None
    """A `redis.asyncio.Redis` client when `redis_url` is set, else `None`."""
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Awaited at shutdown, last added first (before the store closes)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Room for the server's parts to keep their own objects, keyed by a name of theirs."""
    passthrough: dict[str, Agent[Any, Any]] = field(default_factory=dict)
    """The pass-through models of the OpenAI-compatible API (`server_passthrough_models`): a plain agent on each
    model, keyed by its model string; the native API does not serve them."""
    _store: SQLStore | None = None

    @property
    def store(self) -> SQLStore:
        """The store (opened by the app's lifespan)."""
        if self._store is None:
            raise RuntimeError(
                "The server's store is not open: the app's lifespan has not run (serve it with uvicorn, or use "
                "`with TestClient(app)`)."
            )
        return self._store

    @store.setter
    def store(self, value: SQLStore | None) -> None:
        self._store = value

    @property
    def started(self) -> bool:
        """Whether the lifespan opened the store."""
        return self._store is not None

    def agent_names(self) -> Sequence[str]:
        """The served agents' names."""
        return self.agents.names()

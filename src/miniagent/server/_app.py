"""The app factory: settings, agents and auth made up front; the store, Redis, limits and the run manager opened by
the lifespan; routers of the OpenAI-compatible API (`/v1`), the native API (`/api/v1`), the admin API and probes.
"""  # noqa: D205

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI

from .._utils import SYSTEM_CLOCK, Clock
from .._version import __version__
from ..agent import Agent
from ..errors import UserError
from ._agents import build_passthrough, build_registry
from ._auth import Authenticator
from ._errors import install_error_handlers
from ._middleware import EdgeMiddleware, http_metrics
from ._pepper import resolve_pepper
from ._probes import HealthProbes
from ._routes import ErrorResponse, admin_router, health_router
from ._state import ServerState

if TYPE_CHECKING:
    import httpx
    from prometheus_client import CollectorRegistry

    from ..observability import CheckRegistry
    from ..settings import Settings
    from ..store import SQLStore

__all__ = ["build_app", "serve_factory"]

_DESCRIPTION = """miniagent's agents over HTTP.

- `/v1`: the OpenAI-compatible API (`chat/completions`, `models`): any OpenAI SDK is a client.
- `/api/v1`: the native API: threads, branches, runs, event streams (SSE, WebSocket), feedback, memories, usage.
- `/api/v1/admin`: API keys (`admin` scope).

Authenticate with `Authorization: Bearer <API key or JWT>` (or `X-API-Key`). Errors are
`{"error": {"code", "message", "type"}}` (OpenAI's shape under `/v1`).
"""


def _optional(module: str) -> Any | None:
    """Import a part of the server that another module provides, or `None` while it does not exist."""
    try:
        return importlib.import_module(module, __package__)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.lstrip(".") in exc.name:
            return None
        raise


def _access_logger(settings: Settings) -> Callable[[dict[str, Any]], None]:
    import structlog

    from ..observability import configured, hash_user_id

    log = structlog.get_logger("miniagent.server")
    salt = settings.user_id_salt.get_secret_value().encode() if settings.user_id_salt is not None else b"miniagent"
    mode = settings.log_user_id

    def access(fields: dict[str, Any]) -> None:
        if configured() is None:  # logs are on once `miniagent.observability.configure()` ran (`miniagent serve`)
            return
        user = fields.get("user_id")
        if user is not None:
            fields["user_id"] = None if mode == "omit" else user if mode == "raw" else hash_user_id(user, salt)
        log.info("http_request", **{k: v for k, v in fields.items() if v is not None})

    return access


def _document_security(app: FastAPI, *, limited: bool) -> None:
    """OpenAPI: declare the bearer and `X-API-Key` schemes, the error body, and the 401/403 answers of the
    authenticated routes (every route under `/v1` and `/api/v1`: the probes and `/metrics` are open), their 503 and
    (with rate limits) 429.
    """  # noqa: D205
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {}).update(
            {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (`mk_...`) or a JWT."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        )
        schemas = components.setdefault("schemas", {})
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, value in error_schema.pop("$defs", {}).items():
            schemas.setdefault(name, value)
        schemas.setdefault("ErrorResponse", error_schema)
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path, item in schema.get("paths", {}).items():
            authenticated = path.startswith(("/v1/", "/api/v1/"))
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if "422" in responses:
                    responses["422"] = {"description": "Invalid request", **error}
                if "requestBody" in operation:  # the edge refuses a body over MINIAGENT_MAX_REQUEST_BYTES
                    responses.setdefault("413", {"description": "The request body is too large", **error})
                if authenticated:
                    operation.setdefault("security", [{"bearer": []}, {"apiKey": []}])
                    responses.setdefault("401", {"description": "Missing or invalid credentials", **error})
                    responses.setdefault("403", {"description": "The credentials lack a scope", **error})
                    # Authentication reads the store (and may fetch the issuer's keys): either can be down.
                    responses.setdefault("503", {"description": "The store or the sign-in keys are unavailable",
                                                 **error})  # fmt: skip
                    if limited:
                        responses.setdefault("429", {"description": "A rate limit or budget was reached", **error})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


def build_app(
    settings: Settings | None = None,
    *,
    agents: Mapping[str, Agent[Any, Any]] | Sequence[Agent[Any, Any]] | None = None,
    store: SQLStore | None = None,
    redis_url: str | None = None,
    clock: Clock | None = None,
    wall_time: Callable[[], float] | None = None,
    health_registry: CheckRegistry | None = None,
    metrics_registry: CollectorRegistry | None = None,
    jwks_client: httpx.AsyncClient | None = None,
    observability: bool = False,
) -> FastAPI:
    """Build the app (see [`create_app`][miniagent.server.create_app])."""
    from ..observability import get_registry
    from ..settings import get_settings
    from ..store import default_database_url

    settings = settings if settings is not None else get_settings()
    clock = clock or SYSTEM_CLOCK
    registry = build_registry(agents, settings)
    passthrough = build_passthrough(settings, registry)
    database_url = store.url if store is not None else default_database_url(settings)
    pepper = resolve_pepper(settings, database_url)
    jwt_verifier = None
    if settings.jwt_issuer or settings.jwt_jwks_url:
        from ._jwt import JwksCache, JwtVerifier

        if not settings.jwt_issuer or not settings.jwt_audience:
            raise UserError("JWT sign-in needs MINIAGENT_JWT_ISSUER and MINIAGENT_JWT_AUDIENCE (the token's iss/aud).")
        jwks = JwksCache(
            settings.jwt_jwks_url, issuer=settings.jwt_issuer, ttl_s=settings.jwks_cache_s, clock=clock,
            client=jwks_client,
        )  # fmt: skip
        jwt_verifier = JwtVerifier(
            jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            tenant_claim=settings.jwt_tenant_claim,
            leeway_s=settings.jwt_leeway_s,
            wall_time=wall_time or time.time,
        )
    metrics = metrics_registry if metrics_registry is not None else get_registry()
    state = ServerState(
        settings,
        registry,
        auth=Authenticator(pepper=pepper, jwt=jwt_verifier, cache_s=settings.api_key_cache_s, clock=clock),
        health=HealthProbes(settings, registry=health_registry, cache_s=settings.readyz_cache_s, clock=clock),
        metrics_registry=metrics,
        clock=clock,
        passthrough=passthrough,
    )
    redis_url = redis_url or settings.redis_url

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(state, store=store, database_url=database_url, redis_url=redis_url,
                            observability=observability):  # fmt: skip
            yield

    app = FastAPI(
        title="miniagent",
        version=__version__,
        description=_DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.miniagent = state
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(admin_router)
    limits = _optional("._limits")
    api_dependencies = [Depends(limits.enforce_limits)] if limits is not None else []  # S4's rate limits and budgets
    for module in ("._openai", ".native"):  # the OpenAI-compatible API, the native API
        part = _optional(module)
        router: APIRouter | None = getattr(part, "router", None) if part is not None else None
        if router is not None:
            app.include_router(router, dependencies=api_dependencies)
        ws_router: APIRouter | None = getattr(part, "ws_router", None) if part is not None else None
        if ws_router is not None:  # WebSockets authenticate and apply the limits per message themselves
            app.include_router(ws_router)
    _document_security(app, limited=limits is not None)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        wildcard = settings.cors_origins == ["*"]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID", "Last-Event-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
                            "X-RateLimit-Reset"],
            max_age=600,
        )  # fmt: skip
    limit_headers = getattr(limits, "LimitHeadersMiddleware", None) if limits is not None else None
    if limit_headers is not None:  # `X-RateLimit-*` on answers the endpoints build themselves
        app.add_middleware(limit_headers)
    app.add_middleware(
        EdgeMiddleware,
        max_request_bytes=settings.max_request_bytes,
        histogram=http_metrics(metrics),
        access_log=_access_logger(settings),
    )
    return app


@asynccontextmanager
async def _running(
    state: ServerState, *, store: SQLStore | None, database_url: str, redis_url: str | None, observability: bool
) -> AsyncIterator[None]:
    """Open what the app needs, and close it all (in reverse) at shutdown."""
    from contextlib import AsyncExitStack

    from ..store import SQLStore

    settings = state.settings
    async with AsyncExitStack() as stack:
        if store is None:
            opened = await SQLStore.open(database_url, settings=settings)
            stack.push_async_callback(opened.close)
            state.store = opened
        else:
            state.store = store
        if observability:  # after the store: its migrations' log lines are not the server's
            from ..observability import configure

            stack.callback(configure(settings=settings).close)
            # `/readyz` reads the migration level through Alembic, which logs at INFO each time: not request news.
            alembic = logging.getLogger("alembic")
            stack.callback(alembic.setLevel, alembic.level)
            alembic.setLevel(logging.WARNING)
        stack.callback(setattr, state, "store", None)
        await state.store.recover_interrupted()
        stack.push_async_callback(state.auth.aclose)
        if redis_url:
            import redis.asyncio as aioredis

            client = aioredis.from_url(redis_url)
            state.redis = client
            stack.push_async_callback(client.aclose)
        if settings.metrics_port is not None:
            from ..observability import start_metrics_server

            server = start_metrics_server(settings.metrics_port, registry=state.metrics_registry)
            state.extras["metrics_server"] = server
            stack.callback(server.close)
        limits = _optional("._limits")
        setup = getattr(limits, "setup_limits", None) if limits is not None else None
        if setup is not None:
            await setup(state)

        async def shutdown_hooks() -> None:
            for hook in reversed(state.on_shutdown):
                await hook()

        # Pushed before the run manager's `aclose`, so it runs after it: runs that end during the shutdown (within
        # the grace period, or interrupted) emit their last events, and the limits' hook then charges their usage
        # before its limiter (and Redis, below) closes.
        stack.push_async_callback(shutdown_hooks)
        native = _optional(".native")
        create_run_manager = getattr(native, "create_run_manager", None) if native is not None else None
        if create_run_manager is not None:
            state.runs = create_run_manager(state)
            stack.push_async_callback(state.runs.aclose)
        setup_queue = getattr(native, "setup_queue", None) if native is not None else None
        if setup_queue is not None and state.runs is not None:
            await setup_queue(state, stack)  # its worker's shutdown runs before the run manager's
        yield


def serve_factory() -> FastAPI:
    """The app `miniagent serve` runs (one per worker): settings from the environment, logs and metrics on."""
    return build_app(observability=True)

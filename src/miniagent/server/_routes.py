"""The server's own routes: `/healthz`, `/readyz`, `/metrics` and the admin API of API keys
(`/api/v1/admin/keys`, `admin` scope).
"""  # noqa: D205

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._deps import PrincipalDep, StateDep, require_scope
from ._errors import ApiError
from ._state import SCOPES

__all__ = ["ApiKeyCreated", "ApiKeyList", "ApiKeyOut", "CreateApiKey", "ErrorResponse", "HealthOut", "admin_router",
           "health_router"]  # fmt: skip


class ErrorDetail(BaseModel):
    """An error: a machine-readable code, a human message and its type."""

    code: str = Field(description="Machine-readable, e.g. `agent_not_found`, `unauthorized`, `invalid_request`.")
    message: str = Field(description="What went wrong and what to do.")
    type: str = Field(description="The error's family, e.g. `invalid_request_error`, `authentication_error`.")
    model_config = {"extra": "allow"}


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class CheckOut(BaseModel):
    """One health check's outcome."""

    name: str
    kind: str
    critical: bool
    status: Literal["ok", "warn", "fail", "skip"]
    detail: str
    fix: str | None = None
    duration_s: float


class HealthOut(BaseModel):
    """A probe's report: `fail` when a critical check failed."""

    status: Literal["ok", "warn", "fail"]
    ok: bool
    checks: list[CheckOut]


health_router = APIRouter(tags=["health"])

_PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthOut, "description": "A critical check failed."}
}


@health_router.get("/healthz", response_model=HealthOut, responses=_PROBE_RESPONSES, summary="Liveness probe")
async def healthz(state: StateDep) -> Response:
    """The process is up and its liveness checks pass (no dependency is called: use `/readyz` for those)."""
    report = await state.health.liveness()
    return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)


@health_router.get("/readyz", response_model=HealthOut, responses=_PROBE_RESPONSES, summary="Readiness probe")
async def readyz(state: StateDep) -> Response:
    """The server can serve: the readiness checks of `miniagent doctor --readiness` pass (database, migrations,
    disk...; the model check is left out: it costs a provider request). Cached for `readyz_cache_s` seconds.
    """  # noqa: D205
    report = await state.health.readiness()
    return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)


@health_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: StateDep) -> Response:
    """Prometheus metrics (text format)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


# ---- admin: API keys ---------------------------------------------------------------------------------------


class CreateApiKey(BaseModel):
    """A new API key of the admin's tenant."""

    user_id: str = Field(min_length=1, max_length=64, description="The user the key acts as.")
    scopes: list[Literal["chat", "threads", "admin"]] = Field(
        min_length=1, description="What the key may do: `chat`, `threads`, `admin` (implies all)."
    )
    name: str | None = Field(default=None, max_length=200, description="A label for people.")
    expires_days: float | None = Field(default=None, gt=0, le=36500, description="Days until it expires.")
    model_config = {"extra": "forbid"}


class ApiKeyOut(BaseModel):
    """An API key, without its secret."""

    id: str
    tenant_id: str
    user_id: str
    name: str | None
    prefix: str = Field(description="The public start of the secret, e.g. `mk_0123456789ab`.")
    scopes: list[str]
    state: Literal["active", "expired", "revoked"]
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None


class ApiKeyCreated(BaseModel):
    """A created key and its secret, shown this once."""

    key: ApiKeyOut
    secret: str = Field(description="`Authorization: Bearer <secret>`; it is not stored and cannot be shown again.")


class ApiKeyList(BaseModel):
    """The tenant's keys, newest first."""

    data: list[ApiKeyOut]


def _out(info: Any, now: dt.datetime) -> ApiKeyOut:
    return ApiKeyOut(
        id=info.id,
        tenant_id=info.tenant_id,
        user_id=info.user_id,
        name=info.name,
        prefix=info.prefix,
        scopes=list(info.scopes),
        state=info.state(now),
        created_at=info.created_at,
        expires_at=info.expires_at,
        revoked_at=info.revoked_at,
        last_used_at=info.last_used_at,
    )


admin_router = APIRouter(prefix="/api/v1/admin", tags=["admin"], dependencies=[Depends(require_scope("admin"))])


@admin_router.post("/keys", status_code=201, response_model=ApiKeyCreated, summary="Create an API key")
async def create_key(body: CreateApiKey, principal: PrincipalDep, state: StateDep) -> ApiKeyCreated:
    """Create a key for a user of the admin's tenant; the secret is in this answer only."""
    store = state.store
    expires = store.now() + dt.timedelta(days=body.expires_days) if body.expires_days is not None else None
    info, secret = await store.create_api_key(
        pepper=state.auth.pepper,
        tenant_id=principal.tenant_id,
        user_id=body.user_id,
        scopes=[s for s in SCOPES if s in body.scopes],
        name=body.name,
        expires_at=expires,
    )
    return ApiKeyCreated(key=_out(info, store.now()), secret=secret)


@admin_router.get("/keys", response_model=ApiKeyList, summary="List API keys")
async def list_keys(
    principal: PrincipalDep,
    state: StateDep,
    user_id: Annotated[str | None, Query(max_length=64, description="Only this user's keys.")] = None,
) -> ApiKeyList:
    """The keys of the admin's tenant (never their secrets), newest first."""
    store = state.store
    keys = await store.list_api_keys(tenant_id=principal.tenant_id, user_id=user_id)
    now = store.now()
    return ApiKeyList(data=[_out(k, now) for k in keys])


@admin_router.delete(
    "/keys/{key_id}",
    response_model=ApiKeyOut,
    responses={404: {"model": ErrorResponse, "description": "No such key in this tenant."}},
    summary="Revoke an API key",
)
async def revoke_key(key_id: str, principal: PrincipalDep, state: StateDep) -> ApiKeyOut:
    """Revoke a key of the admin's tenant; it stops working at once on this server."""
    info = await state.store.revoke_api_key(key_id[:64], tenant_id=principal.tenant_id)
    if info is None:
        raise ApiError(404, "key_not_found", f"No API key {key_id[:64]!r} in this tenant: check the id (GET keys).")
    state.auth.forget(info.id)
    return _out(info, state.store.now())

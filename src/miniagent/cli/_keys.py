"""`miniagent keys create|list|revoke`: the server's API keys, in the configured store.

The secret of a new key is printed once; the store keeps only its HMAC (with `MINIAGENT_SERVER_PEPPER`, or the
embedded store's generated pepper), so a lost secret cannot be recovered: revoke the key and create another.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from ..store import ApiKeyInfo, SQLStore

__all__ = ["keys_app"]

_T = TypeVar("_T")

keys_app = typer.Typer(
    name="keys",
    help="API keys of `miniagent serve`: create (the secret is shown once), list, revoke.",
    no_args_is_help=True,
)

_KNOWN_SCOPES = ("chat", "threads", "admin")


def _with_store(action: Callable[[SQLStore, bytes], Awaitable[_T]]) -> _T:
    import anyio

    from ..errors import MiniAgentError
    from ..server._pepper import resolve_pepper
    from ..settings import get_settings
    from ..store import SQLStore, default_database_url

    settings = get_settings()

    async def go() -> _T:
        pepper = resolve_pepper(settings, default_database_url(settings))
        store = await SQLStore.open(settings=settings)
        try:
            return await action(store, pepper)
        finally:
            await store.close()

    try:
        return anyio.run(go)
    except MiniAgentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in scopes if s not in _KNOWN_SCOPES]
    if not scopes or unknown:
        raise typer.BadParameter(
            f"{text!r}: use a comma-separated list of {', '.join(_KNOWN_SCOPES)} (e.g. 'chat,threads').",
            param_hint="--scopes",
        )
    return scopes


def _row(info: ApiKeyInfo, now: dt.datetime) -> dict[str, object]:
    return {
        "id": info.id,
        "prefix": info.prefix,
        "tenant": info.tenant_id,
        "user": info.user_id,
        "name": info.name,
        "scopes": list(info.scopes),
        "state": info.state(now),
        "created_at": info.created_at.isoformat(),
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "last_used_at": info.last_used_at.isoformat() if info.last_used_at else None,
    }


@keys_app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", "-u", help="The user the key acts as.")],
    scopes: Annotated[
        str, typer.Option("--scopes", "-s", help="Comma-separated: chat (OpenAI API, runs), threads, admin.")
    ] = "chat",
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="The tenant (default: MINIAGENT_TENANT_ID).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="A label, e.g. 'ci' or 'alice laptop'.")] = None,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", min=0.001, help="Days until it stops working (default: never).")
    ] = None,
) -> None:
    """Create a key and print its secret (shown this once)."""
    chosen = _scopes(scopes)

    async def go(store: SQLStore, pepper: bytes) -> tuple[ApiKeyInfo, str]:
        expires = store.now() + dt.timedelta(days=expires_days) if expires_days is not None else None
        return await store.create_api_key(
            pepper=pepper, user_id=user, tenant_id=tenant, scopes=chosen, name=name, expires_at=expires
        )

    info, secret = _with_store(go)
    typer.echo(f"created key {info.id} ({info.prefix}) for user {info.user_id!r} of tenant {info.tenant_id!r}")
    typer.echo(
        f"scopes: {', '.join(info.scopes)}" + (f"; expires {info.expires_at.isoformat()}" if info.expires_at else "")
    )
    typer.echo("secret (shown once, keep it safe):")
    typer.echo(secret)


@keys_app.command("list")
def list_keys(
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="The tenant (default: MINIAGENT_TENANT_ID).")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """List the tenant's keys (never their secrets), newest first."""

    async def go(store: SQLStore, pepper: bytes) -> tuple[list[ApiKeyInfo], dt.datetime]:
        return await store.list_api_keys(tenant_id=tenant, user_id=user), store.now()

    keys, now = _with_store(go)
    if as_json:
        for info in keys:
            typer.echo(json.dumps(_row(info, now)))
        return
    if not keys:
        typer.echo("(no API keys: `miniagent keys create --user NAME --scopes chat`)")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "prefix", "user", "name", "scopes", "state", "expires", "last used")
    for info in keys:
        table.add_row(
            info.id,
            info.prefix,
            info.user_id,
            info.name or "-",
            ",".join(info.scopes),
            info.state(now),
            info.expires_at.strftime("%Y-%m-%d %H:%M") if info.expires_at else "never",
            info.last_used_at.strftime("%Y-%m-%d %H:%M") if info.last_used_at else "never",
        )
    Console(width=200).print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (`miniagent keys list`).")],
    tenant: Annotated[
        str | None, typer.Option("--tenant", "-t", help="The tenant (default: MINIAGENT_TENANT_ID).")
    ] = None,
) -> None:
    """Revoke a key for good (a running server stops accepting it within `api_key_cache_s`)."""

    async def go(store: SQLStore, pepper: bytes) -> ApiKeyInfo | None:
        return await store.revoke_api_key(key_id, tenant_id=tenant)

    info = _with_store(go)
    if info is None:
        typer.echo(f"error: no API key {key_id!r} in this tenant; `miniagent keys list` shows them.", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked key {info.id} ({info.prefix})")

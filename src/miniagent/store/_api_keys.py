"""API keys of the server: a secret shown once, kept only as its HMAC-SHA256 (keyed by the server's pepper).

Each key has scopes, an optional expiry and can be revoked.

A secret looks like `mk_0123456789ab_<43 random characters>`: its first part (`mk_` and 12 hex digits, the key's
`prefix`) finds the row, the HMAC of the whole secret is compared in constant time (`hmac.compare_digest`).
[`ApiKeysMixin`][miniagent.store._api_keys.ApiKeysMixin] gives [`SQLStore`][miniagent.store.SQLStore] the methods.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Literal

from sqlalchemy import select

from ..errors import UserError
from ._base import Now, traced
from ._models import ApiKeyRow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["API_KEY_PREFIX", "ApiKeyInfo", "ApiKeyState", "ApiKeysMixin", "api_key_hash"]

API_KEY_PREFIX = "mk_"
"""How every API key secret starts."""

ApiKeyState = Literal["active", "expired", "revoked"]
"""Whether a key is usable now: `active`, or why not."""

_SECRET = re.compile(r"^mk_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")
_SCOPE = re.compile(r"^[a-z][a-z0-9:_.-]{0,63}$")
_DUMMY_HASH = "0" * 64


def api_key_hash(secret: str, pepper: bytes) -> str:
    """The hex HMAC-SHA256 of `secret` keyed with the server's `pepper`: what the store keeps instead of it."""
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as listings show it: everything but its secret (which is never stored)."""

    id: str
    """The key's id (what `revoke_api_key` takes)."""
    _: KW_ONLY
    tenant_id: str
    """The tenant its requests act in."""
    user_id: str
    """The user its requests act as."""
    name: str | None
    """A label for people, e.g. `ci` or `alice laptop`."""
    prefix: str
    """The public start of the secret (`mk_` and 12 hex digits), to recognise a key in listings and logs."""
    scopes: tuple[str, ...]
    """What it may do, e.g. `("chat", "threads")`; `admin` implies every scope."""
    created_at: dt.datetime
    """When it was created."""
    expires_at: dt.datetime | None = None
    """When it stops working; `None` means never."""
    revoked_at: dt.datetime | None = None
    """When it was revoked, if it was."""
    last_used_at: dt.datetime | None = None
    """When it last authenticated a request (updated at most about once a minute)."""

    def state(self, now: dt.datetime) -> ApiKeyState:
        """`revoked`, `expired` (at `now`) or `active`."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    created = _aware(row.created_at)
    assert created is not None
    return ApiKeyInfo(
        row.id,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        scopes=tuple(str(s) for s in row.scopes or ()),
        created_at=created,
        expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at),
        last_used_at=_aware(row.last_used_at),
    )


def _check_pepper(pepper: object) -> bytes:
    if not isinstance(pepper, bytes) or len(pepper) < 16:
        raise UserError(
            "The API key pepper must be at least 16 bytes: set MINIAGENT_SERVER_PEPPER to a long random string "
            '(e.g. `python -c "import secrets; print(secrets.token_urlsafe(32))"`).'
        )
    return pepper


def _check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(scopes, str):
        raise UserError(f"API key scopes are a list of names, not one string: use [{scopes!r}].")
    result = tuple(dict.fromkeys(scopes))
    if not result:
        raise UserError("An API key needs at least one scope, e.g. 'chat'.")
    items: tuple[object, ...] = result  # typed callers pass strings; the CLI and HTTP bodies are checked here
    for scope in items:
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise UserError(f"Invalid scope {scope!r}: use lowercase names such as 'chat', 'threads' or 'admin'.")
    return result


def _check_owner(tenant_id: object, user_id: object) -> None:
    for what, value in (("tenant", tenant_id), ("user", user_id)):
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            raise UserError(
                f"An API key's {what} id must be a non-empty string of at most 64 characters, got {value!r}."
            )


class ApiKeysMixin:
    """The API key methods of [`SQLStore`][miniagent.store.SQLStore]; each one is one transaction."""

    if TYPE_CHECKING:
        tenant_id: str
        now: Now

        def _session(self) -> AbstractAsyncContextManager[AsyncSession]: ...

        async def _ensure_user(self, session: AsyncSession, tenant_id: str, user_id: str) -> None: ...

    @traced("create_api_key")
    async def create_api_key(
        self,
        *,
        pepper: bytes,
        user_id: str,
        scopes: Iterable[str],
        tenant_id: str | None = None,
        name: str | None = None,
        expires_at: dt.datetime | None = None,
    ) -> tuple[ApiKeyInfo, str]:
        """Create a key for `user_id` in `tenant_id` (default: the store's); returns it and its secret.

        The secret is returned once and never stored: only its HMAC-SHA256 keyed with `pepper` is.

        Args:
            pepper: The server's secret HMAC key (`MINIAGENT_SERVER_PEPPER`), at least 16 bytes.
            user_id: The user the key acts as (created if new).
            scopes: What the key may do, e.g. `["chat", "threads"]`.
            tenant_id: The tenant it acts in (default: the store's).
            name: A label for people.
            expires_at: When it stops working (timezone-aware); `None` means never.

        Raises:
            UserError: An argument is invalid (the message says which).
        """
        key = _check_pepper(pepper)
        tenant = tenant_id or self.tenant_id
        _check_owner(tenant, user_id)
        checked = _check_scopes(scopes)
        label: object = name
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise UserError(f"An API key's name is a string of at most 200 characters, got {name!r}.")
        expiry: object = expires_at
        if expiry is not None and (not isinstance(expiry, dt.datetime) or expiry.tzinfo is None):
            raise UserError(f"expires_at must be a timezone-aware datetime, got {expires_at!r}.")
        public = secrets.token_hex(6)
        secret = f"{API_KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
        now = self.now()
        async with self._session() as session:
            await self._ensure_user(session, tenant, user_id)
            row = ApiKeyRow(
                id=uuid.uuid4().hex,
                tenant_id=tenant,
                user_id=user_id,
                name=name,
                prefix=f"{API_KEY_PREFIX}{public}",
                hash=api_key_hash(secret, key),
                scopes=list(checked),
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                last_used_at=None,
            )
            session.add(row)
        return _info(row), secret

    @traced("verify_api_key")
    async def verify_api_key(self, secret: str, *, pepper: bytes) -> ApiKeyInfo | None:
        """The key whose secret this is, or `None` for an unknown or malformed secret.

        A key that is found is returned even when expired or revoked: check
        [`ApiKeyInfo.state`][miniagent.store.ApiKeyInfo.state] (so a caller can say why it is refused).
        """
        key = _check_pepper(pepper)
        given: object = secret
        text = given if isinstance(given, str) else ""
        match = _SECRET.match(text)
        digest = api_key_hash(text, key)
        if match is None:
            hmac.compare_digest(digest, _DUMMY_HASH)  # the same work as a found key
            return None
        async with self._session() as session:
            row = await session.scalar(select(ApiKeyRow).where(ApiKeyRow.prefix == f"{API_KEY_PREFIX}{match[1]}"))
            if not hmac.compare_digest(digest, row.hash if row is not None else _DUMMY_HASH) or row is None:
                return None
            return _info(row)

    @traced("get_api_key")
    async def get_api_key(self, key_id: str, *, tenant_id: str | None = None) -> ApiKeyInfo | None:
        """The key `key_id` of the tenant (default: the store's), or `None`."""
        async with self._session() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None or row.tenant_id != (tenant_id or self.tenant_id):
                return None
            return _info(row)

    @traced("list_api_keys")
    async def list_api_keys(
        self, *, tenant_id: str | None = None, user_id: str | None = None, include_revoked: bool = True
    ) -> list[ApiKeyInfo]:
        """The tenant's keys (default: the store's tenant), newest first; only `user_id`'s when given."""
        query = select(ApiKeyRow).where(ApiKeyRow.tenant_id == (tenant_id or self.tenant_id))
        if user_id is not None:
            query = query.where(ApiKeyRow.user_id == user_id)
        if not include_revoked:
            query = query.where(ApiKeyRow.revoked_at.is_(None))
        async with self._session() as session:
            rows = await session.scalars(query.order_by(ApiKeyRow.created_at.desc(), ApiKeyRow.id))
            return [_info(r) for r in rows]

    @traced("revoke_api_key")
    async def revoke_api_key(self, key_id: str, *, tenant_id: str | None = None) -> ApiKeyInfo | None:
        """Revoke a key of the tenant (default: the store's) for good; `None` when there is no such key.

        Revoking a revoked key keeps its first revocation time.
        """
        async with self._session() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is None or row.tenant_id != (tenant_id or self.tenant_id):
                return None
            if row.revoked_at is None:
                row.revoked_at = self.now()
            return _info(row)

    @traced("touch_api_key")
    async def touch_api_key(self, key_id: str, *, at: dt.datetime | None = None) -> None:
        """Record that the key authenticated a request (`last_used_at`, default: now)."""
        async with self._session() as session:
            row = await session.get(ApiKeyRow, key_id)
            if row is not None:
                row.last_used_at = at or self.now()

"""Who is calling: API keys (`Authorization: Bearer mk_...` or `X-API-Key`) and JWT bearer tokens of an OIDC issuer.

An API key is verified against the store (HMAC-SHA256 with the server's pepper, compared in constant time) and kept
for `api_key_cache_s` so most requests do not read the store; its `last_used_at` is written at most once a minute.
Every failure is a 401 `unauthorized` with a `reason` (`missing`, `malformed`, `unknown_key`, `expired`, `revoked`,
a JWT reason...) and `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._utils import SYSTEM_CLOCK, Clock
from ._errors import ApiError
from ._state import Principal

if TYPE_CHECKING:
    from ..store import ApiKeyInfo, SQLStore
    from ._jwt import JwtVerifier

__all__ = ["Authenticator", "unauthorized"]

_TOUCH_EVERY_S = 60.0
_CACHE_MAX = 10_000


def unauthorized(reason: str, message: str, *, error: str = "invalid_token") -> ApiError:
    """A 401 `unauthorized` with its `reason` and the `WWW-Authenticate: Bearer` challenge."""
    challenge = 'Bearer realm="miniagent"' if reason == "missing" else f'Bearer realm="miniagent", error="{error}"'
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge}, extra={"reason": reason})


class Authenticator:
    """Turns a request's credentials into a [`Principal`][miniagent.server.Principal] or a 401.

    Args:
        pepper: The API key pepper.
        jwt: The JWT verifier, or `None` when JWT sign-in is off.
        cache_s: How long a verified key is trusted without reading the store.
        clock: Monotonic time for the cache and the `last_used_at` throttle (key expiry uses the store's clock).
    """

    def __init__(
        self,
        *,
        pepper: bytes,
        jwt: JwtVerifier | None = None,
        cache_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.pepper = pepper
        self.jwt = jwt
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[ApiKeyInfo, float]] = {}
        self._touched: dict[str, float] = {}

    async def aclose(self) -> None:
        """Close the JWKS client."""
        if self.jwt is not None:
            await self.jwt.jwks.aclose()

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (after revoking it), so it stops working at once."""
        for secret_hash, (info, _) in list(self._cache.items()):
            if info.id == key_id:
                del self._cache[secret_hash]

    async def authenticate(self, store: SQLStore, authorization: str | None, api_key: str | None) -> Principal:
        """The principal of a request with these `Authorization` and `X-API-Key` header values.

        Raises:
            ApiError: 401 `unauthorized` (with a `reason`).
        """
        token: str | None = None
        if authorization is not None:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise unauthorized(
                    "malformed",
                    "The Authorization header must be `Bearer <API key or token>`.",
                    error="invalid_request",
                )
            token = value.strip()
        elif api_key is not None:
            token = api_key.strip()
        if not token:
            raise unauthorized(
                "missing",
                "This endpoint needs credentials: send `Authorization: Bearer <API key>` (create one with "
                "`miniagent keys create`) or a JWT from the configured issuer.",
            )
        if token.startswith("mk_"):
            return await self._api_key(store, token)
        if self.jwt is not None and token.count(".") == 2:
            return await self._token(token)
        raise unauthorized(
            "malformed",
            "The credentials are neither a miniagent API key (`mk_...`) nor a JWT"
            + (" (JWT sign-in is not configured on this server)." if self.jwt is None else "."),
        )

    async def _api_key(self, store: SQLStore, secret: str) -> Principal:
        from ..store._api_keys import api_key_hash

        digest = api_key_hash(secret, self.pepper)
        now = self.clock.now()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.cache_s:
            info = cached[0]
        else:
            found = await store.verify_api_key(secret, pepper=self.pepper)
            if found is None:
                self._cache.pop(digest, None)
                raise unauthorized("unknown_key", "The API key is not valid: check it, or create a new one.")
            info = found
            if self.cache_s > 0:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
                self._cache[digest] = (info, now)
        state = info.state(store.now())
        if state == "revoked":
            raise unauthorized("revoked", f"The API key {info.prefix} was revoked: use another key.")
        if state == "expired":
            raise unauthorized("expired", f"The API key {info.prefix} has expired: create a new one.")
        last = self._touched.get(info.id)
        if last is None or now - last >= _TOUCH_EVERY_S:
            self._touched[info.id] = now
            if len(self._touched) > _CACHE_MAX:
                self._touched.clear()
            await store.touch_api_key(info.id)
        return Principal(info.tenant_id, info.user_id, frozenset(info.scopes), "api-key", key_id=info.id)

    async def _token(self, token: str) -> Principal:
        from ._jwt import JwtError

        assert self.jwt is not None
        try:
            claims = await self.jwt.verify(token)
        except JwtError as exc:
            if exc.reason == "jwks_unavailable":
                raise ApiError(
                    503, "auth_unavailable", str(exc), headers={"Retry-After": "5"}, extra={"reason": exc.reason}
                ) from None
            raise unauthorized(exc.reason, str(exc)) from None
        return Principal(claims.tenant_id, claims.user_id, claims.scopes, "jwt")

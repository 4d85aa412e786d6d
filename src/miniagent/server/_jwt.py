"""JWT bearer tokens from an OIDC issuer: the issuer's JWKS fetched with httpx and cached, tokens verified with PyJWT.

Only the algorithms of the issuer's public keys are accepted (RS*/PS*/ES*/EdDSA): `alg: none`, HS256 signed with a
public key and any algorithm that does not match the key are refused before a signature is checked. `iss`, `aud`,
`exp`, `nbf` and `iat` are validated against an injectable wall clock, with a leeway for clock skew.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from .._utils import SYSTEM_CLOCK, Clock
from ..errors import UserError

if TYPE_CHECKING:
    import httpx

__all__ = ["JwksCache", "JwtClaims", "JwtError", "JwtVerifier"]

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_MAX_TOKEN = 16_384


class JwtError(Exception):
    """A token was refused: `reason` is machine-readable (`expired`, `bad_signature`...), the message human."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        """Why: `malformed`, `bad_algorithm`, `unknown_key`, `bad_signature`, `expired`, `not_yet_valid`,
        `bad_issuer`, `bad_audience`, `missing_claim`, `jwks_unavailable`."""


@dataclass(frozen=True, slots=True)
class JwtClaims:
    """What the server takes from a verified token."""

    tenant_id: str
    """From the tenant claim (`jwt_tenant_claim`)."""
    user_id: str
    """From `sub`."""
    scopes: frozenset[str]
    """From `scope` (space-separated) and/or `scp` (a list or a string)."""


def _allowed_algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The signature algorithms a JWK may verify: its `alg` if it names one, else those of its key type."""
    kty = jwk.get("kty")
    if kty == "RSA":
        family = _RSA_ALGS
    elif kty == "EC":
        alg = _EC_ALGS.get(str(jwk.get("crv")))
        family = frozenset({alg}) if alg else frozenset()
    elif kty == "OKP":
        family = frozenset({"EdDSA"})
    else:  # `oct` (a shared secret) and unknown types never verify an issuer's tokens
        return frozenset()
    named = jwk.get("alg")
    if isinstance(named, str):
        return frozenset({named}) & family
    return family


class JwksCache:
    """The issuer's public keys by `kid`, fetched with httpx and kept for `ttl_s`.

    A token with an unknown `kid` makes it fetch again (keys were rotated), at most once per `min_refetch_s`, so
    tokens with random `kid`s cannot make the server hammer the issuer.

    Args:
        url: The JWKS URL; `None` discovers it from `{issuer}/.well-known/openid-configuration`.
        issuer: The issuer (for discovery).
        ttl_s: How long fetched keys are trusted.
        min_refetch_s: The least time between two fetches caused by unknown `kid`s.
        clock: Monotonic time (tests inject a `ManualClock`).
        client: The httpx client to use (default: one owned by the cache, closed by `aclose`).
        timeout_s: Timeout of one fetch.
    """

    def __init__(
        self,
        url: str | None,
        *,
        issuer: str | None = None,
        ttl_s: float = 600.0,
        min_refetch_s: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if url is None and not issuer:
            raise UserError("JWT sign-in needs the issuer's JWKS URL (MINIAGENT_JWT_JWKS_URL) or MINIAGENT_JWT_ISSUER.")
        self.url = url
        self.issuer = issuer
        self.ttl_s = ttl_s
        self.min_refetch_s = min_refetch_s
        self.clock = clock
        self.timeout_s = timeout_s
        self._client = client
        self._owns_client = client is None
        self._keys: dict[str, tuple[Any, frozenset[str]]] = {}
        self._fetched_at: float | None = None
        self._lock: anyio.Lock | None = None  # made in the serving event loop, on first use
        self.fetches = 0
        """How many times the keys were fetched (for tests and metrics)."""

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        """Close the owned httpx client."""
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def _get_json(self, url: str) -> Any:
        import httpx

        try:
            response = await self._http().get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JwtError(
                "jwks_unavailable",
                f"The sign-in keys could not be fetched from the issuer ({type(exc).__name__}); retry.",
            ) from exc

    async def _fetch(self) -> None:
        url = self.url
        if url is None:
            config = await self._get_json(f"{str(self.issuer).rstrip('/')}/.well-known/openid-configuration")
            url = config.get("jwks_uri") if isinstance(config, dict) else None
            if not isinstance(url, str):
                raise JwtError("jwks_unavailable", "The issuer's OpenID configuration has no `jwks_uri`.")
            self.url = url
        document = await self._get_json(url)
        from jwt import PyJWK
        from jwt.exceptions import PyJWKError

        keys: dict[str, tuple[Any, frozenset[str]]] = {}
        entries = document.get("keys") if isinstance(document, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            algorithms = _allowed_algorithms(entry)
            if not algorithms:
                continue
            try:
                key = PyJWK(entry, algorithm=sorted(algorithms)[0])
            except (PyJWKError, ValueError, TypeError):
                continue  # a key we cannot use is skipped; the others still work
            keys[str(entry.get("kid", ""))] = (key.key, algorithms)
        self.fetches += 1
        self._keys = keys
        self._fetched_at = self.clock.now()

    async def key(self, kid: str) -> tuple[Any, frozenset[str]]:
        """The public key of `kid` and the algorithms it may verify.

        Raises:
            JwtError: `unknown_key` (even after a refetch) or `jwks_unavailable`.
        """
        now = self.clock.now()
        fresh = self._fetched_at is not None and now - self._fetched_at < self.ttl_s
        if fresh and kid in self._keys:
            return self._keys[kid]
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            now = self.clock.now()
            age = None if self._fetched_at is None else now - self._fetched_at
            stale = age is None or age >= self.ttl_s
            if stale or (kid not in self._keys and age is not None and age >= self.min_refetch_s):
                await self._fetch()
        found = self._keys.get(kid)
        if found is None:
            raise JwtError("unknown_key", f"The token's key id {kid[:64]!r} is not one of the issuer's keys.")
        return found


class JwtVerifier:
    """Verifies bearer JWTs of one issuer and audience and extracts tenant, user and scopes.

    Args:
        jwks: The issuer's keys.
        issuer: The required `iss`.
        audience: The required `aud` (one of the token's audiences).
        tenant_claim: The claim holding the tenant.
        leeway_s: Clock skew tolerated on `exp`, `nbf` and `iat`.
        wall_time: Wall-clock seconds since the epoch (tests inject one).
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        tenant_claim: str = "tenant",
        leeway_s: float = 30.0,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        if not issuer or not audience:
            raise UserError("JWT sign-in needs both MINIAGENT_JWT_ISSUER and MINIAGENT_JWT_AUDIENCE.")
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim
        self.leeway_s = leeway_s
        self.wall_time = wall_time

    async def verify(self, token: str) -> JwtClaims:
        """Verify `token` and return its claims.

        Raises:
            JwtError: The token is refused (the reason says why).
        """
        import jwt
        from jwt.exceptions import InvalidSignatureError, PyJWTError

        if len(token) > _MAX_TOKEN or token.count(".") != 2:
            raise JwtError("malformed", "The bearer token is not a JWT (three dot-separated parts).")
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as exc:
            raise JwtError("malformed", "The bearer token's header cannot be decoded.") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none" or alg.startswith("HS"):
            raise JwtError("bad_algorithm", f"Tokens signed with {str(alg)[:20]!r} are not accepted.")
        if not isinstance(kid, str):
            raise JwtError("unknown_key", "The token's header names no key (`kid`).")
        key, algorithms = await self.jwks.key(kid)
        if alg not in algorithms:
            raise JwtError("bad_algorithm", f"The key {kid[:64]!r} does not sign with {alg[:20]!r}.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False,
                         "verify_iss": False},
            )  # fmt: skip
        except InvalidSignatureError as exc:
            raise JwtError("bad_signature", "The token's signature does not verify.") from exc
        except PyJWTError as exc:
            raise JwtError("malformed", f"The token cannot be decoded ({type(exc).__name__}).") from exc
        return self._check(claims)

    def _check(self, claims: Mapping[str, Any]) -> JwtClaims:
        now = self.wall_time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise JwtError("missing_claim", "The token has no expiry (`exp`).")
        if now > exp + self.leeway_s:
            raise JwtError("expired", "The token has expired: sign in again.")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now + self.leeway_s < nbf:
            raise JwtError("not_yet_valid", "The token is not valid yet (`nbf`): check the clocks.")
        iat = claims.get("iat")
        if isinstance(iat, int | float) and not isinstance(iat, bool) and now + self.leeway_s < iat:
            raise JwtError("not_yet_valid", "The token was issued in the future (`iat`): check the clocks.")
        if claims.get("iss") != self.issuer:
            raise JwtError("bad_issuer", "The token is from another issuer.")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.audience not in audiences:
            raise JwtError("bad_audience", "The token is for another audience.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 64:
            raise JwtError("missing_claim", "The token has no usable subject (`sub`, at most 64 characters).")
        tenant = claims.get(self.tenant_claim)
        if not isinstance(tenant, str) or not tenant or len(tenant) > 64:
            raise JwtError("missing_claim", f"The token has no usable tenant claim {self.tenant_claim!r}.")
        return JwtClaims(tenant_id=tenant, user_id=sub, scopes=_scopes(claims))


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    scope = claims.get("scope")
    if isinstance(scope, str):
        found.update(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, str):
        found.update(scp.split())
    elif isinstance(scp, list):
        found.update(s for s in scp if isinstance(s, str))
    return frozenset(found)

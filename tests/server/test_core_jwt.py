"""JWT sign-in: tokens of an OIDC issuer whose JWKS is served by a real loopback server, keys made by `cryptography`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from miniagent.server._deps import PrincipalDep, require_scope
from miniagent.settings import Settings
from miniagent.testing import ManualClock

from .conftest import AppFactory, LiveServer

NOW = 2_000_000_000.0
ISSUER = "https://issuer.example"
AUDIENCE = "miniagent-api"


@dataclass
class Issuer:
    """The keys of a fake OIDC issuer and the JWKS document its loopback server serves."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    other_rsa: rsa.RSAPrivateKey
    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    up: bool = True

    def token(self, claims: dict[str, Any] | None = None, *, kid: str = "rsa-1", alg: str = "RS256",
              key: Any = None, drop: tuple[str, ...] = ()) -> str:  # fmt: skip
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "exp": NOW + 300, "iat": NOW - 10,
                "scope": "chat threads", **(claims or {})}  # fmt: skip
        for name in drop:
            body.pop(name)
        signer = key if key is not None else (self.ec_key if alg.startswith("ES") else self.rsa_key)
        return jwt.encode(body, signer, algorithm=alg, headers={"kid": kid})


def _jwk(public: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.get_default_algorithms()[alg or "RS256"].to_jwk(public))
    data.update({"kid": kid, "use": "sig"})
    if alg:
        data["alg"] = alg
    return data


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def issuer(keys: tuple[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]) -> Issuer:
    rsa_key, ec_key, other = keys
    found = Issuer(rsa_key, ec_key, other)
    found.keys = [
        _jwk(rsa_key.public_key(), "rsa-1"),
        {**_jwk(ec_key.public_key(), "ec-1", "ES256")},
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},  # a symmetric key in the JWKS is never used
    ]
    return found


@pytest.fixture
def issuer_url(issuer: Issuer, live_server: LiveServer) -> Iterator[str]:
    """The issuer's JWKS and OpenID configuration, served by uvicorn on loopback."""
    app = FastAPI()

    @app.get("/.well-known/openid-configuration")
    async def discovery() -> dict[str, str]:
        return {"issuer": ISSUER, "jwks_uri": f"{base}/jwks.json"}

    @app.get("/jwks.json")
    async def jwks() -> JSONResponse:
        issuer.fetches += 1
        if not issuer.up:
            return JSONResponse({"error": "down"}, status_code=503)
        return JSONResponse({"keys": issuer.keys})

    with live_server(app) as base:
        yield base


@dataclass
class JwtServer:
    url: str
    clock: ManualClock
    app: FastAPI

    def get(self, token: str, path: str = "/test/whoami") -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"})


def _app(make_app: AppFactory, settings: Settings, clock: ManualClock) -> FastAPI:
    app = make_app(settings, clock=clock, wall_time=lambda: NOW)
    router = APIRouter()

    @router.get("/test/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, Any]:
        return {"tenant": principal.tenant_id, "user": principal.user_id, "via": principal.via,
                "scopes": sorted(principal.scopes)}  # fmt: skip

    @router.get("/test/admin", dependencies=[Depends(require_scope("admin"))])
    async def admin_only() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)
    return app


@pytest.fixture
def server(
    make_app: AppFactory, server_settings: Settings, issuer_url: str, live_server: LiveServer
) -> Iterator[JwtServer]:
    settings = server_settings.model_copy(
        update={"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwt_jwks_url": f"{issuer_url}/jwks.json"}
    )
    clock = ManualClock()
    app = _app(make_app, settings, clock)
    with live_server(app) as url:
        yield JwtServer(url, clock, app)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _claims() -> dict[str, Any]:
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "tenant": "acme", "exp": NOW + 300, "scope": "admin"}


def test_valid_tokens(server: JwtServer, issuer: Issuer) -> None:
    ok = server.get(issuer.token())
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"tenant": "acme", "user": "alice", "via": "jwt", "scopes": ["chat", "threads"]}
    ec_token = issuer.token({"scp": ["threads", "admin"], "scope": None}, kid="ec-1", alg="ES256")
    assert server.get(ec_token).json()["scopes"] == ["admin", "threads"]
    listed_audience = issuer.token({"aud": ["other", AUDIENCE]})
    assert server.get(listed_audience).status_code == 200
    skewed = issuer.token({"exp": NOW - 20})  # within the 30 s leeway
    assert server.get(skewed).status_code == 200
    assert issuer.fetches == 1  # the JWKS was fetched once and cached


@pytest.mark.parametrize(
    ("reason", "claims", "drop"),
    [
        ("expired", {"exp": NOW - 3600}, ()),
        ("not_yet_valid", {"nbf": NOW + 3600}, ()),
        ("not_yet_valid", {"iat": NOW + 3600}, ()),
        ("bad_issuer", {"iss": "https://evil.example"}, ()),
        ("bad_audience", {"aud": "another-api"}, ()),
        ("missing_claim", {}, ("exp",)),
        ("missing_claim", {}, ("sub",)),
        ("missing_claim", {}, ("tenant",)),
    ],
)
def test_refused_claims(
    server: JwtServer, issuer: Issuer, reason: str, claims: dict[str, Any], drop: tuple[str, ...]
) -> None:
    response = server.get(issuer.token(claims, drop=drop))
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["reason"]) == ("unauthorized", reason)
    assert error["message"] and 'error="invalid_token"' in response.headers["www-authenticate"]


def test_refused_signatures_and_algorithms(server: JwtServer, issuer: Issuer) -> None:
    def reason(token: str) -> str:
        response = server.get(token)
        assert response.status_code == 401, response.text
        value: str = response.json()["error"]["reason"]
        return value

    assert reason(issuer.token(key=issuer.other_rsa)) == "bad_signature"  # right kid, wrong key
    assert reason(_unsigned({"alg": "none", "kid": "rsa-1", "typ": "JWT"}, _claims())) == "bad_algorithm"
    assert reason(_unsigned({"alg": "None", "kid": "rsa-1"}, _claims())) == "bad_algorithm"
    public_pem = issuer.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
    forged = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert reason(f"{signing_input}.{_b64(forged)}") == "bad_algorithm"  # HS256 keyed with the public key
    shared = hmac.new(b"secret", signing_input.encode(), hashlib.sha256).digest()
    assert reason(_unsigned({"alg": "HS256", "kid": "shared"}, _claims(), shared)) == "bad_algorithm"
    assert reason(issuer.token(kid="ec-1", alg="RS256")) == "bad_algorithm"  # an RSA signature on the EC key
    assert reason(issuer.token(kid="rsa-1", alg="ES256")) == "bad_algorithm"  # an EC signature on the RSA key
    assert reason("aaa.bbb.ccc") == "malformed"
    assert reason(_unsigned({"kid": "rsa-1"}, _claims())) == "bad_algorithm"
    assert reason(_unsigned({"alg": "RS256"}, _claims())) == "unknown_key"
    tampered = issuer.token().split(".")
    tampered[1] = _b64(json.dumps({**_claims(), "sub": "alice"}).encode())
    assert reason(".".join(tampered)) == "bad_signature"


def test_scopes_from_the_token(server: JwtServer, issuer: Issuer) -> None:
    denied = server.get(issuer.token(), "/test/admin")
    assert denied.status_code == 403 and denied.json()["error"]["required_scope"] == "admin"
    assert server.get(issuer.token({"scope": "admin"}), "/test/admin").status_code == 200


def test_unknown_kid_refetches_with_a_floor_and_rotation_works(server: JwtServer, issuer: Issuer) -> None:
    assert server.get(issuer.token()).status_code == 200
    assert issuer.fetches == 1
    unknown = server.get(issuer.token(kid="rsa-2"))
    assert unknown.status_code == 401 and unknown.json()["error"]["reason"] == "unknown_key"
    assert issuer.fetches == 1  # fetched less than `min_refetch_s` ago: no refetch for a random kid
    issuer.keys.append(_jwk(issuer.other_rsa.public_key(), "rsa-2"))  # the issuer rotates in a new key
    server.clock.advance(30)
    rotated = server.get(issuer.token(kid="rsa-2", key=issuer.other_rsa))
    assert rotated.status_code == 200 and issuer.fetches == 2
    assert server.get(issuer.token(kid="rsa-9")).json()["error"]["reason"] == "unknown_key"
    assert issuer.fetches == 2
    server.clock.advance(600)  # the TTL: fetched again even for known keys
    assert server.get(issuer.token()).status_code == 200 and issuer.fetches == 3


def test_jwks_unavailable_is_a_503(server: JwtServer, issuer: Issuer) -> None:
    issuer.up = False
    response = server.get(issuer.token())
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "auth_unavailable" and error["reason"] == "jwks_unavailable"
    assert response.headers["retry-after"] == "5"
    issuer.up = True
    server.clock.advance(30)
    assert server.get(issuer.token()).status_code == 200


def test_discovery_from_the_issuer(
    make_app: AppFactory, server_settings: Settings, issuer: Issuer, issuer_url: str, live_server: LiveServer
) -> None:
    settings = server_settings.model_copy(update={"jwt_issuer": issuer_url, "jwt_audience": AUDIENCE})
    app = _app(make_app, settings, ManualClock())
    with live_server(app) as url:
        token = issuer.token({"iss": issuer_url})
        response = httpx.get(f"{url}/test/whoami", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json()["via"] == "jwt"


def test_api_keys_still_work_with_jwt_on(server: JwtServer, issuer: Issuer) -> None:
    no_jwt = server.get("mk_0123456789ab_" + "x" * 43)
    assert no_jwt.status_code == 401 and no_jwt.json()["error"]["reason"] == "unknown_key"
    assert issuer.fetches == 0  # an API key never touches the issuer

"""API keys: the store's methods (SQLite and PostgreSQL), the auth matrix on the real app, the admin endpoints."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from miniagent.errors import UserError
from miniagent.server._deps import PrincipalDep, require_scope
from miniagent.settings import Settings
from miniagent.store import SQLStore
from miniagent.testing import ManualClock

from .conftest import PEPPER, ApiKeyFactory, AppFactory, LiveServer, run_async

_PEPPER = PEPPER.encode()
_FUTURE = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
_PAST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def _whoami_app(app: FastAPI) -> FastAPI:
    router = APIRouter()

    @router.get("/test/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, Any]:
        return {"tenant": principal.tenant_id, "user": principal.user_id, "via": principal.via,
                "scopes": sorted(principal.scopes)}  # fmt: skip

    @router.get("/test/threads-only", dependencies=[require_dep("threads")])
    async def threads_only() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)
    return app


def require_dep(scope: str) -> Any:
    from fastapi import Depends

    return Depends(require_scope(scope))


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# ---- the store -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
def test_store_api_keys(server_db: str, server_settings: Settings) -> None:
    async def go() -> None:
        async with await SQLStore.open(server_db, settings=server_settings, migrate=True) as store:
            info, secret = await store.create_api_key(
                pepper=_PEPPER, tenant_id="acme", user_id="alice", scopes=["chat", "threads", "chat"], name="laptop"
            )
            assert secret.startswith(info.prefix + "_") and len(info.prefix) == 15
            assert info.scopes == ("chat", "threads") and info.state(store.now()) == "active"
            found = await store.verify_api_key(secret, pepper=_PEPPER)
            assert found == info
            assert await store.verify_api_key(secret, pepper=b"another-pepper-0123456789") is None
            assert await store.verify_api_key(secret[:-1] + ("A" if secret[-1] != "A" else "B"), pepper=_PEPPER) is None
            assert await store.verify_api_key("mk_nothing", pepper=_PEPPER) is None
            swapped = "0" if info.prefix[-1] != "0" else "1"  # another prefix (1 in 16 prefixes ends in 0)
            forged = f"{info.prefix[:-1]}{swapped}_{secret.split('_')[2]}"
            assert await store.verify_api_key(forged, pepper=_PEPPER) is None

            other, _ = await store.create_api_key(pepper=_PEPPER, tenant_id="globex", user_id="bob", scopes=["admin"])
            assert [k.id for k in await store.list_api_keys(tenant_id="acme")] == [info.id]
            assert await store.get_api_key(info.id, tenant_id="globex") is None
            assert await store.revoke_api_key(info.id, tenant_id="globex") is None  # another tenant's key
            assert (await store.get_api_key(other.id, tenant_id="globex")) == other

            await store.touch_api_key(info.id, at=_PAST)
            assert (await store.get_api_key(info.id, tenant_id="acme")).last_used_at == _PAST  # type: ignore[union-attr]
            revoked = await store.revoke_api_key(info.id, tenant_id="acme")
            assert revoked is not None and revoked.state(store.now()) == "revoked"
            again = await store.revoke_api_key(info.id, tenant_id="acme")
            assert again is not None and again.revoked_at == revoked.revoked_at
            assert (await store.verify_api_key(secret, pepper=_PEPPER)).state(store.now()) == "revoked"  # type: ignore[union-attr]
            assert await store.list_api_keys(tenant_id="acme", include_revoked=False) == []

            expiring, _ = await store.create_api_key(
                pepper=_PEPPER, tenant_id="acme", user_id="alice", scopes=["chat"], expires_at=_PAST
            )
            assert expiring.state(store.now()) == "expired"
            async with store.engine.connect() as conn:
                from sqlalchemy import text

                stored = (await conn.execute(text("SELECT hash, prefix FROM api_keys"))).all()
            assert all(secret not in row[0] and secret != row[1] for row in stored)  # only the HMAC is kept

    run_async(go())


def test_store_api_key_bad_input(server_settings: Settings) -> None:
    async def go() -> None:
        async with await SQLStore.open(server_settings.database_url, settings=server_settings) as store:
            with pytest.raises(UserError, match="at least 16 bytes"):
                await store.create_api_key(pepper=b"short", user_id="u", scopes=["chat"])
            with pytest.raises(UserError, match="not one string"):
                await store.create_api_key(pepper=_PEPPER, user_id="u", scopes="chat")
            with pytest.raises(UserError, match="at least one scope"):
                await store.create_api_key(pepper=_PEPPER, user_id="u", scopes=[])
            with pytest.raises(UserError, match="Invalid scope 'Bad Scope'"):
                await store.create_api_key(pepper=_PEPPER, user_id="u", scopes=["Bad Scope"])
            with pytest.raises(UserError, match="user id"):
                await store.create_api_key(pepper=_PEPPER, user_id="", scopes=["chat"])
            with pytest.raises(UserError, match="timezone-aware"):
                await store.create_api_key(
                    pepper=_PEPPER, user_id="u", scopes=["chat"], expires_at=dt.datetime(2100, 1, 1)
                )
            with pytest.raises(UserError, match="name"):
                await store.create_api_key(pepper=_PEPPER, user_id="u", scopes=["chat"], name="x" * 201)

    run_async(go())


# ---- the auth matrix on the real app ---------------------------------------------------------------------------


@pytest.mark.parametrize("server_db", ["sqlite", "postgres"], indirect=True)
def test_api_key_matrix(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> None:
    valid = api_key(tenant="acme", user="alice", scopes=("chat",))
    expired = api_key(tenant="acme", user="alice", expires_at=_PAST)
    later = api_key(tenant="acme", user="alice", expires_at=_FUTURE)
    admin = api_key(tenant="acme", user="root", scopes=("admin",))
    with live_server(_whoami_app(make_app())) as url:

        def call(headers: dict[str, str]) -> httpx.Response:
            return httpx.get(f"{url}/test/whoami", headers=headers)

        ok = call(_bearer(valid))
        assert ok.status_code == 200
        assert ok.json() == {"tenant": "acme", "user": "alice", "via": "api-key", "scopes": ["chat"]}
        assert call({"X-API-Key": valid}).status_code == 200
        assert call({"Authorization": f"bearer {later}"}).status_code == 200

        cases = {
            "missing": {},
            "malformed": {"Authorization": f"Basic {valid}"},
            "unknown_key": _bearer(valid[:-2] + "zz"),
            "expired": _bearer(expired),
        }
        cases["malformed-token"] = _bearer("not-a-key")
        for reason, headers in cases.items():
            response = call(headers)
            assert response.status_code == 401, reason
            error = response.json()["error"]
            assert error["code"] == "unauthorized" and error["type"] == "authentication_error"
            assert error["reason"] == reason.removesuffix("-token"), reason
            assert error["message"] and response.headers["www-authenticate"].startswith("Bearer")
            assert valid not in response.text and expired not in response.text

        key_id = next(
            k["id"]
            for k in httpx.get(f"{url}/api/v1/admin/keys", headers=_bearer(admin)).json()["data"]
            if k["state"] == "active" and k["scopes"] == ["chat"] and k["expires_at"] is None
        )
        revoked = httpx.delete(f"{url}/api/v1/admin/keys/{key_id}", headers=_bearer(admin))
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        after = call(_bearer(valid))
        assert after.status_code == 401 and after.json()["error"]["reason"] == "revoked"


def test_scopes_403(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> None:
    chat = api_key(scopes=("chat",))
    threads = api_key(scopes=("threads",))
    admin = api_key(scopes=("admin",))
    with live_server(_whoami_app(make_app())) as url:
        denied = httpx.get(f"{url}/test/threads-only", headers=_bearer(chat))
        assert denied.status_code == 403
        error = denied.json()["error"]
        assert error["code"] == "forbidden" and error["required_scope"] == "threads" and "'threads'" in error["message"]
        assert httpx.get(f"{url}/test/threads-only", headers=_bearer(threads)).status_code == 200
        assert httpx.get(f"{url}/test/threads-only", headers=_bearer(admin)).status_code == 200  # admin implies all
        for method, path in (("GET", "/api/v1/admin/keys"), ("POST", "/api/v1/admin/keys"),
                             ("DELETE", "/api/v1/admin/keys/x")):  # fmt: skip
            response = httpx.request(method, f"{url}{path}", headers=_bearer(threads), json={})
            assert response.status_code == 403 and response.json()["error"]["required_scope"] == "admin"
            assert httpx.request(method, f"{url}{path}", json={}).status_code == 401


def test_admin_keys_endpoints(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> None:
    admin = api_key(tenant="acme", user="root", scopes=("admin",))
    foreign_admin = api_key(tenant="globex", user="root", scopes=("admin",))
    with live_server(_whoami_app(make_app())) as url:
        created = httpx.post(
            f"{url}/api/v1/admin/keys",
            headers=_bearer(admin),
            json={"user_id": "carol", "scopes": ["threads", "chat"], "name": "ci", "expires_days": 30},
        )
        assert created.status_code == 201
        body = created.json()
        key, secret = body["key"], body["secret"]
        assert key["tenant_id"] == "acme" and key["user_id"] == "carol" and key["scopes"] == ["chat", "threads"]
        assert key["state"] == "active" and key["expires_at"] is not None and secret.startswith(key["prefix"])
        me = httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).json()
        assert me == {"tenant": "acme", "user": "carol", "via": "api-key", "scopes": ["chat", "threads"]}

        listed = httpx.get(f"{url}/api/v1/admin/keys", headers=_bearer(admin), params={"user_id": "carol"}).json()
        assert [k["id"] for k in listed["data"]] == [key["id"]] and secret not in str(listed)
        assert listed["data"][0]["last_used_at"] is not None
        foreign = httpx.get(f"{url}/api/v1/admin/keys", headers=_bearer(foreign_admin)).json()["data"]
        assert key["id"] not in [k["id"] for k in foreign]  # another tenant's admin does not see it
        missing = httpx.delete(f"{url}/api/v1/admin/keys/{key['id']}", headers=_bearer(foreign_admin))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 200  # still works
        assert httpx.delete(f"{url}/api/v1/admin/keys/{key['id']}", headers=_bearer(admin)).status_code == 200
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 401


def test_cache_and_last_used_throttle(
    make_app: AppFactory, server_settings: Settings, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    secret = api_key(tenant="acme", user="alice")
    clock = ManualClock()
    app = _whoami_app(make_app(server_settings.model_copy(update={"api_key_cache_s": 5.0}), clock=clock))
    state = app.state.miniagent
    with live_server(app) as url:
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 200

        async def used() -> dt.datetime | None:
            async with await SQLStore.open(server_settings.database_url, settings=server_settings) as store:
                (info,) = await store.list_api_keys(tenant_id="acme")
                return info.last_used_at

        first = run_async(used())
        assert first is not None
        clock.advance(30)
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 200
        assert run_async(used()) == first  # written at most once a minute
        clock.advance(31)
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 200
        assert run_async(used()) != first

        async def revoke_elsewhere() -> None:  # another replica (or `miniagent keys revoke`) revokes it
            async with await SQLStore.open(server_settings.database_url, settings=server_settings) as store:
                (info,) = await store.list_api_keys(tenant_id="acme")
                await store.revoke_api_key(info.id, tenant_id="acme")

        run_async(revoke_elsewhere())
        clock.advance(1)
        assert httpx.get(f"{url}/test/whoami", headers=_bearer(secret)).status_code == 200  # cached for 5 s
        clock.advance(5)
        refused = httpx.get(f"{url}/test/whoami", headers=_bearer(secret))
        assert refused.status_code == 401 and refused.json()["error"]["reason"] == "revoked"
    assert state.auth.cache_s == 5.0

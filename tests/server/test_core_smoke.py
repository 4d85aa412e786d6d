"""The fixtures work end to end: a real key authenticates a request to the real app under uvicorn."""

from __future__ import annotations

import httpx

from .conftest import ApiKeyFactory, AppFactory, LiveServer


def test_live_server_with_a_real_key(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> None:
    admin = api_key(scopes=("admin",))
    with live_server(make_app()) as url:
        assert httpx.get(f"{url}/healthz").json()["ok"] is True
        listed = httpx.get(f"{url}/api/v1/admin/keys", headers={"Authorization": f"Bearer {admin}"})
        assert listed.status_code == 200
        assert [k["scopes"] for k in listed.json()["data"]] == [["admin"]]

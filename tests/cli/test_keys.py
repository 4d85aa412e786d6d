"""`miniagent keys create|list|revoke` on the default store (a temp data dir)."""

from __future__ import annotations

import json

import anyio
from typer.testing import CliRunner

from miniagent.server._pepper import resolve_pepper
from miniagent.settings import get_settings
from miniagent.store import ApiKeyInfo, SQLStore, default_database_url

_ENV = {"COLUMNS": "200"}


def _invoke(*args: str) -> tuple[int, str]:
    from miniagent.cli import app

    result = CliRunner().invoke(app, list(args), env=_ENV)
    return result.exit_code, result.output


def _verify(secret: str) -> ApiKeyInfo | None:
    settings = get_settings()
    pepper = resolve_pepper(settings, default_database_url(settings))

    async def go() -> ApiKeyInfo | None:
        async with await SQLStore.open() as store:
            return await store.verify_api_key(secret, pepper=pepper)

    return anyio.run(go)


def test_create_list_revoke() -> None:
    code, out = _invoke("keys", "list", "--tenant", "acme")
    assert code == 0 and "(no API keys" in out
    code, out = _invoke(
        "keys", "create", "--tenant", "acme", "--user", "alice", "--scopes", "chat,threads", "--name", "ci",
        "--expires-days", "7",
    )  # fmt: skip
    assert code == 0, out
    secret = out.strip().splitlines()[-1]
    assert "shown once" in out and secret.startswith("mk_")
    info = _verify(secret)
    assert info is not None and (info.tenant_id, info.user_id, info.scopes) == ("acme", "alice", ("chat", "threads"))
    assert info.expires_at is not None and info.name == "ci"

    code, out = _invoke("keys", "list", "--tenant", "acme", "--json")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["id"] == info.id and row["state"] == "active" and secret not in out
    code, out = _invoke("keys", "list", "--tenant", "acme")
    assert code == 0 and info.prefix in out and "chat,threads" in out
    assert _invoke("keys", "list", "--tenant", "other", "--json")[1] == ""

    assert _invoke("keys", "revoke", info.id, "--tenant", "other")[0] == 1  # another tenant's key: not found
    code, out = _invoke("keys", "revoke", info.id, "--tenant", "acme")
    assert code == 0 and f"revoked key {info.id}" in out
    revoked = _verify(secret)
    assert revoked is not None and revoked.revoked_at is not None


def test_bad_input() -> None:
    code, out = _invoke("keys", "create", "--user", "alice", "--scopes", "chat,root")
    assert code == 2 and "comma-separated list of chat, threads, admin" in out
    code, out = _invoke("keys", "create", "--scopes", "chat")
    assert code == 2 and "--user" in out
    code, out = _invoke("keys", "revoke", "nope")
    assert code == 1 and "no API key 'nope'" in out

"""Health checks: the registry, the runner (concurrency, timeouts, errors, redaction) and every built-in check for real.

Databases are real SQLite files migrated by Alembic; model endpoints are a loopback HTTP server, a closed port and a
port that never answers; disk usage is injected.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import anyio
import pytest

from miniagent.errors import UserError
from miniagent.observability._health import (
    Check,
    CheckRegistry,
    CheckResult,
    HealthReport,
    data_dir_check,
    database_check,
    default_registry,
    disk_space_check,
    local_model_check,
    model_check,
    register_check,
    run_checks,
    sqlite_extension_check,
    unregister_check,
    versions_check,
)
from miniagent.observability._health_system import _migration_result, _package_heads
from miniagent.settings import Settings
from miniagent.store import SQLStore

from .models_server import closed_port, models_server, silent_port

pytestmark = pytest.mark.anyio

SECRET = "sk-test-SECRET123"
MiB = 1024 * 1024


async def _ok(settings: Settings) -> CheckResult:
    return CheckResult("ok", "fine")


async def _one(check: Check, settings: Settings | None = None, *, timeout_s: float = 30.0) -> CheckResult:
    report = await run_checks(settings or Settings(), registry=CheckRegistry([check]), timeout_s=timeout_s)
    assert [o.name for o in report.outcomes] == [check.name]
    return report.outcomes[0].result


# ---- registry ---------------------------------------------------------------------------------------------


def test_registry_refuses_duplicates_and_unknown_names() -> None:
    registry = CheckRegistry([Check("a", _ok)])
    with pytest.raises(UserError, match="already registered"):
        registry.register(Check("a", _ok))
    replacement = Check("a", _ok, critical=False)
    registry.register(replacement, replace=True)
    assert registry.get("a") is replacement
    with pytest.raises(UserError, match=r"No check named 'b' is registered \(registered: a\)"):
        registry.unregister("b")
    assert registry.unregister("a") is replacement
    assert len(registry) == 0 and "a" not in registry
    with pytest.raises(UserError, match="Only a `Check`"):
        registry.register(_ok)  # type: ignore[arg-type]  # the mistake under test


def test_copy_is_independent() -> None:
    registry = CheckRegistry([Check("a", _ok)])
    copy = registry.copy()
    copy.register(Check("b", _ok))
    assert registry.names() == ["a"] and copy.names() == ["a", "b"]


def test_default_registry_holds_the_builtin_checks_and_takes_more() -> None:
    assert default_registry.names() == [
        "default model",
        "database",
        "redis",
        "queue",
        "data dir",
        "disk space",
        "sqlite extensions",
        "versions",
    ]
    check = register_check(Check("broker", _ok))
    try:
        assert "broker" in default_registry
    finally:
        assert unregister_check("broker") is check
    assert "broker" not in default_registry


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "non-empty `name`"),
        ({"kind": "sometimes"}, "`kind` must be one of liveness, readiness, both"),
        ({"timeout_s": 0}, "`timeout_s` must be a positive number"),
        ({"timeout_s": float("inf")}, "`timeout_s` must be a positive number"),
    ],
)
def test_check_validates_its_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "x", "run": _ok, **kwargs}
    with pytest.raises(UserError, match=message):
        Check(**fields)  # type: ignore[arg-type]  # wrong on purpose


def test_check_result_validates_its_status() -> None:
    with pytest.raises(UserError, match="`status` must be one of ok, warn, fail, skip, got 'good'"):
        CheckResult("good", "x")  # type: ignore[arg-type]  # wrong on purpose


async def test_run_checks_validates_its_arguments() -> None:
    with pytest.raises(UserError, match="`kind` must be one of"):
        await run_checks(Settings(), kind="startup", registry=CheckRegistry())  # type: ignore[arg-type]
    with pytest.raises(UserError, match="`timeout_s` must be a positive number"):
        await run_checks(Settings(), registry=CheckRegistry(), timeout_s=-1)
    with pytest.raises(UserError, match="`registry` must be a CheckRegistry"):
        await run_checks(Settings(), registry=[Check("a", _ok)])  # type: ignore[arg-type]


def test_model_check_and_disk_check_validate_their_arguments() -> None:
    with pytest.raises(UserError, match="`spec` must be a model string"):
        model_check("  ")
    with pytest.raises(UserError, match="`probe_timeout_s` must be a positive number"):
        model_check("test", probe_timeout_s=0)
    with pytest.raises(UserError, match="0 <= fail_below_bytes <= warn_below_bytes"):
        disk_space_check(warn_below_bytes=10, fail_below_bytes=20)
    with pytest.raises(UserError, match="whole numbers of bytes"):
        disk_space_check(warn_below_bytes=1.5)  # type: ignore[arg-type]  # wrong on purpose


# ---- runner -----------------------------------------------------------------------------------------------


async def test_kind_selects_liveness_or_readiness_checks() -> None:
    registry = CheckRegistry(
        [Check("live", _ok, kind="liveness"), Check("ready", _ok, kind="readiness"), Check("both", _ok, kind="both")]
    )
    live = await run_checks(Settings(), kind="liveness", registry=registry)
    ready = await run_checks(Settings(), kind="readiness", registry=registry)
    every = await run_checks(Settings(), registry=registry)
    assert [o.name for o in live.outcomes] == ["live", "both"]
    assert [o.name for o in ready.outcomes] == ["ready", "both"]
    assert [o.name for o in every.outcomes] == ["live", "ready", "both"]


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to have started: run one after the other, both would time out.
    started = {"a": anyio.Event(), "b": anyio.Event()}

    def waiting_for(me: str, other: str) -> Check:
        async def run(settings: Settings) -> CheckResult:
            started[me].set()
            await started[other].wait()
            return CheckResult("ok", f"{me} saw {other}")

        return Check(me, run)

    report = await run_checks(
        Settings(), registry=CheckRegistry([waiting_for("a", "b"), waiting_for("b", "a")]), timeout_s=30
    )
    assert [(o.name, o.result.status, o.result.detail) for o in report.outcomes] == [
        ("a", "ok", "a saw b"),
        ("b", "ok", "b saw a"),
    ]


async def test_a_hanging_check_fails_and_the_others_still_report() -> None:
    async def hangs(settings: Settings) -> CheckResult:
        await anyio.Event().wait()
        raise AssertionError("unreachable")

    registry = CheckRegistry([Check("hangs", hangs, timeout_s=0.05), Check("fine", _ok)])
    report = await run_checks(Settings(), registry=registry, timeout_s=30)
    hung = report.outcomes[0].result
    assert (hung.status, hung.detail) == ("fail", "did not answer within 0.05 s")
    assert hung.fix is not None
    assert report.outcomes[1].result.status == "ok"
    assert not report.ok and report.status == "fail"


async def test_the_runner_timeout_applies_to_checks_without_their_own() -> None:
    async def hangs(settings: Settings) -> CheckResult:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    result = await _one(Check("hangs", hangs), timeout_s=0.05)
    assert (result.status, result.detail) == ("fail", "did not answer within 0.05 s")


async def test_a_check_that_raises_or_returns_junk_fails() -> None:
    async def raises(settings: Settings) -> CheckResult:
        raise RuntimeError("broker said no")

    async def junk(settings: Settings) -> CheckResult:
        return "fine"  # type: ignore[return-value]  # the mistake under test

    report = await run_checks(Settings(), registry=CheckRegistry([Check("raises", raises), Check("junk", junk)]))
    assert [(o.result.status, o.result.detail) for o in report.outcomes] == [
        ("fail", "the check raised RuntimeError: broker said no"),
        ("fail", "the check returned str, not a CheckResult"),
    ]


async def test_report_status_and_json() -> None:
    async def fails(settings: Settings) -> CheckResult:
        return CheckResult("fail", "down", fix="start it")

    async def warns(settings: Settings) -> CheckResult:
        return CheckResult("warn", "slow")

    async def skips(settings: Settings) -> CheckResult:
        return CheckResult("skip", "not configured")

    degraded = await run_checks(
        Settings(), registry=CheckRegistry([Check("cache", fails, critical=False), Check("ok", _ok)])
    )
    assert degraded.ok and degraded.status == "warn"
    warned = await run_checks(Settings(), registry=CheckRegistry([Check("w", warns), Check("s", skips)]))
    assert warned.ok and warned.status == "warn"
    skipped = await run_checks(Settings(), registry=CheckRegistry([Check("s", skips)]))
    assert skipped.ok and skipped.status == "ok"
    broken = await run_checks(Settings(), registry=CheckRegistry([Check("db", fails, kind="both")]))
    assert not broken.ok and broken.status == "fail"
    data = json.loads(broken.to_json())
    assert data["status"] == "fail" and data["ok"] is False
    (entry,) = data["checks"]
    assert {k: v for k, v in entry.items() if k != "duration_s"} == {
        "name": "db",
        "kind": "both",
        "critical": True,
        "status": "fail",
        "detail": "down",
        "fix": "start it",
    }
    assert entry["duration_s"] >= 0
    assert HealthReport(()).ok and broken.get("db") is broken.outcomes[0] and broken.get("x") is None


async def test_secrets_are_scrubbed_from_what_checks_say(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    async def leaky(settings: Settings) -> CheckResult:
        return CheckResult(
            "fail", f"sent key {SECRET} to postgresql://app:hunter2pw@db/app", fix=f"Authorization: Bearer {SECRET}"
        )

    result = await _one(Check("leaky", leaky))
    assert "SECRET123" not in result.detail + (result.fix or "")
    assert "hunter2pw" not in result.detail


# ---- database ---------------------------------------------------------------------------------------------


def _sqlite(path: Path) -> Settings:
    return Settings(database_url=f"sqlite+aiosqlite:///{path}")


async def test_database_at_the_latest_migration_is_ok(tmp_path: Path) -> None:
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'head.db'}")
    await store.close()
    heads, _ = _package_heads()
    result = await _one(database_check(), _sqlite(tmp_path / "head.db"))
    assert result.status == "ok", result
    assert f"at the latest migration ({', '.join(heads)})" in result.detail


async def test_sqlite_database_at_an_older_revision_warns(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        assert await store.migrate("0001") == "0001"
    finally:
        await store.close()
    result = await _one(database_check(), _sqlite(tmp_path / "old.db"))
    assert result.status == "warn"
    assert "is at revision 0001" in result.detail and "migrates itself" in result.detail
    assert result.fix is not None and "miniagent migrate" in result.fix


async def test_fresh_default_database_warns_and_is_not_created(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    result = await _one(database_check(), settings)
    assert result.status == "warn" and "does not exist yet" in result.detail
    assert result.fix is not None and "miniagent migrate" in result.fix
    assert not (tmp_path / "data").exists()


async def test_a_file_that_is_not_a_database_fails(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    result = await _one(database_check(), _sqlite(tmp_path / "junk.db"))
    assert result.status == "fail" and "cannot be read" in result.detail
    (tmp_path / "dir.db").mkdir()
    result = await _one(database_check(), _sqlite(tmp_path / "dir.db"))
    assert result.status == "fail" and "is a directory" in result.detail


async def test_unreachable_database_server_fails_without_showing_the_password() -> None:
    url = f"postgresql+asyncpg://app:pw-SECRET-42@127.0.0.1:{closed_port()}/app"
    result = await _one(database_check(), Settings(database_url=url))
    assert result.status == "fail" and "is unreachable" in result.detail
    assert "pw-SECRET-42" not in result.detail
    assert result.fix is not None and "MINIAGENT_DATABASE_URL" in result.fix


def test_migration_level_of_a_database_server() -> None:
    behind = _migration_result(("0001",), ["0003"], {"0001", "0002", "0003"}, where="db", self_migrating=False)
    assert (behind.status, behind.detail, behind.fix) == (
        "fail",
        "db is at revision 0001 (latest: 0003)",
        "run `miniagent migrate`",
    )
    empty = _migration_result((), ["0003"], {"0003"}, where="db", self_migrating=False)
    assert empty.status == "fail" and "not migrated yet" in empty.detail
    ahead = _migration_result(("0009",), ["0003"], {"0003"}, where="db", self_migrating=True)
    assert ahead.status == "fail" and "does not know" in ahead.detail


async def test_database_ahead_of_this_package_fails(tmp_path: Path) -> None:
    store = await SQLStore.open(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    await store.close()
    with sqlite3.connect(tmp_path / "new.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.close()
    result = await _one(database_check(), _sqlite(tmp_path / "new.db"))
    assert result.status == "fail" and "9999, which this miniagent does not know" in result.detail


# ---- data dir and disk ------------------------------------------------------------------------------------


class _Usage(NamedTuple):
    total: int
    used: int
    free: int


@pytest.mark.parametrize(("free", "status"), [(5 * 1024 * MiB, "ok"), (500 * MiB, "warn"), (50 * MiB, "fail")])
async def test_disk_space_thresholds(tmp_path: Path, free: int, status: str) -> None:
    seen: list[str] = []

    def usage(path: str) -> _Usage:
        seen.append(path)
        return _Usage(total=100 * 1024 * MiB, used=0, free=free)

    result = await _one(disk_space_check(disk_usage=usage), Settings(data_dir=tmp_path / "not-yet"))
    assert result.status == status
    assert seen == [str(tmp_path)]  # the nearest existing directory
    assert ("free some space" in (result.fix or "")) is (status != "ok")


async def test_disk_space_thresholds_are_configurable(tmp_path: Path) -> None:
    def usage(path: str) -> _Usage:
        return _Usage(total=10 * MiB, used=0, free=5 * MiB)

    check = disk_space_check(warn_below_bytes=2 * MiB, fail_below_bytes=MiB, disk_usage=usage)
    assert (await _one(check, Settings(data_dir=tmp_path))).status == "ok"


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


async def test_data_dir_is_writable_or_can_be_created(tmp_path: Path) -> None:
    assert (await _one(data_dir_check(), Settings(data_dir=tmp_path))).status == "ok"
    assert _entries(tmp_path) == []  # the probe file is gone
    later = await _one(data_dir_check(), Settings(data_dir=tmp_path / "a" / "b"))
    assert later.status == "ok" and "will be created" in later.detail
    (tmp_path / "file").write_text("x")
    result = await _one(data_dir_check(), Settings(data_dir=tmp_path / "file"))
    assert result.status == "fail" and "is a file" in result.detail
    assert result.fix is not None and "MINIAGENT_DATA_DIR" in result.fix
    below = await _one(data_dir_check(), Settings(data_dir=tmp_path / "file" / "sub"))
    assert below.status == "fail" and "cannot be created" in below.detail


# ---- SQLite extensions ------------------------------------------------------------------------------------


@pytest.fixture
def fresh_driver_cache() -> Iterator[None]:
    from miniagent.store._sqlite_driver import sqlite_vec_path

    sqlite_vec_path.cache_clear()
    yield
    sqlite_vec_path.cache_clear()


async def test_sqlite_vec_loads(tmp_path: Path) -> None:
    result = await _one(sqlite_extension_check(), Settings(data_dir=tmp_path))
    assert result.status == "ok" and result.detail.startswith("sqlite-vec v")


@pytest.mark.usefixtures("fresh_driver_cache")
async def test_sqlite_vec_missing_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sqlite_vec", None)  # as in an install without the 'memory' extra
    result = await _one(sqlite_extension_check(), Settings(data_dir=tmp_path))
    assert result.status == "warn" and "sqlite-vec is not installed" in result.detail
    assert result.fix is not None and "miniagent[memory]" in result.fix


async def test_sqlite_extensions_are_skipped_for_a_database_server() -> None:
    result = await _one(sqlite_extension_check(), Settings(database_url="postgresql+asyncpg://u@localhost/db"))
    assert result.status == "skip" and "not SQLite" in result.detail


# ---- local model ------------------------------------------------------------------------------------------


def _gguf(path: Path, version: int = 3) -> Path:
    path.write_bytes(b"GGUF" + version.to_bytes(4, "little") + bytes(64))
    return path


async def test_local_model_file_with_a_gguf_header_is_ok(tmp_path: Path) -> None:
    model = _gguf(tmp_path / "m.gguf")
    result = await _one(local_model_check(model))
    assert result.status == "ok" and "GGUF v3" in result.detail and "llama-cpp-python installed" in result.detail
    via_settings = await _one(local_model_check(), Settings(local_model_path=model))
    assert via_settings.status == "ok" and str(model) in via_settings.detail


async def test_bundled_local_model_is_found(tmp_path: Path) -> None:
    from miniagent.models.local import bundled_model_path

    bundled = bundled_model_path()
    assert bundled is not None, "the test environment installs the 'local' extra"
    result = await _one(local_model_check())
    assert result.status == "ok" and str(bundled) in result.detail


async def test_bad_local_model_files(tmp_path: Path) -> None:
    (tmp_path / "text.gguf").write_text("not a model at all")
    cases = {
        tmp_path / "missing.gguf": ("fail", "does not exist"),
        tmp_path: ("fail", "is a directory"),
        tmp_path / "text.gguf": ("fail", "not a GGUF file"),
        _gguf(tmp_path / "future.gguf", version=42): ("warn", "unknown GGUF version"),
    }
    for path, (status, words) in cases.items():
        result = await _one(local_model_check(path))
        assert result.status == status and words in result.detail, (path, result)
        assert result.fix is not None and ("MINIAGENT_LOCAL_MODEL_PATH" in result.fix or "GGUF" in result.fix)


async def test_local_model_spec_is_checked_as_a_file(tmp_path: Path) -> None:
    result = await _one(model_check(f"local:{tmp_path / 'absent.gguf'}"))
    assert result.status == "fail" and "does not exist" in result.detail


# ---- model endpoints --------------------------------------------------------------------------------------


async def test_openai_compatible_endpoint_answers_and_lists_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with models_server(key=SECRET, models=["qwen", "llama"]) as server:
        ok = await _one(model_check(f"openai-compatible:{server.base_url}#qwen"))
        unlisted = await _one(model_check(f"openai-compatible:{server.base_url}?profile=vllm#mistral"))
    assert ok.status == "ok" and "authenticated" in ok.detail and server.base_url in ok.detail
    assert unlisted.status == "warn" and "'mistral' is not among its models (qwen, llama)" in unlisted.detail
    assert server.seen_keys == [SECRET, SECRET]


async def test_rejected_key_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with models_server(key="sk-the-right-one", models=["qwen"]) as server:
        result = await _one(model_check(f"openai-compatible:{server.base_url}#qwen"))
    assert result.status == "fail" and "key rejected" in result.detail and "HTTP 401" in result.detail
    assert result.fix is not None and "OPENAI_API_KEY" in result.fix
    assert "SECRET123" not in result.detail + result.fix


async def test_compatible_server_that_wants_a_key_says_so() -> None:
    with models_server(key="sk-the-right-one", models=["qwen"]) as server:
        result = await _one(model_check(f"openai-compatible:{server.base_url}#qwen"))
    assert result.status == "fail" and "the server wants a key" in result.detail
    assert result.fix == "set OPENAI_API_KEY to the server's API key"


async def test_server_error_is_shown_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with models_server(key=SECRET, models=["qwen"]) as server:
        result = await _one(model_check(f"openai-compatible:{server.root}/broken/v1#qwen"))
    assert result.status == "fail" and "server error" in result.detail and "HTTP 500" in result.detail
    assert "internal error handling" in result.detail  # the body is shown...
    assert "SECRET123" not in result.detail  # ...with the echoed key hidden


async def test_unreachable_endpoint_fails_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = await _one(model_check(f"openai-compatible:{url}#qwen"))
    assert result.status == "fail"
    assert result.detail == f"unreachable: connection refused at {url}"


async def test_endpoint_that_never_answers_fails() -> None:
    with silent_port() as port:
        result = await _one(model_check(f"openai-compatible:http://127.0.0.1:{port}/v1#qwen", probe_timeout_s=0.2))
    assert result.status == "fail" and result.detail == f"no answer from http://127.0.0.1:{port}/v1 within 0.2 s"


async def test_openai_needs_its_key_and_uses_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = await _one(model_check("openai:gpt-4o-mini"))
    assert (missing.status, missing.detail) == ("fail", "OPENAI_API_KEY is not set")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with models_server(key=SECRET, models=["gpt-4o-mini"]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        ok = await _one(model_check("openai:gpt-4o-mini"))
        responses = await _one(model_check("openai-responses:gpt-4o-mini"))
    assert ok.status == "ok" and responses.status == "ok"


async def test_anthropic_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = await _one(model_check("anthropic:claude-x"))
    assert (missing.status, missing.detail) == ("fail", "ANTHROPIC_API_KEY is not set")
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with models_server(key=SECRET, models=["claude-x"]) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root)
        ok = await _one(model_check("anthropic:claude-x"))
        unknown = await _one(model_check("anthropic:claude-nope"))
    with models_server(key="sk-ant-other-key", models=["claude-x"]) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root)
        rejected = await _one(model_check("anthropic:claude-x"))
    assert ok.status == "ok" and "'claude-x' available" in ok.detail
    assert unknown.status == "warn" and "model 'claude-nope' not found" in unknown.detail
    assert rejected.status == "fail" and rejected.fix is not None and "ANTHROPIC_API_KEY" in rejected.fix
    assert SECRET not in ok.detail + unknown.detail + rejected.detail


async def test_default_model_check_follows_the_settings(tmp_path: Path) -> None:
    assert (await _one(model_check(), Settings(default_model="test"))).detail.startswith("test: ")
    missing = await _one(model_check(), Settings(default_model=f"local:{tmp_path / 'x.gguf'}"))
    assert missing.status == "fail"


async def test_unknown_and_malformed_model_strings() -> None:
    typo = await _one(model_check("opnai:gpt-4o"))
    assert typo.status == "fail" and "did you mean 'openai'" in typo.detail
    no_model = await _one(model_check("openai-compatible:http://127.0.0.1:1/v1"))
    assert no_model.status == "fail" and "names no model" in no_model.detail
    no_url = await _one(model_check("openai-compatible:localhost#m"))
    assert no_url.status == "fail" and "no http(s) URL" in no_url.detail
    assert (await _one(model_check("openai:"))).status == "fail"


def test_model_check_names_hide_url_credentials() -> None:
    check = model_check("openai-compatible:http://user:pw-hidden@127.0.0.1:8000/v1#m")
    assert check.name == "model openai-compatible:http://127.0.0.1:8000/v1#m"


# ---- versions ---------------------------------------------------------------------------------------------


async def test_versions_are_information() -> None:
    from miniagent import __version__

    result = await _one(versions_check())
    assert result.status == "ok" and f"miniagent {__version__}" in result.detail and "Python 3." in result.detail

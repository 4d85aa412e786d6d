"""The app's edge, on the real app under uvicorn: request ids, size limit, CORS, probes, metrics, errors, OpenAPI."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import SecretStr

from miniagent import Agent
from miniagent.errors import UserError
from miniagent.observability import Check, CheckRegistry, CheckResult, configure
from miniagent.server import AgentRegistry, ApiError, create_app
from miniagent.server._deps import PrincipalDep
from miniagent.settings import Settings
from miniagent.testing import EchoModel, ManualClock

from .conftest import ApiKeyFactory, AppFactory, LiveServer


def _with_test_routes(app: FastAPI) -> FastAPI:
    router = APIRouter()

    @router.get("/test/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, Any]:
        return {"tenant": principal.tenant_id, "user": principal.user_id, "via": principal.via}

    @router.post("/test/echo")
    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"size": len(json.dumps(body))}

    @router.get("/test/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.include_router(router)
    return app


# ---- request id ----------------------------------------------------------------------------------------------


def test_request_id_in_and_out(make_app: AppFactory, live_server: LiveServer) -> None:
    with live_server(make_app()) as url:
        given = httpx.get(f"{url}/healthz", headers={"X-Request-ID": "req-abc.123"})
        assert given.headers["x-request-id"] == "req-abc.123"
        fresh = [httpx.get(f"{url}/healthz").headers["x-request-id"] for _ in range(2)]
        assert fresh[0] != fresh[1] and all(len(v) == 32 for v in fresh)
        for bad in ("has space", "x" * 201, "evil\tvalue"):
            replaced = httpx.get(f"{url}/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
            assert replaced != bad and len(replaced) == 32
        not_found = httpx.get(f"{url}/nowhere", headers={"X-Request-ID": "r-404"})
        assert not_found.status_code == 404 and not_found.headers["x-request-id"] == "r-404"
        assert not_found.json()["error"]["code"] == "not_found"


# ---- size limit ------------------------------------------------------------------------------------------------


@pytest.fixture
def small_app(make_app: AppFactory, server_settings: Settings) -> FastAPI:
    return _with_test_routes(make_app(server_settings.model_copy(update={"max_request_bytes": 4096})))


def test_oversized_body_with_content_length_is_refused_before_reading(
    small_app: FastAPI, live_server: LiveServer
) -> None:
    with live_server(small_app) as url:
        body = json.dumps({"text": "x" * 60_000}).encode()
        response = httpx.post(f"{url}/test/echo", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "request_too_large" and error["max_bytes"] == 4096
        assert "4096 bytes" in error["message"] and response.headers["x-request-id"]
        small = httpx.post(f"{url}/test/echo", json={"text": "x" * 100})
        assert small.status_code == 200 and small.json() == {"size": 112}


def test_oversized_chunked_body_is_refused(small_app: FastAPI, live_server: LiveServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(20):
            yield b"y" * 1000
        yield b'"}'

    with live_server(small_app) as url:
        response = httpx.post(f"{url}/test/echo", content=chunks(), headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


def test_openai_paths_get_openai_shaped_errors(small_app: FastAPI, live_server: LiveServer) -> None:
    with live_server(small_app) as url:
        response = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 10_000)
        assert response.status_code == 413
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["code"] == "request_too_large"
        unauthorized = httpx.get(f"{url}/v1/models")
        assert unauthorized.status_code == 401
        assert unauthorized.json()["error"]["param"] is None


# ---- errors ----------------------------------------------------------------------------------------------------


def test_validation_and_malformed_json_are_clear_422s(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    admin = {"Authorization": f"Bearer {api_key(scopes=('admin',))}"}
    with live_server(make_app()) as url:
        broken = httpx.post(
            f"{url}/api/v1/admin/keys", content=b'{"user_id": ', headers={**admin, "Content-Type": "application/json"}
        )
        assert broken.status_code == 422
        assert broken.json()["error"]["code"] == "invalid_request"
        assert "not valid JSON" in broken.json()["error"]["message"]
        wrong = httpx.post(f"{url}/api/v1/admin/keys", json={"user_id": 5, "scopes": ["root"]}, headers=admin)
        error = wrong.json()["error"]
        assert wrong.status_code == 422 and error["code"] == "invalid_request"
        assert "body field 'user_id'" in error["message"] and "body field 'scopes.0'" in error["message"]
        assert error["param"] == "user_id" and "Traceback" not in wrong.text


def test_an_unreadable_body_is_a_422_natively_and_a_400_under_v1(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    headers = {"Authorization": f"Bearer {api_key(scopes=('admin', 'chat'))}", "Content-Type": "application/json"}
    not_utf8 = b"}1f\xff\xfe\x1a"
    with live_server(make_app()) as url:
        native = httpx.post(f"{url}/api/v1/admin/keys", content=not_utf8, headers=headers)
        assert native.status_code == 422, native.text
        error = native.json()["error"]
        assert error["code"] == "invalid_request" and "could not be read" in error["message"]
        openai = httpx.post(f"{url}/v1/chat/completions", content=not_utf8, headers=headers)
        assert openai.status_code == 400, openai.text
        assert openai.json()["error"]["type"] == "invalid_request_error" and openai.json()["error"]["param"] == "body"


def test_method_not_allowed_lists_every_method_of_the_path(make_app: AppFactory, live_server: LiveServer) -> None:
    with live_server(make_app()) as url:
        response = httpx.delete(f"{url}/api/v1/threads")
        assert response.status_code == 405
        assert response.headers["Allow"] == "GET, POST"  # one route per method: all of the path's are named
        assert response.json()["error"]["code"] == "method_not_allowed" and "GET, POST" in response.text
        assert httpx.put(f"{url}/healthz").headers["Allow"] == "GET"


def test_readiness_probes_between_writes_keep_the_store_working(
    make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer
) -> None:
    """The database check opens the SQLite file with the store's own SQLite library: a second library in the process
    would not see the store's locks and, closing its connection, delete the WAL under the store's open connections
    (the next connections the store opened failed with "disk I/O error": 503s).
    """
    headers = {"Authorization": f"Bearer {api_key(scopes=('threads',))}"}
    burst = 12  # more than the store's pool keeps: new connections are opened after each probe

    async def rounds(url: str) -> tuple[list[int], httpx.Response]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
            for _ in range(3):
                created = await asyncio.gather(*(client.post("/api/v1/threads", json={}) for _ in range(burst)))
                statuses += [r.status_code for r in created]
                statuses.append((await client.get("/readyz")).status_code)
            listed = await client.get("/api/v1/threads", params={"limit": 100})
        return statuses, listed

    with live_server(make_app()) as url:
        statuses, listed = asyncio.run(rounds(url))
    assert statuses == ([201] * burst + [200]) * 3
    assert listed.status_code == 200 and len(listed.json()["data"]) == 3 * burst  # every write is there


def test_a_crash_is_a_500_without_internals(make_app: AppFactory, live_server: LiveServer) -> None:
    with live_server(_with_test_routes(make_app())) as url:
        response = httpx.get(f"{url}/test/crash", headers={"X-Request-ID": "crash-1"})
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal_error" and "crash-1" in error["message"]
        assert "hunter2" not in response.text and "RuntimeError" not in response.text
        assert response.headers["x-request-id"] == "crash-1"


def test_unknown_agent_lists_the_available_ones() -> None:
    registry = AgentRegistry({"support": Agent(EchoModel()), "sales": Agent(EchoModel())})
    with pytest.raises(ApiError) as caught:
        registry.get("billing")
    error = caught.value
    assert (error.status, error.code, error.extra) == (404, "agent_not_found", {"available": ["support", "sales"]})
    assert "'support', 'sales'" in error.message
    with pytest.raises(UserError, match="Two served agents are called 'sales'"):
        registry.add(Agent(EchoModel()), name="sales")
    with pytest.raises(UserError, match="must be miniagent Agents"):
        AgentRegistry({"x": object()})  # type: ignore[arg-type]  # an untyped caller


# ---- CORS ------------------------------------------------------------------------------------------------------


def test_cors_preflight(make_app: AppFactory, server_settings: Settings, live_server: LiveServer) -> None:
    settings = server_settings.model_copy(update={"cors_origins": ["https://app.example"]})
    with live_server(make_app(settings)) as url:
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        allowed = httpx.options(f"{url}/v1/chat/completions", headers={"Origin": "https://app.example", **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        denied = httpx.options(f"{url}/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight})
        assert denied.status_code == 400 and "access-control-allow-origin" not in denied.headers
        simple = httpx.get(f"{url}/healthz", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    with live_server(make_app()) as url:  # no origins configured: no CORS headers at all
        plain = httpx.get(f"{url}/healthz", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers


# ---- probes and metrics ----------------------------------------------------------------------------------------


def test_healthz_and_readyz(make_app: AppFactory, live_server: LiveServer) -> None:
    with live_server(make_app()) as url:
        live = httpx.get(f"{url}/healthz")
        assert live.status_code == 200 and live.json()["ok"] is True
        names = {c["name"] for c in live.json()["checks"]}
        assert "data dir" in names and "database" not in names
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200
        ready_names = {c["name"] for c in ready.json()["checks"]}
        assert "database" in ready_names and "default model" not in ready_names  # no provider request per probe
        database = next(c for c in ready.json()["checks"] if c["name"] == "database")
        assert database["status"] == "ok" and "0005" in database["detail"]


def test_readyz_fails_with_a_critical_check_and_is_cached(make_app: AppFactory, live_server: LiveServer) -> None:
    state = {"healthy": True, "runs": 0}

    async def dependency(settings: Settings) -> CheckResult:
        state["runs"] += 1
        return CheckResult("ok", "up") if state["healthy"] else CheckResult("fail", "down", fix="restart it")

    registry = CheckRegistry([Check("queue", dependency, kind="readiness", critical=True)])
    clock = ManualClock()
    app = make_app(health_registry=registry, clock=clock)
    app.state.miniagent.health.cache_s = 5.0
    with live_server(app) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        state["healthy"] = False
        assert httpx.get(f"{url}/readyz").status_code == 200  # cached
        assert state["runs"] == 1
        clock.advance(5.0)
        failed = httpx.get(f"{url}/readyz")
        assert failed.status_code == 503 and state["runs"] == 2
        body = failed.json()
        assert body["status"] == "fail" and body["checks"][0]["fix"] == "restart it"
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness does not run readiness checks


def test_metrics(make_app: AppFactory, live_server: LiveServer) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    with live_server(make_app(metrics_registry=registry)) as url:
        httpx.get(f"{url}/healthz")
        httpx.delete(f"{url}/api/v1/admin/keys/some-id")
        httpx.get(f"{url}/no/such/path/123")
        text = httpx.get(f"{url}/metrics").text
    assert 'miniagent_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/api/v1/admin/keys/{key_id}",status="401"' in text  # the template, not the id
    assert 'route="unmatched",status="404"' in text and "/no/such/path" not in text


def test_metrics_on_a_separate_port(make_app: AppFactory, server_settings: Settings, live_server: LiveServer) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = make_app(server_settings.model_copy(update={"metrics_port": port}))
    with live_server(app) as url:
        httpx.get(f"{url}/healthz")
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "miniagent_http_request_duration_seconds" in text


def test_access_log_line(make_app: AppFactory, api_key: ApiKeyFactory, live_server: LiveServer) -> None:
    secret = api_key(tenant="acme", user="alice", scopes=("admin",))
    out = io.StringIO()
    handle = configure(log_format="json", stream=out, tracing=False, metrics=False, stdlib_logging=False)
    try:
        with live_server(make_app()) as url:
            httpx.get(
                f"{url}/api/v1/admin/keys", headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "log-1"}
            )
    finally:
        handle.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if '"http_request"' in line]
    (line,) = [entry for entry in lines if entry.get("correlation_id") == "log-1"]
    assert line["status"] == 200 and line["route"] == "/api/v1/admin/keys" and line["method"] == "GET"
    assert line["tenant_id"] == "acme" and line["auth_via"] == "api-key" and line["duration_ms"] >= 0
    assert line["user_id"] != "alice" and len(line["user_id"]) == 16  # hashed, as observability does
    assert secret not in out.getvalue() and "authorization" not in out.getvalue().lower()


# ---- OpenAPI ---------------------------------------------------------------------------------------------------


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_is_valid_and_complete(make_app: AppFactory, live_server: LiveServer) -> None:
    import schemathesis
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    with live_server(make_app()) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
        docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert schema["openapi"].startswith("3.1")
    OPENAPI_31_VALIDATOR.validate(schema)  # the official OpenAPI 3.1 meta-schema
    loaded = schemathesis.openapi.from_dict(schema)
    assert len(list(loaded.get_all_operations())) == sum(len(p) for p in schema["paths"].values())
    components = schema["components"]["schemas"]
    for ref in _refs(schema):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in components, ref
    assert {"bearer", "apiKey"} <= set(schema["components"]["securitySchemes"])
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary") and operation.get("description"), where
            responses = operation["responses"]
            success = [code for code in responses if code.startswith("2")]
            assert success, where
            if path.startswith(("/v1", "/api/v1")):
                assert operation["security"] == [{"bearer": []}, {"apiKey": []}], where
                assert "401" in responses and "403" in responses, where
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    for path in ("/healthz", "/readyz", "/api/v1/admin/keys", "/api/v1/admin/keys/{key_id}"):
        assert path in schema["paths"]


# ---- configuration ---------------------------------------------------------------------------------------------


def test_agents_from_settings_and_config(server_settings: Settings, tmp_path: Path) -> None:
    config = tmp_path / "agents.toml"
    config.write_text('[agents]\nhelper = "tests.server.served_agents:support"\n')
    settings = server_settings.model_copy(
        update={"server_agents": "tests.server.served_agents:support, billing=tests.server.served_agents:billing",
                "server_config": config}
    )  # fmt: skip
    app = create_app(settings)
    assert app.state.miniagent.agents.names() == ["helper", "support", "billing"]
    default = create_app(server_settings)
    assert default.state.miniagent.agents.names() == ["default"]
    bad = server_settings.model_copy(update={"server_agents": "tests.server.served_agents:nothing_here"})
    with pytest.raises(UserError, match="not a miniagent Agent"):
        create_app(bad)
    missing = server_settings.model_copy(update={"server_agents": "no_such_module_xyz:agent"})
    with pytest.raises(UserError, match="Cannot import 'no_such_module_xyz'"):
        create_app(missing)
    config.write_text("agents = 3\n")
    with pytest.raises(UserError, match=r"needs an \[agents\] table"):
        create_app(server_settings.model_copy(update={"server_config": config}))
    with pytest.raises(UserError, match="empty"):
        create_app(server_settings, agents=[])


def test_pepper_is_required_with_a_database_server(server_settings: Settings, tmp_path: Path) -> None:
    remote = server_settings.model_copy(
        update={"database_url": "postgresql+asyncpg://u:p@127.0.0.1:1/db", "server_pepper": None}
    )
    with pytest.raises(UserError, match="MINIAGENT_SERVER_PEPPER"):
        create_app(remote)
    embedded = server_settings.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'e' / 'x.db'}", "server_pepper": None}
    )
    first = create_app(embedded).state.miniagent.auth.pepper
    assert create_app(embedded).state.miniagent.auth.pepper == first  # generated once, then kept
    pepper_file = tmp_path / "e" / "server_pepper"
    assert pepper_file.stat().st_mode & 0o777 == 0o600
    short = server_settings.model_copy(update={"server_pepper": SecretStr("short")})
    with pytest.raises(UserError, match="too short"):
        create_app(short)


def test_jwt_settings_must_be_complete(server_settings: Settings) -> None:
    with pytest.raises(UserError, match="MINIAGENT_JWT_AUDIENCE"):
        create_app(server_settings.model_copy(update={"jwt_issuer": "https://issuer.example"}))


def test_importing_the_server_package_is_light() -> None:
    code = "import sys, miniagent, miniagent.server; print('fastapi' in sys.modules, 'starlette' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_the_store_is_opened_by_the_lifespan(make_app: AppFactory) -> None:
    from fastapi.testclient import TestClient

    app = make_app()
    state = app.state.miniagent
    assert not state.started
    with pytest.raises(RuntimeError, match="lifespan has not run"):
        _ = state.store
    with TestClient(app) as client:
        assert state.started and client.get("/healthz").status_code == 200
    assert not state.started


def test_graceful_shutdown_finishes_the_request_in_flight(make_app: AppFactory) -> None:
    import threading

    import anyio
    import uvicorn

    arrived = threading.Event()
    release = threading.Event()
    app = make_app()
    router = APIRouter()

    @router.get("/test/slow")
    async def slow() -> dict[str, str]:
        arrived.set()
        await anyio.to_thread.run_sync(release.wait)
        return {"done": "yes"}

    app.include_router(router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    results: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: results.append(httpx.get(f"http://127.0.0.1:{port}/test/slow", timeout=60))
    )
    try:
        while not server.started:
            assert thread.is_alive()
            arrived.wait(0.01)
        client.start()
        assert arrived.wait(60)
        server.should_exit = True  # what SIGTERM does
        while True:  # wait until it stopped accepting connections: it is shutting down
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError:
                break
            arrived.wait(0.01)
        assert app.state.miniagent.started  # the lifespan waits for the request in flight
        release.set()
        client.join(60)
        thread.join(60)
    finally:
        release.set()
        sock.close()
    assert results and results[0].status_code == 200 and results[0].json() == {"done": "yes"}
    assert not thread.is_alive() and not app.state.miniagent.started  # then shut down and closed the store

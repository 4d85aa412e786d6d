"""Redaction: planted secrets never reach log lines, exported spans or the metrics text."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from prometheus_client import CollectorRegistry, generate_latest

from miniagent import Agent
from miniagent._instrument import store_operation
from miniagent.errors import ModelAPIError, UserError
from miniagent.observability import REDACTED, Redactor, configure, redact
from miniagent.observability._redact import is_secret_key, secret_values_from_env
from miniagent.resilience import ResilientModel, RetryPolicy
from miniagent.settings import Settings
from miniagent.testing import RecordingClock, ScriptedModel, tool_call_response

from .conftest import tracer_provider

pytestmark = pytest.mark.anyio

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnbmF0dXJlcGxhbnRlZA"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123456", "Authorization: Bearer [REDACTED]"),
        ('{"authorization": "Basic dXNlcjpwYXNz"}', '{"authorization": "Basic [REDACTED]"}'),
        ("key sk-ant-api03-abcdefghijklmnop used", "key [REDACTED] used"),
        ("sk-proj-ABCDEFGHIJKLMNOP", REDACTED),
        ("api_key=abcdef123 next", "api_key=[REDACTED] next"),
        ("password: 'hunter22'", "password: '[REDACTED]'"),
        ('{"x-api-key": "zzzzzzzz"}', '{"x-api-key": "[REDACTED]"}'),
        (f"token {JWT} end", f"token {REDACTED} end"),
        ("postgresql+asyncpg://app:s3cr3t@db:5432/app", "postgresql+asyncpg://app:[REDACTED]@db:5432/app"),
        ("AKIAABCDEFGHIJKLMNOP", REDACTED),
        ("input_tokens=12 max_tokens: 5 the keyboard", "input_tokens=12 max_tokens: 5 the keyboard"),
    ],
)
def test_patterns(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_configured_values_and_structures() -> None:
    redactor = Redactor(["my-db-password-1", "short"])
    assert redactor.secret_count == 1  # "short" would hide ordinary words
    assert redactor.redact("connecting with my-db-password-1 ...") == f"connecting with {REDACTED} ..."
    value = redactor.redact_value(
        {"headers": {"Authorization": "anything", "Accept": "json"}, "args": ["my-db-password-1", 3], "n": None}
    )
    assert value == {"headers": {"Authorization": REDACTED, "Accept": "json"}, "args": [REDACTED, 3], "n": None}
    assert is_secret_key("openai_api_key") and is_secret_key("X-API-Key") and is_secret_key("password")
    assert not is_secret_key("input_tokens") and not is_secret_key("max_tokens") and not is_secret_key("keyboard")


def test_secrets_come_from_settings_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SERVICE_API_KEY", "env-secret-value-1")
    monkeypatch.setenv("SOME_PLAIN_VALUE", "not-a-secret-value")
    assert "env-secret-value-1" in secret_values_from_env()
    assert "not-a-secret-value" not in secret_values_from_env()
    settings = Settings(redact_values=["settings-secret-2"], database_url="postgresql://u:db-pass-3@h/d")
    handle = configure(logs=False, metrics=False, tracing=False, settings=settings)
    text = handle.redactor.redact("env-secret-value-1 settings-secret-2 db-pass-3 not-a-secret-value")
    assert text == f"{REDACTED} {REDACTED} {REDACTED} not-a-secret-value"
    assert redact("settings-secret-2") == REDACTED  # the module function uses the configured redactor


def test_redact_takes_a_string() -> None:
    with pytest.raises(TypeError, match="takes a string"):
        redact(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="must be strings"):
        Redactor([42])  # type: ignore[list-item]


async def test_planted_secrets_appear_in_no_log_span_or_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = {
        "env": "planted-env-secret-0001",
        "settings": "planted-settings-secret-0002",
        "configured": "planted-configured-secret-0003",
        "sk": "sk-planted0004abcdefghijklmn",
        "bearer": "planted-bearer-0005xyz",
        "password": "planted-password-0006",
        "jwt": JWT,
        "url": "plantedurlpass0008",
    }
    monkeypatch.setenv("PAYMENTS_API_KEY", planted["env"])
    settings = Settings(redact_values=[planted["settings"]])
    provider, exporter = tracer_provider()
    out, registry = io.StringIO(), CollectorRegistry()
    configure(
        log_format="json",
        log_level="DEBUG",
        stream=out,
        tracer_provider=provider,
        registry=registry,
        record_content=True,  # arguments, results and responses are recorded: and still redacted
        secrets=[planted["configured"]],
        settings=settings,
    )
    model_name = f"http://user:{planted['url']}@llm.internal/v1"
    scripted = ScriptedModel(
        [
            ModelAPIError(f"upstream said password={planted['password']}", model_name=model_name),
            tool_call_response(
                ("call_api", {"api_key": planted["sk"], "note": f"uses {planted['configured']}", "q": planted["env"]})
            ),
            f"Done with {planted['settings']}",
            ModelAPIError(f"rejected token {planted['jwt']}", model_name=model_name, retryable=False),
        ],
        name=model_name,
    )
    clock = RecordingClock()
    model = ResilientModel(scripted, retry=RetryPolicy(max_attempts=2), breaker=False, clock=clock)
    agent = Agent(model=model, name="leaky", clock=clock)

    @agent.tool
    def call_api(api_key: str, note: str, q: str) -> str:
        """Calls an API."""
        logging.getLogger("app.http").warning("sending headers %s", {"Authorization": f"Bearer {planted['bearer']}"})
        with pytest.raises(RuntimeError), store_operation("append", dsn=f"postgresql://app:{planted['password']}@db/x"):
            raise RuntimeError(f"write failed for key {api_key}")
        raise ValueError(f"HTTP 401 for Authorization: Bearer {planted['bearer']} ({note})")

    result = await agent.run(f"call it (my key is {planted['sk']})")
    with pytest.raises(ModelAPIError):
        await agent.run("again", message_history=result.all_messages())

    spans = exporter.get_finished_spans()
    assert {"invoke_agent leaky", "execute_tool call_api", "store.append"} <= {s.name for s in spans}
    captured = "\n".join(
        [out.getvalue(), *(s.to_json() for s in spans), generate_latest(registry).decode()],
    )
    leaked = {name for name, value in planted.items() if value in captured}
    assert leaked == set(), captured
    assert REDACTED in out.getvalue() and REDACTED in captured
    logged = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert {"retry_scheduled", "tool_call_finished", "run_failed"} <= set(logged)
    assert f"sending headers {{'Authorization': 'Bearer {REDACTED}'}}" in logged
    assert any(REDACTED in str((s.attributes or {}).get("gen_ai.tool.call.arguments", "")) for s in spans)


def test_spans_of_other_instrumentation_are_redacted_on_export() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from miniagent.observability._export import RedactingSpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedactingSpanExporter(memory, Redactor(["configured-secret"]))))
    tracer = provider.get_tracer("some.http.client")
    with tracer.start_as_current_span("POST /v1/chat") as span:
        span.set_attribute("http.request.header.authorization", ("Bearer sk-abcdefghijklmnopqrst",))
        span.set_attribute("url.full", "https://api.example.com/?api_key=configured-secret")
        span.set_attribute("http.response.status_code", 401)
        span.add_event("log", {"message": "retrying with configured-secret"})
        span.set_status(trace.Status(trace.StatusCode.ERROR, "401 for configured-secret"))
    (exported,) = memory.get_finished_spans()
    assert dict(exported.attributes or {}) == {
        "http.request.header.authorization": (f"Bearer {REDACTED}",),
        "url.full": f"https://api.example.com/?api_key={REDACTED}",
        "http.response.status_code": 401,
    }
    assert dict(exported.events[0].attributes or {}) == {"message": f"retrying with {REDACTED}"}
    assert exported.status.description == f"401 for {REDACTED}"
    assert exported.name == "POST /v1/chat" and exported.context == span.get_span_context()
    provider.shutdown()


def test_the_environment_builds_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "my-agent-service")
    handle = configure(logs=False, metrics=False)
    provider = handle.tracer_provider
    assert handle.tracing and isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "my-agent-service"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not configure(logs=False, metrics=False).tracing


def test_a_missing_exporter_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(UserError, match="'zipkin' span exporter, which is not installed"):
        configure(logs=False, metrics=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(UserError, match="not supported"):
        configure(logs=False, metrics=False)

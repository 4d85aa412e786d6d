"""miniagent's one settings object, read from the environment (prefix `MINIAGENT_`) and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Configuration for miniagent. Every field can be set as `MINIAGENT_<FIELD>` in the environment.

    Example:
        ```python
        from miniagent.settings import Settings

        settings = Settings(default_model="local", tool_timeout_s=30)
        assert settings.tool_timeout_s == 30
        ```
    """

    model_config = SettingsConfigDict(env_prefix="MINIAGENT_", env_file=".env", extra="ignore", frozen=True)

    default_model: str = "local"
    """The model used when an agent names none: `local` is the bundled offline model."""
    local_model_path: Path | None = None
    """A GGUF file for the local model; unset means the bundled SmolLM2-135M-Instruct."""
    local_n_ctx: int = Field(default=4096, ge=256)
    """Context window of the local model, in tokens."""
    local_n_threads: int | None = Field(default=None, ge=1)
    """CPU threads for local inference; unset means half the logical cores (about the physical ones)."""
    local_max_tokens: int = Field(default=512, ge=16)
    """Cap on tokens per local response (structured and tool-call responses are always capped)."""
    local_max_string_length: int = Field(default=300, ge=8)
    """Longest string the local model may write inside a tool call or structured output."""
    local_max_array_items: int = Field(default=8, ge=1)
    """Most items the local model may write in one array of a tool call or structured output."""
    tool_timeout_s: float = Field(default=60.0, gt=0)
    """Default timeout of one tool call, in seconds; a hung tool never hangs a run."""
    load_plugins: str | None = None
    """Comma-separated names of model plugins (entry points) to load; unset loads all, empty loads only built-ins."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Level of miniagent's own log output (`miniagent.observability.configure()` uses INFO unless this is set)."""
    log_format: Literal["json", "console"] | None = None
    """Log lines once `miniagent.observability.configure()` runs: `json` (one object per line) or `console`
    (pretty); unset picks `console` on a terminal and `json` otherwise."""
    log_user_id: Literal["hash", "raw", "omit"] = "hash"
    """How a run's user id appears in logs, spans and metric labels: an HMAC-SHA256 pseudonym, as is, or not."""
    user_id_salt: SecretStr | None = None
    """The key of the user id pseudonyms (set it, so they cannot be reversed by hashing guessed ids)."""
    trace_content: bool = False
    """Record prompts, responses, tool arguments and results (redacted) in spans and logs."""
    redact_values: list[SecretStr] = Field(default_factory=list)
    """Extra secret values hidden from logs and spans, as a JSON list: `MINIAGENT_REDACT_VALUES='["..."]'`."""
    metrics_user_label: bool = False
    """Add a `user` label to the cost metric (one time series per user: mind the cardinality)."""
    prices_file: Path | None = None
    """A TOML or JSON price table (USD per million tokens) merged over the built-in one, to price runs' usage."""

    database_url: str | None = None
    """The store's database: unset means a SQLite file under `data_dir`; `postgresql+asyncpg://user:pw@host/db`
    for PostgreSQL (the `postgres` extra); `sqlite+aiosqlite:///path.db` for another SQLite file."""
    data_dir: Path | None = None
    """Where the embedded store keeps its SQLite file; unset means the user data dir (platformdirs)."""
    tenant_id: str = "default"
    """The tenant of rows written by this process (the embedded setup has one)."""
    retention_days: float | None = Field(default=None, gt=0)
    """Default time to live of a thread without activity, in days, for `miniagent prune`; unset keeps everything
    (a tenant's or a thread's own `retention_days` wins)."""

    server_pepper: SecretStr | None = None
    """The server's secret key for API key hashes (HMAC-SHA256): required with a database server; the embedded
    SQLite setup generates one and keeps it beside its database file (`server_pepper`)."""
    server_agents: str | None = None
    """The agents `miniagent serve` exposes, comma-separated `package.module:attribute` paths (`name=` prefixes
    rename one: `support=myapp.agents:agent`); unset serves the default chat agent."""
    server_config: Path | None = None
    """A TOML file naming the served agents (`[agents]` table: `name = "package.module:attribute"`)."""
    server_passthrough_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Model strings the OpenAI-compatible API (`/v1`) also serves as themselves, after the agents: comma-separated or
    a JSON list (`openai:gpt-4o-mini,test`); each runs a plain agent on that model (no instructions, no tools but the
    client's). Each must resolve through the model registry, and none may be a served agent's name."""
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    """Seconds without an event after which a server-sent event stream (`/v1` streaming, run events) sends a
    `: keep-alive` comment, so proxies and load balancers do not cut a stream that waits on a long tool call."""
    jwt_issuer: str | None = None
    """The OIDC issuer whose JWT bearer tokens are accepted (its `iss`); unset turns JWT sign-in off."""
    jwt_audience: str | None = None
    """The audience (`aud`) the tokens must name; required when `jwt_issuer` is set."""
    jwt_jwks_url: str | None = None
    """The issuer's JWKS URL; unset means the `jwks_uri` of `{jwt_issuer}/.well-known/openid-configuration`."""
    jwt_tenant_claim: str = "tenant"
    """The claim that holds a token's tenant (a token without it is refused)."""
    jwt_leeway_s: float = Field(default=30.0, ge=0)
    """Clock skew tolerated on a token's `exp`, `nbf` and `iat`, in seconds."""
    jwks_cache_s: float = Field(default=600.0, gt=0)
    """How long the fetched JWKS is trusted before it is fetched again (an unknown `kid` refetches sooner)."""
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins allowed to call the server from a browser: comma-separated or a JSON list (`https://app.example`);
`*` allows any origin (without credentials)."""
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """The largest request body accepted, in bytes; a larger one gets 413 before it is read."""
    redis_url: str | None = None
    """Redis for state shared by replicas (rate limits, budgets, circuit breakers): `redis://host:6379/0`."""
    queue_url: str | None = None
    """The job queue of background runs: `amqp://user:pw@host:5672/` (RabbitMQ), `redis://host:6379/0` (Redis
    Streams) or `sqlite:///path/queue.db`; unset means an SQLite file beside the embedded store (`queue.db`)."""
    queue_name: str = Field(default="miniagent.runs", min_length=1, max_length=200)
    """The queue (RabbitMQ), stream (Redis) or SQLite queue that server replicas and workers share."""
    queue_lease_s: float = Field(default=30.0, gt=0)
    """How long a job taken by a worker that stopped answering (crash, kill, partition) stays with it before
    another worker takes it over; the worker renews its lease on the run while it runs."""
    queue_max_deliveries: int = Field(default=5, ge=1)
    """Deliveries after which a job that keeps failing its worker (a poison message) is dead-lettered."""
    worker_concurrency: int = Field(default=4, ge=1)
    """Runs one worker executes at once (`miniagent worker --concurrency`)."""
    worker_tenant_cap: int | None = Field(default=None, ge=1)
    """Runs of one tenant a worker executes at once (fair scheduling); unset: half the concurrency, at least 1."""
    server_inprocess_worker: bool | None = None
    """Whether `miniagent serve` consumes background runs itself; unset: yes with the embedded SQLite queue, no
    with RabbitMQ or Redis (run `miniagent worker` processes)."""
    rate_limit_rpm: float | None = Field(default=None, gt=0)
    """Requests per minute allowed to each API key and to each user (a token bucket); unset: no limit."""
    rate_limit_burst: int | None = Field(default=None, ge=1)
    """Requests a key or user may make at once before `rate_limit_rpm` paces them (the bucket's size); unset: one
    minute's worth (`rate_limit_rpm`, rounded up)."""
    budget_tokens_per_day: int | None = Field(default=None, ge=0)
    """Model tokens (input plus output) each API key and each user may use per UTC day; unset: no budget."""
    budget_usd_per_day: float | None = Field(default=None, ge=0)
    """Model cost in USD each API key and each user may spend per UTC day; unset: no budget."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve `/metrics` on this separate port instead of the API port (keep it off the public network)."""
    api_key_cache_s: float = Field(default=5.0, ge=0)
    """How long a verified API key is trusted without reading the store again (0: read it on every request);
    a key revoked through this server stops working at once, through another replica within this delay."""
    readyz_cache_s: float = Field(default=5.0, ge=0)
    """How long `/readyz` reuses the result of its checks."""

    def resolved_data_dir(self) -> Path:
        """`data_dir`, else the user data dir (platformdirs): where the embedded store and queue keep their files."""
        if self.data_dir is not None:
            return self.data_dir
        import platformdirs

        return Path(platformdirs.user_data_dir("miniagent", appauthor=False))

    @field_validator("cors_origins", "server_passthrough_models", mode="before")
    @classmethod
    def _string_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("server_passthrough_models")
    @classmethod
    def _model_strings(cls, value: list[str]) -> list[str]:
        models = [spec.strip() for spec in value]
        for spec in models:
            if not spec or len(spec) > 200 or any(c.isspace() for c in spec):
                raise ValueError(
                    f"{spec!r} is not a model string: write 'provider:model' (e.g. 'openai:gpt-4o-mini'), at most 200 "
                    "characters without spaces"
                )
        duplicates = sorted({spec for spec in models if models.count(spec) > 1})
        if duplicates:
            raise ValueError(f"{', '.join(map(repr, duplicates))} is listed twice: list each model once")
        return models

    @field_validator("local_model_path", "prices_file", "data_dir", "server_config")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


def get_settings() -> Settings:
    """Settings read from the environment now."""
    return Settings()

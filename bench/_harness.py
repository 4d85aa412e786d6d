"""Measurement helpers shared by `run.py` and `peers.py` (standard library only: peers run in another venv)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RunOnce = Callable[[], Awaitable[object]]
"""One agent run against the stub: call, run both tools, call again, return the answer."""

EXPECTED_ANSWER = "In Paris it is sunny and 18 C, and the local time is 14:00."
PROMPT = "What is the weather and the local time in Paris?"
INSTRUCTIONS = "You are a helpful assistant. Use the tools."


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny, 18 C in {city}"


def get_time(city: str) -> str:
    """Local time in a city."""
    return f"14:00 in {city}"


@dataclass
class Result:
    """One framework's figures; absent measurements stay `None`."""

    name: str
    cpu_ms: float | None = None
    wall_ms: float | None = None
    runs_per_s: float | None = None
    import_ms: float | None = None
    construct_us: float | None = None
    bytes_per_agent: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_answer(answer: object, name: str) -> None:
    text = str(answer)
    if EXPECTED_ANSWER not in text:
        raise RuntimeError(f"{name} did not return the stub's final answer; got {text[:200]!r}")


async def sequential(run_once: RunOnce, *, warmup: int, runs: int) -> tuple[float, float]:
    """CPU ms (process time) and median wall ms per run, over `runs` runs one after another."""
    for _ in range(warmup):
        await run_once()
    gc.collect()
    walls: list[float] = []
    cpu_start = time.process_time()
    for _ in range(runs):
        start = time.perf_counter()
        await run_once()
        walls.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    return cpu / runs * 1000, statistics.median(walls) * 1000


async def concurrent(run_once: RunOnce, *, concurrency: int, rounds: int) -> float:
    """Runs per second with `concurrency` runs in flight at once (`asyncio.gather`); the best of `rounds`.

    A first round, not counted, opens the connections.
    """
    await asyncio.gather(*(run_once() for _ in range(concurrency)))  # warm the connection pool
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        await asyncio.gather(*(run_once() for _ in range(concurrency)))
        best = max(best, concurrency / (time.perf_counter() - start))
    return best


def _seconds_per_call(make: Callable[[], object]) -> float:
    start = time.perf_counter()
    for _ in range(5):
        make()
    return max((time.perf_counter() - start) / 5, 1e-7)


def construction_us(make: Callable[[], object], *, repeat: int = 7, batch_s: float = 0.05) -> float:
    """Median µs to build one agent: the median of `repeat` batches of about `batch_s` seconds each."""
    number = max(1, min(5000, int(batch_s / _seconds_per_call(make))))
    batches: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            make()
        batches.append((time.perf_counter() - start) / number)
    return statistics.median(batches) * 1e6


def bytes_per_agent(make: Callable[[], object], *, count: int = 10_000, budget_s: float = 1.2) -> tuple[float, int]:
    """Traced memory held per live agent, over up to `count` agents kept alive at once (fewer for slow builders).

    Returns the bytes per agent and how many agents were measured.
    """
    count = max(100, min(count, int(budget_s / 3 / _seconds_per_call(make))))  # tracemalloc slows allocation ~3x
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        agents = [make() for _ in range(count)]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del agents
    return (after - before) / count, count


def import_ms(python: str, statement: str, *, repeat: int = 3) -> float:
    """Median ms that `python -c statement` (an import) takes beyond a bare `python -c pass`, in fresh processes."""

    def timed(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, env=quiet_env())
        return time.perf_counter() - start

    # No separate warm-up: a first run that still writes bytecode caches is the slow one, and the median drops it.
    bare = statistics.median(timed("pass") for _ in range(repeat))
    full = statistics.median(timed(statement) for _ in range(repeat))
    return max(full - bare, 0.0) * 1000


@contextlib.contextmanager
def stub_process(script: Path) -> Iterator[str]:
    """Run a stub server script in its own process; yield its root URL (`http://127.0.0.1:<port>`).

    The script prints `PORT <n>` once it listens; this waits until it answers HTTP (any status).
    """
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE, text=True, env=quiet_env()
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the stub server did not start (it printed {line!r}); run {script} to see why")
        root = f"http://127.0.0.1:{int(line.split()[1])}"
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(root + "/ready", timeout=1).close()
                break
            except urllib.error.HTTPError:  # it answers: up
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield root
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def quiet_env() -> dict[str, str]:
    """The environment for peers and subprocesses: no telemetry, tracing or proxies; traffic stays on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    # Import times are measured with bytecode caches, as installed packages normally have them.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        {
            "OPENAI_API_KEY": "sk-bench-not-a-real-key",
            "OPENAI_AGENTS_DISABLE_TRACING": "1",
            "AGNO_TELEMETRY": "false",
            "AGNO_MONITOR": "false",
            "LANGCHAIN_TRACING_V2": "false",
            "LANGSMITH_TRACING": "false",
            "DO_NOT_TRACK": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def apply_quiet_env() -> None:
    """Put `quiet_env()` into this process's environment (before any peer is imported)."""
    os.environ.clear()
    os.environ.update(quiet_env())


def interpreter() -> str:
    return sys.executable

"""What the server benchmarks share: the server under test in its own process, locust runs, percentiles, RSS.

Standard library plus `httpx` only on the client side; locust always runs in a subprocess of its own (it
monkey-patches with gevent), never imported here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
LOCUSTFILE = BENCH / "locustfile.py"
SERVER_APP = BENCH / "server_app.py"


@dataclass(frozen=True)
class Server:
    """A running bench server: its base URL, an API key with the `chat` scope, its pid and data directory."""

    url: str
    key: str
    pid: int
    data_dir: Path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "PYTHONWARNINGS": "ignore"})
    for name in [n for n in env if n.startswith("MINIAGENT_")]:
        del env[name]  # the bench sets its own: a developer's database URL or limits must not leak in
    return env


@contextlib.contextmanager
def server_process(
    *,
    stream_words: int = 5,
    stream_interval_ms: float = 0.0,
    upstream: str | None = None,
    upstream_model: str = "stub-text",
    extra_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[Server]:
    """Run `server_app.py` in its own process on a fresh data directory; yield it once `/healthz` answers."""
    with tempfile.TemporaryDirectory(prefix="miniagent-bench-") as tmp:
        data_dir = Path(tmp)
        cmd = [
            sys.executable,
            str(SERVER_APP),
            "--data-dir",
            str(data_dir),
            "--stream-words",
            str(stream_words),
            "--stream-interval-ms",
            str(stream_interval_ms),
        ]
        if upstream:
            cmd += ["--upstream", upstream, "--upstream-model", upstream_model]
        env = _env() | dict(extra_env or {})
        log = (data_dir / "server.log").open("w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            assert proc.stdout is not None
            port_line = proc.stdout.readline().strip()
            key_line = proc.stdout.readline().strip()
            if not port_line.startswith("PORT ") or not key_line.startswith("KEY "):
                proc.wait(5)
                raise RuntimeError(f"the bench server did not start: {_tail(data_dir / 'server.log')}")
            url = f"http://127.0.0.1:{int(port_line.split()[1])}"
            _wait_ready(url + "/healthz", proc, ready_timeout_s, data_dir / "server.log")
            yield Server(url, key_line.split(maxsplit=1)[1], proc.pid, data_dir)
        finally:
            stop(proc)
            log.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout_s: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not answer within {timeout_s:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate `proc` (SIGTERM, then SIGKILL after 15 s) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- locust ------------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One locust run's figures (after spawning completed: `--reset-stats`)."""

    name: str
    users: int
    duration_s: float
    requests: int = 0
    failures: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values."""
        return asdict(self)


def percentile(histogram: Mapping[str, int] | Mapping[int, int], q: float) -> float:
    """The `q` quantile (0-1) of a locust response-time histogram (`{"<ms>": count}`): the smallest bucket
    holding at least `q` of the requests."""
    items = sorted((float(k), int(v)) for k, v in histogram.items())
    total = sum(count for _, count in items)
    if total == 0:
        return 0.0
    need = max(1, math.ceil(q * total))
    seen = 0
    for value, count in items:
        seen += count
        if seen >= need:
            return value
    return items[-1][0]


def run_locust(
    server: Server,
    user_class: str,
    *,
    users: int,
    duration_s: float,
    spawn_rate: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
) -> Step:
    """Run `locustfile.py`'s `user_class` headless against `server` in a subprocess; parse its JSON and CSV."""
    with tempfile.TemporaryDirectory(prefix="miniagent-locust-") as tmp:
        prefix = Path(tmp) / "run"
        cmd = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            server.url,
            "-u",
            str(users),
            "-r",
            str(spawn_rate or users),
            "-t",
            f"{duration_s:g}s",
            "--stop-timeout",
            "30",
            "--reset-stats",
            "--json",
            "--skip-log",
            "--csv",
            str(prefix),
            user_class,
        ]
        env = _env() | {"MINIAGENT_LOAD_KEY": server.key} | dict(extra_env or {})
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s if timeout_s is not None else duration_s + 120,
            check=False,
        )
        step = parse_locust(done.stdout, name=user_class, users=users, duration_s=duration_s)
        step.exit_code = done.returncode
        step.errors = _failures(Path(f"{prefix}_failures.csv"))
        if not done.stdout.strip():
            step.errors.append(f"locust printed no stats (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        return step


def parse_locust(stdout: str, *, name: str, users: int, duration_s: float) -> Step:
    """A [`Step`][_server_bench.Step] from `locust --json`'s output (all request names added up)."""
    step = Step(name, users, duration_s)
    text = stdout.strip()
    if not text:
        return step
    entries: list[dict[str, Any]] = json.loads(text[text.index("[") :])
    histogram: dict[str, int] = {}
    total_ms = 0.0
    start, end = math.inf, 0.0
    for entry in entries:
        step.requests += int(entry["num_requests"])
        step.failures += int(entry["num_failures"])
        total_ms += float(entry["total_response_time"])
        step.max_ms = max(step.max_ms, float(entry["max_response_time"] or 0.0))
        start = min(start, float(entry["start_time"]))
        end = max(end, float(entry["last_request_timestamp"] or 0.0))
        for bucket, count in entry["response_times"].items():
            histogram[bucket] = histogram.get(bucket, 0) + int(count)
    if step.requests:
        step.rps = step.requests / max(end - start, 1e-9)
        step.mean_ms = total_ms / step.requests
        step.p50_ms, step.p95_ms, step.p99_ms = (percentile(histogram, q) for q in (0.5, 0.95, 0.99))
    return step


def _failures(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [f"{row['Occurrences']}x {row['Name']}: {row['Error']}" for row in csv.DictReader(handle)]


# ---- reporting ---------------------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (psutil when installed, else `/proc/<pid>/status`'s VmRSS)."""
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


def machine() -> str:
    """One line about this machine: architecture, CPUs, memory, load, Python."""
    import platform

    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {kb / 1024 / 1024:.1f} GiB memory"
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs{memory}{load}, Python {platform.python_version()}"


def markdown_table(headers: Iterable[str], rows: Iterable[Iterable[object]], *, right_from: int = 1) -> str:
    """A Markdown table; columns from `right_from` on are right-aligned."""
    heads = list(headers)
    align = ["---" if i < right_from else "---:" for i in range(len(heads))]
    lines = ["| " + " | ".join(heads) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def quantiles_ms(samples: Iterable[float]) -> tuple[float, float, float]:
    """p50, p95 and p99 (nearest rank) of `samples` given in seconds, in milliseconds."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0, 0.0, 0.0

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))] * 1000

    return rank(0.5), rank(0.95), rank(0.99)

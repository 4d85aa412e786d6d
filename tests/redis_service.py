"""A real Redis for the tests: one `redis-server` per session on a free loopback port, no persistence, in a temp dir.

Loaded by the root conftest (`pytest_plugins`). `redis_server` is the session's server; `redis_url` gives a test an
empty database (FLUSHALL before it). `make test` installs `redis-server` when it is missing (see
`scripts/ensure-redis.sh`); the system's Redis service is never started nor used.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 30.0  # how long a cold redis-server may take to accept connections (readiness, not a test assertion)


@dataclass
class RedisServer:
    """The session's redis-server."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> object:
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5) as client:
            return client.execute_command(*args)

    def flush(self) -> None:
        self.command("FLUSHALL")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path) -> RedisServer:
    """Start redis-server on a free port in `directory`; returns once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: run `make test` (it installs it when run as root), or "
            "`apt-get install redis-server` / `brew install redis`."
        )
    log = directory / "redis.log"
    for _ in range(5):  # the free port may be taken between the probe and the start: try another
        port = _free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(directory), "--logfile", str(log), "--daemonize", "no", "--protected-mode", "yes"]
        process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        (directory / "redis.pid").write_text(str(process.pid))
        server = RedisServer(process, port, directory)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # not up yet
                if server.command("PING"):
                    return server
            time.sleep(0.05)
        stop_redis(server)
    pytest.fail(f"redis-server did not start; its log: {log.read_text() if log.exists() else '(none)'}")


def stop_redis(server: RedisServer) -> None:
    """Stop the server (SIGTERM, then SIGKILL) and close its pipes."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if server.process.stderr is not None:
        server.process.stderr.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real Redis for this session, stopped at its end."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        stop_redis(server)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url

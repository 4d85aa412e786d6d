"""A real RabbitMQ for the tests: one private node per session, on free loopback ports, with its data in a temp dir.

Loaded by the root conftest (`pytest_plugins`). `rabbitmq_server` is the session's node, started on first use (a
session that never asks for it pays nothing); `rabbitmq_url` gives a test its AMQP URL (tests isolate themselves by
unique queue names). `server.restart()` stops the node and starts it again on the same ports and data directory, so
durable queues and persistent messages survive it, as after a real broker restart.

The node is private: its own node name, AMQP and distribution ports on 127.0.0.1, its own `epmd` on a free port
(started and stopped here, never the system's), no plugins, a generated user and password, config, logs and
Mnesia/Raft data under the session's temp dir. `make test` installs `rabbitmq-server` when it is missing (see
`scripts/ensure-rabbitmq.sh`); the system's RabbitMQ service is never started nor used. Every process started here
carries a marker in its environment, so teardown can prove none is left (and kill any that is).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_START_TIMEOUT_S = 60.0  # how long a cold node may take to accept AMQP logins (readiness, not a test assertion)
_STOP_TIMEOUT_S = 30.0  # how long a graceful stop (SIGTERM) may take before the node is killed
_MARKER = "MINIAGENT_TEST_RABBITMQ_NODE"  # in the environment of every process started here, to find leftovers
_DEBIAN_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # the real script (/usr/sbin's wrapper needs root)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _binaries() -> tuple[str, str]:
    """The `rabbitmq-server` script and `epmd`, or a test failure saying how to install them."""
    server = str(_DEBIAN_SCRIPT) if _DEBIAN_SCRIPT.exists() else shutil.which("rabbitmq-server")
    epmd = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    if server is None or epmd is None:
        pytest.fail(
            "rabbitmq-server is not installed: run `make test` (it installs it when run as root), or "
            "`apt-get install rabbitmq-server` / `brew install rabbitmq`."
        )
    return server, str(epmd)


def _login(url: str) -> None:
    """Open and close one AMQP connection (raises when the node does not accept it yet).

    Runs its own event loop in a worker thread, so it works from sync code and from inside a running loop alike
    (`restart()` is called from async tests).
    """
    import aio_pika

    async def probe() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        await connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, probe()).result()


def _marked_pids(marker: str) -> list[int]:
    """The live processes whose environment carries `marker` (Linux `/proc`; none found elsewhere)."""
    needle = f"{_MARKER}={marker}".encode()
    found: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return [pid for pid in found if pid != os.getpid()]


@dataclass
class RabbitMQServer:
    """The session's private RabbitMQ node (see the module docs); `start()` it, `close()` it at the end."""

    directory: Path
    node: str = field(default_factory=lambda: f"miniagent-test-{secrets.token_hex(4)}@localhost")
    port: int = field(default_factory=_free_port)
    dist_port: int = field(default_factory=_free_port)
    epmd_port: int = field(default_factory=_free_port)
    user: str = "miniagent"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: subprocess.Popen[bytes] | None = None
    epmd: subprocess.Popen[bytes] | None = None
    start_seconds: list[float] = field(default_factory=list)
    """How long each start took, until the node accepted a login (the first is the cold start)."""

    @property
    def running(self) -> bool:
        """Whether the node was started and has not exited (it may be booting or stopping)."""
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        """The node's AMQP URL (default vhost `/`)."""
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}/"

    @property
    def log(self) -> Path:
        """The node's own log file."""
        return self.directory / "log" / f"{self.node}.log"

    def environment(self) -> dict[str, str]:
        """The environment the node (and `rabbitmqctl`, to address it) runs with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                _MARKER: self.node,
                "HOME": str(self.directory),  # the Erlang cookie goes here, not in the real home
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
                "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.directory / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.directory / "plugins-expand"),
                "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
            }
        )
        return env

    def _write_config(self) -> None:
        for sub in ("mnesia", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text(
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            "default_vhost = /\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.directory / "rabbitmq-env.conf").write_text("")  # not the system's /etc/rabbitmq/rabbitmq-env.conf
        (self.directory / "enabled_plugins").write_text("[].\n")  # no management plugin: a faster start

    def _start_epmd(self, binary: str) -> None:
        if self.epmd is not None and self.epmd.poll() is None:
            return
        args = [binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"]
        self.epmd = subprocess.Popen(
            args,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _accepts(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on port {self.epmd_port} (exit code {self.epmd.poll()})")
            time.sleep(0.02)

    def start(self) -> None:
        """Start the node (and its epmd); returns once it accepts an AMQP login.

        Raises:
            RuntimeError: it exited or did not answer within the start timeout; the message holds its output.
        """
        server, epmd = _binaries()
        self._write_config()
        self._start_epmd(epmd)
        began = time.monotonic()
        output = (self.directory / "server.out").open("ab")
        try:
            self.process = subprocess.Popen(
                [server],
                env=self.environment(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a whole
            )
        finally:
            output.close()
        deadline = began + _START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.process.returncode}: {self._tail()}")
            if _accepts(self.port):  # the listener opens last, once the node has booted
                with contextlib.suppress(Exception):  # not ready for logins yet
                    _login(self.url)
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq-server did not accept logins within {_START_TIMEOUT_S} s: {self._tail()}")
            time.sleep(0.05)
        self.start_seconds.append(time.monotonic() - began)

    def stop(self) -> None:
        """Stop the node gracefully (SIGTERM: it syncs its queues and exits), killing it after a timeout.

        Its epmd keeps running (a `restart()` reuses it); `close()` stops both.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The VM leaves when the script does; wait for its helpers (erl_child_setup, inet_gethost) too.
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        while self._leftovers(include_epmd=False) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        """Stop the node and start it again on the same ports and data (durable queues, persistent messages survive).

        Blocking: from async code call it in a thread (`await anyio.to_thread.run_sync(server.restart)`), so the
        clients' event loop keeps running (and notices the outage) meanwhile.
        """
        self.stop()
        self.start()

    def close(self) -> list[int]:
        """Stop the node and its epmd; kill any process started here that is still alive.

        Returns:
            The processes that had to be killed (empty when everything stopped by itself).
        """
        self.stop()
        epmd, self.epmd = self.epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            try:
                epmd.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                epmd.kill()
                epmd.wait()
        stray = self._leftovers(include_epmd=True)
        for pid in stray:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stray

    def _leftovers(self, *, include_epmd: bool) -> list[int]:
        pids = _marked_pids(self.node)
        if not include_epmd and self.epmd is not None:
            pids = [pid for pid in pids if pid != self.epmd.pid]
        return pids

    def _tail(self) -> str:
        texts = []
        for path in (self.directory / "server.out", self.log):
            if path.exists():
                texts.append(f"--- {path.name}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(texts) or "(no output)"


def start_rabbitmq(directory: Path) -> RabbitMQServer:
    """A private node in `directory`, started (a few tries: a free port probed may be taken before the node binds)."""
    error: Exception | None = None
    for _ in range(3):
        server = RabbitMQServer(directory / secrets.token_hex(3))
        try:
            server.start()
        except RuntimeError as exc:
            error = exc
            server.close()
            continue
        return server
    pytest.fail(f"rabbitmq-server did not start: {error}")


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQServer]:
    """A private RabbitMQ node for this session (started on first use), stopped at its end with its epmd."""
    server = start_rabbitmq(tmp_path_factory.mktemp("rabbitmq"))
    try:
        yield server
    finally:
        stray = server.close()
        if stray:
            warnings.warn(f"RabbitMQ test processes outlived their stop and were killed: {stray}", stacklevel=1)


@pytest.fixture
def rabbitmq_url(rabbitmq_server: RabbitMQServer) -> str:
    """The session's RabbitMQ (tests isolate themselves with unique queue names); started again if a test stopped it."""
    if not rabbitmq_server.running:
        rabbitmq_server.stop()  # reaps a node that died
        rabbitmq_server.start()
    return rabbitmq_server.url

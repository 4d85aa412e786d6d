"""(j) Embedding batching: concurrent runs' `embed` calls, one request each vs grouped by `BatchingEmbedder`.

`python bench/embed_batching.py [--quick]` measures, side by side in one process and one run:

1. **Remote**: an `OpenAIEmbedder` on an OpenAI-compatible embeddings server on 127.0.0.1, in a process of its own
   (`tests/embeddings/_server.py`), with the costs of a real one: a fixed time per request, a time per text, and a
   bounded number of requests processed at once. `--runs` concurrent runs each make `--calls` sequential
   `embed([text])` calls (what a memory recall or an extraction does): bare, then through
   `BatchingEmbedder(max_batch=64, max_wait_s=0.005)`. Texts/s, the requests the server saw, client CPU per text
   and the latency of one call; interleaved rounds (bare, batched, batched, bare...) so drift hits both sides.
   Every vector is checked against the one the server derives from its text.
2. **Local**: the same workload on `LocalEmbedder` (all-MiniLM-L6-v2 on onnxruntime, in-process), when the
   `memory` extra is installed (`--no-local` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # the server and its vectors live with the tests, in tests/embeddings
    sys.path.insert(0, str(ROOT))

# Imports below need the repository root on sys.path (above), hence E402.
import anyio  # noqa: E402
from tests.embeddings._server import vector_for  # noqa: E402

import _harness  # noqa: E402
from miniagent.embeddings import BatchingEmbedder, Embedder, OpenAIEmbedder, normalize  # noqa: E402

SERVER = ROOT / "tests" / "embeddings" / "_server.py"
DIMENSIONS = 384


@dataclass
class Side:
    """One side's figures over its rounds."""

    name: str
    texts: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    requests: int = 0
    rates: list[float] | None = None
    latencies: list[float] | None = None

    def add(self, texts: int, wall_s: float, cpu_s: float, requests: int, latencies: list[float]) -> None:
        self.texts += texts
        self.wall_s += wall_s
        self.cpu_s += cpu_s
        self.requests += requests
        self.rates = [*(self.rates or []), texts / wall_s]
        self.latencies = [*(self.latencies or []), *latencies]

    @property
    def rate(self) -> float:
        """Texts/s: the median over the rounds."""
        return statistics.median(self.rates or [0.0])

    def latency_ms(self, quantile: float) -> float:
        values = sorted(self.latencies or [0.0])
        return values[min(len(values) - 1, int(quantile * len(values)))] * 1000


@contextmanager
def server_process(args: argparse.Namespace) -> Iterator[str]:
    """The embeddings server in its own process; yields its root URL."""
    command = [
        sys.executable,
        str(SERVER),
        "--port=0",
        f"--dimensions={DIMENSIONS}",
        f"--latency-ms={args.latency_ms}",
        f"--per-text-ms={args.per_text_ms}",
        f"--concurrency={args.server_concurrency}",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=_harness.quiet_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the embeddings server did not start (it printed {line!r}); run {SERVER} to see why")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_requests(root: str) -> int:
    with urllib.request.urlopen(root + "/_stats", timeout=10) as response:
        stats: dict[str, int] = json.load(response)
    return stats["requests"]


def text_of(tag: str, run: int, call: int) -> str:
    """A memory-sized text, unique per side, round, run and call (so nothing is deduplicated)."""
    return f"{tag}: run {run}, fact {call}. The user lives in Lyon and goes hiking in the Alps with a dog named Rex."


async def one_round(
    embedder: Embedder, *, runs: int, calls: int, tag: str
) -> tuple[float, float, list[float], dict[str, list[float]]]:
    """`runs` concurrent runs of `calls` sequential one-text calls: wall s, CPU s, per-call latencies, the vectors."""
    latencies: list[float] = []
    vectors: dict[str, list[float]] = {}

    async def run(index: int) -> None:
        for call in range(calls):
            text = text_of(tag, index, call)
            start = time.perf_counter()
            (vectors[text],) = await embedder.embed([text])
            latencies.append(time.perf_counter() - start)

    cpu = time.process_time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(runs):
            tg.start_soon(run, index)
    return time.perf_counter() - start, time.process_time() - cpu, latencies, vectors


async def compare(
    bare: Embedder, batched: BatchingEmbedder, args: argparse.Namespace, *, root: str | None, label: str
) -> tuple[Side, Side, dict[str, list[float]]]:
    """Interleaved rounds of both sides (bare, batched, batched, bare...); also every vector, by text."""
    sides = {"bare": Side("bare"), "batched": Side("batched")}
    every: dict[str, list[float]] = {}
    await bare.embed(["warm-up"])
    await batched.embed(["warm-up"])
    for index in range(args.rounds):
        order = ["bare", "batched"] if index % 2 == 0 else ["batched", "bare"]
        for name in order:
            embedder = bare if name == "bare" else batched
            before = server_requests(root) if root else batched.requests
            wall, cpu, latencies, vectors = await one_round(
                embedder, runs=args.runs, calls=args.calls, tag=f"{label}-{name}-{index}"
            )
            after = server_requests(root) if root else batched.requests
            requests = after - before if root or name == "batched" else args.runs * args.calls
            sides[name].add(len(vectors), wall, cpu, requests, latencies)
            every.update(vectors)
    return sides["bare"], sides["batched"], every


def check_remote(vectors: dict[str, list[float]]) -> None:
    """Every caller got the vector of its own text."""
    for text, vector in vectors.items():
        want = normalize(vector_for(text, DIMENSIONS))
        if any(abs(a - b) > 1e-6 for a, b in zip(vector, want, strict=True)):
            raise AssertionError(f"wrong vector for {text!r}")


def table(bare: Side, batched: Side) -> list[str]:
    rows = [
        "| side | texts/s | requests | texts/request | client CPU ms/text | call p50 ms | call p95 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for side in (bare, batched):
        rows.append(
            f"| {side.name} | {side.rate:,.0f} | {side.requests:,} | {side.texts / max(side.requests, 1):.1f} | "
            f"{side.cpu_s / side.texts * 1000:.3f} | {side.latency_ms(0.5):.1f} | {side.latency_ms(0.95):.1f} |"
        )
    rows.append(
        f"| batched / bare | **{batched.rate / bare.rate:.2f}x** | {batched.requests / bare.requests:.3f}x | | "
        f"{batched.cpu_s / batched.texts / (bare.cpu_s / bare.texts):.2f}x | | |"
    )
    return rows


async def remote(args: argparse.Namespace) -> list[str]:
    with server_process(args) as root:
        import openai

        clients = [openai.AsyncOpenAI(base_url=root + "/v1", api_key="bench", max_retries=0) for _ in range(2)]
        try:
            bare = OpenAIEmbedder("bench-embed", dimensions=DIMENSIONS, client=clients[0])
            batched = BatchingEmbedder(
                OpenAIEmbedder("bench-embed", dimensions=DIMENSIONS, client=clients[1]),
                max_batch=args.max_batch,
                max_wait_s=args.max_wait_ms / 1000,
            )
            bare_side, batched_side, vectors = await compare(bare, batched, args, root=root, label="remote")
        finally:
            for client in clients:
                await client.close()
    check_remote(vectors)
    bound = math.ceil(args.runs / args.max_batch) * args.calls * args.rounds
    return [
        f"Remote: {args.runs} concurrent runs x {args.calls} calls of one text, {args.rounds} rounds per side; server "
        f"{args.latency_ms} ms/request + {args.per_text_ms} ms/text, {args.server_concurrency} requests at once; "
        f"max_batch={args.max_batch}, max_wait={args.max_wait_ms} ms (request floor for the batched side: {bound}).",
        "",
        *table(bare_side, batched_side),
    ]


async def local(args: argparse.Namespace) -> list[str]:
    from miniagent.embeddings import LocalEmbedder
    from miniagent.errors import OptionalDependencyError

    inner = LocalEmbedder()
    try:
        inner.load()
    except OptionalDependencyError as exc:
        return [f"Local: skipped ({exc})."]
    batched = BatchingEmbedder(inner, max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000)
    local_args = argparse.Namespace(**{**vars(args), "runs": args.local_runs, "calls": args.local_calls})
    bare_side, batched_side, _ = await compare(inner, batched, local_args, root=None, label="local")
    return [
        f"Local: `LocalEmbedder` (onnxruntime, {inner.threads} threads, batches of {inner.batch_size}), "
        f"{args.local_runs} concurrent runs x {args.local_calls} calls, {args.rounds} rounds per side.",
        "",
        *table(bare_side, batched_side),
    ]


async def main(args: argparse.Namespace) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# embedding batching — {platform.machine()}, Python {platform.python_version()}, load {load}\n")
    started = time.perf_counter()
    print("\n".join(await remote(args)) + "\n")
    if not args.no_local:
        print("\n".join(await local(args)) + "\n")
    print(f"({time.perf_counter() - started:.1f} s)")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few seconds: fewer runs, calls and rounds")
    parser.add_argument("--runs", type=int, default=64, help="concurrent runs (64)")
    parser.add_argument("--calls", type=int, default=8, help="sequential one-text calls per run (8)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per side, interleaved (4)")
    parser.add_argument("--latency-ms", type=float, default=3.0, help="server time per request (3)")
    parser.add_argument("--per-text-ms", type=float, default=0.05, help="server time per text (0.05)")
    parser.add_argument("--server-concurrency", type=int, default=8, help="requests the server processes at once (8)")
    parser.add_argument("--max-batch", type=int, default=64, help="BatchingEmbedder's max_batch (64)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="BatchingEmbedder's max_wait_s, in ms (5)")
    parser.add_argument("--no-local", action="store_true", help="skip the LocalEmbedder comparison")
    parser.add_argument("--local-runs", type=int, default=32, help="concurrent runs on LocalEmbedder (32)")
    parser.add_argument("--local-calls", type=int, default=2, help="calls per run on LocalEmbedder (2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.calls, args.rounds = min(args.runs, 16), min(args.calls, 4), min(args.rounds, 2)
        args.local_runs, args.local_calls = min(args.local_runs, 8), 1
    return args


if __name__ == "__main__":
    anyio.run(main, parse())

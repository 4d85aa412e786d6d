"""miniagent's benchmark: framework overhead per agent run, concurrency, import time and agent size.

`python bench/run.py` (what `make bench` runs) starts `stub_server.py` as its own process and measures, against
it, miniagent and a hand-written loop on the raw `openai` SDK doing the same job: two model calls and two tool
calls per run. Peer frameworks (openai-agents, pydantic-ai, agno, langgraph) are measured too, each in its own
process, with `--peers-python PATH` or `.venv-peers/bin/python` when it exists (`make bench-peers` builds it).
Section (e), `providers.py`, measures each provider adapter against the bare SDK call, with `stub_providers.py`.
Section (f), `memory_recall.py`, measures long-term memory: embedder recall@k and recall latency over 10k memories.
Section (g), `observability.py`, measures a run with logs, traces and metrics on against all of them off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

import _harness
import memory_recall
import observability
import providers
from _harness import INSTRUCTIONS, PROMPT, Result, check_answer, get_time, get_weather
from _raw import raw_client, raw_run_once
from miniagent import Agent, OpenAIChatModel

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER_ORDER = ["raw", "openai-agents", "pydantic-ai", "agno", "langgraph"]


@contextlib.contextmanager
def stub_server() -> Iterator[str]:
    """Run the stub in its own process; yield its base URL."""
    with _harness.stub_process(BENCH / "stub_server.py") as root:
        yield root + "/v1"


def miniagent_agent(base_url: str) -> tuple[Agent[None, str], OpenAIChatModel]:
    model = OpenAIChatModel("stub-model", base_url=base_url, api_key="sk-bench", provider="openai-compatible")
    return Agent(model=model, instructions=INSTRUCTIONS, tools=[get_weather, get_time]), model


async def measure_local(base_url: str, args: argparse.Namespace) -> list[Result]:
    """miniagent and the raw-SDK baseline, in this process."""
    agent, model = miniagent_agent(base_url)

    async def miniagent_run() -> str:
        output = (await agent.run(PROMPT)).output
        check_answer(output, "miniagent")
        return output

    client = raw_client(base_url)
    results = []
    for name, run_once in (("raw openai", raw_run_once(client)), ("miniagent", miniagent_run)):
        result = Result(name)
        result.cpu_ms, result.wall_ms = await _harness.sequential(run_once, warmup=args.warmup, runs=args.runs)
        result.runs_per_s = await _harness.concurrent(run_once, concurrency=args.concurrency, rounds=args.rounds)
        results.append(result)
    await model.aclose()
    await client.close()
    return results


def measure_peer(python: str, name: str, base_url: str, args: argparse.Namespace) -> Result:
    label = "raw openai" if name == "raw" else name
    command = [
        python,
        str(BENCH / "peers.py"),
        f"--base-url={base_url}",
        f"--peer={name}",
        f"--runs={args.runs}",
        f"--warmup={args.warmup}",
        f"--concurrency={args.concurrency}",
        f"--rounds={args.rounds}",
        f"--agents={args.agents}",
        f"--import-repeat={args.import_repeat}",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=_harness.quiet_env())
    except subprocess.TimeoutExpired:
        return Result(label, note="timed out")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Result(label, note=f"failed: {tail[:100]}")
    data = json.loads(lines[-1])
    return Result(**data)


def machine() -> str:
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f", {kb / 1024 / 1024:.1f} GiB memory"
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs{memory}{load}, Python {platform.python_version()}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    ratio = value / base
    return f"{ratio:.2f}x"


def render(
    console: Console, local: list[Result], imports: list[Result], peers: list[Result], args: argparse.Namespace
) -> None:
    raw_local = next(r for r in local if r.name == "raw openai")
    raw_peer = next((r for r in peers if r.name == "raw openai" and r.cpu_ms is not None), None)
    others = [r for r in peers if r.name != "raw openai"]

    runs = Table(
        title=f"(a) one agent run (2 model calls, 2 tool calls), sequential: mean CPU ms and median wall ms per run "
        f"over {args.runs} runs after {args.warmup} warm-up; (b) runs/s with {args.concurrency} concurrent runs "
        f"(best of {args.rounds}). Ratios vs the raw openai SDK loop in the same interpreter.",
        title_justify="left",
    )
    for column in ("framework", "CPU ms/run", "x raw", "wall ms/run", "x raw", f"runs/s @{args.concurrency}", "x raw"):
        runs.add_column(column, justify="left" if column == "framework" else "right")
    runs.add_column("version / note")

    def add(r: Result, base: Result, label: str | None = None, note: str = "") -> None:
        runs.add_row(
            label or r.name,
            _fmt(r.cpu_ms),
            _ratio(r.cpu_ms, base.cpu_ms),
            _fmt(r.wall_ms),
            _ratio(r.wall_ms, base.wall_ms),
            _fmt(r.runs_per_s, 0),
            _ratio(r.runs_per_s, base.runs_per_s),
            note or r.note,
        )

    for r in local:
        add(r, raw_local, note="this interpreter")
    if raw_peer is not None:
        runs.add_section()
        add(raw_peer, raw_peer, "raw openai (peers venv)", f"openai {raw_peer.note}; baseline of the rows below")
    for r in others:
        add(r, raw_peer or raw_local)
    console.print(runs)

    sizes = Table(
        title="(c) import time: a fresh `python -c '<imports>'` minus a bare `python -c pass`, median; "
        "(d) agent construction, median µs, and memory, tracemalloc bytes per live agent (instructions only)",
        title_justify="left",
    )
    for column in ("framework", "import ms", "x openai", "construct µs", "bytes/agent", "agents kept"):
        sizes.add_column(column, justify="left" if column == "framework" else "right")
    sizes.add_column("imports")
    openai_import = raw_local.import_ms
    for r in imports + others:
        sizes.add_row(
            r.name,
            _fmt(r.import_ms, 0),
            _ratio(r.import_ms, openai_import),
            _fmt(r.construct_us, 1),
            _fmt(r.bytes_per_agent, 0),
            str(r.extra.get("agents_measured", "-")),
            str(r.extra.get("imports", "")),
        )
    console.print(sizes)


def _observability(args: argparse.Namespace, console: Console) -> observability.Figures | None:
    """(g), unless `--no-observability`."""
    if args.no_observability:
        return None
    console.print("  measuring (g) observability overhead ...")
    return observability.run_section(args)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark miniagent against the raw openai SDK and peers.")
    parser.add_argument("--runs", type=int, default=100, help="sequential runs per framework")
    parser.add_argument("--warmup", type=int, default=10, help="runs before measuring")
    parser.add_argument("--concurrency", type=int, default=100, help="runs in flight at once")
    parser.add_argument("--rounds", type=int, default=2, help="concurrent rounds (the best counts)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents kept alive for the memory figure")
    parser.add_argument("--import-repeat", type=int, default=3, help="fresh processes per import timing")
    parser.add_argument("--peers-python", help="interpreter with the peers installed (default: .venv-peers if present)")
    parser.add_argument("--no-peers", action="store_true", help="measure miniagent and the raw SDK only")
    parser.add_argument("--no-providers", action="store_true", help="skip (e), the provider adapters")
    parser.add_argument("--no-memory", action="store_true", help="skip (f), long-term memory (embedders, recall)")
    parser.add_argument("--no-observability", action="store_true", help="skip (g), logs + traces + metrics overhead")
    observability.add_arguments(parser)
    providers.add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    _harness.apply_quiet_env()  # no proxies (traffic stays on 127.0.0.1), no telemetry, a fake key

    console = Console(width=max(Console().width, 150))
    started = time.monotonic()
    console.print(f"[bold]miniagent bench[/bold]  {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}  {machine()}")
    peers_python = args.peers_python
    if peers_python is None and not args.no_peers:
        default = ROOT / ".venv-peers" / "bin" / "python"
        peers_python = str(default) if default.exists() else None

    with stub_server() as base_url:
        local = asyncio.run(measure_local(base_url, args))
        raw_local, ours = local
        imports = [raw_local, ours, Result("miniagent + OpenAIChatModel")]
        for result, statement in zip(
            imports, ("import openai", "import miniagent", "from miniagent import Agent, OpenAIChatModel"), strict=True
        ):
            result.import_ms = _harness.import_ms(sys.executable, statement, repeat=args.import_repeat)
            result.extra["imports"] = statement
        model = OpenAIChatModel("stub-model", base_url=base_url, provider="openai-compatible")
        ours.construct_us = _harness.construction_us(lambda: Agent(model=model, instructions=INSTRUCTIONS))
        ours.bytes_per_agent, count = _harness.bytes_per_agent(
            lambda: Agent(model=model, instructions=INSTRUCTIONS), count=args.agents
        )
        ours.extra["agents_measured"] = count
        peers: list[Result] = []
        if peers_python and not args.no_peers:
            for name in PEER_ORDER:
                console.print(f"  measuring {name} with {peers_python} ...")
                peers.append(measure_peer(peers_python, name, base_url, args))
        elif not args.no_peers:
            console.print("  peers: none (run `make bench-peers` or pass --peers-python to include them)")

    provider_rows: list[providers.Row] = []
    if not args.no_providers:
        console.print("  measuring (e) provider adapters ...")
        with _harness.stub_process(BENCH / "stub_providers.py") as root:
            provider_rows = providers.run_section(root, args)

    memory: memory_recall.Figures | None = None
    if not args.no_memory:
        console.print("  measuring (f) long-term memory ...")
        memory = memory_recall.run_section(console=console)

    obs = _observability(args, console)

    render(console, local, imports, peers, args)
    if provider_rows:
        console.print(
            providers.render(
                provider_rows,
                requests=args.provider_requests,
                warmup=args.provider_warmup,
                rounds=args.provider_rounds,
            )
        )
    if memory is not None:
        for table in memory_recall.render(memory):
            console.print(table)
    if obs is not None:
        console.print(observability.render(obs))
    console.print(f"took {time.monotonic() - started:.0f} s")
    if args.json:
        figures = [r.as_dict() for r in [*imports, *peers]] + [row.as_dict() for row in provider_rows]
        if memory is not None:
            figures.append({"section": "memory", **memory.as_dict()})
        if obs is not None:
            figures.append(obs.as_dict())
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

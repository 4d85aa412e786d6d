"""(g) Observability overhead: one agent run with logs + traces + metrics on, against all of them off.

The same agent runs the bench's job (two model calls to `stub_server.py`, two tool calls) in one process, in
interleaved blocks: off, on, on, off, ... so drift of the machine hits both sides alike. "On" is what a production
deployment installs with `miniagent.observability.configure()`: JSON log lines at INFO (to `/dev/null`), spans of
the GenAI conventions through a `BatchSpanProcessor` into an exporter that drops them (the no-op exporter: the cost
of making spans, not of shipping them), and Prometheus metrics in a fresh registry. "Off" is no `configure()`.

The figure is client CPU ms per run (`time.process_time()`; the stub's CPU is in another process) and the ratio
on/off (the goal is at most 1.05x). `python bench/observability.py` runs this section alone; `bench/run.py` runs it
too unless `--no-observability`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _harness
from _harness import INSTRUCTIONS, PROMPT, check_answer, get_time, get_weather
from miniagent import Agent, OpenAIChatModel

BENCH = Path(__file__).resolve().parent


@dataclass
class Figures:
    """CPU ms per run of each block, per side, and what they summarize to."""

    runs: int
    rounds: int
    off_cpu_ms: list[float] = field(default_factory=list)
    on_cpu_ms: list[float] = field(default_factory=list)
    off_wall_ms: list[float] = field(default_factory=list)
    on_wall_ms: list[float] = field(default_factory=list)
    spans_per_run: float = 0.0
    log_lines_per_run: float = 0.0

    @property
    def ratio(self) -> float:
        """Median CPU per run with observability on, over off."""
        return statistics.median(self.on_cpu_ms) / statistics.median(self.off_cpu_ms)

    def as_dict(self) -> dict[str, Any]:
        return {"section": "observability", **asdict(self), "ratio": self.ratio}


class _Counting:
    """A text sink that counts lines and keeps nothing (the log stream)."""

    def __init__(self) -> None:
        self.lines = 0
        self._null = open(os.devnull, "w")  # noqa: SIM115 (closed by close())

    def write(self, text: str) -> int:
        self.lines += text.count("\n")
        return self._null.write(text)

    def flush(self) -> None:
        self._null.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        self._null.close()


def _provider() -> tuple[Any, list[int]]:
    """A tracer provider batching spans into an exporter that only counts them."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    exported = [0]

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            exported[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider, exported


async def measure(base_url: str, *, runs: int, warmup: int, rounds: int) -> Figures:
    from prometheus_client import CollectorRegistry

    from miniagent.observability import configure, unconfigure

    model = OpenAIChatModel("stub-model", base_url=base_url, api_key="sk-bench", provider="openai-compatible")
    agent = Agent(model=model, instructions=INSTRUCTIONS, tools=[get_weather, get_time], name="bench")

    async def run_once() -> str:
        output = (await agent.run(PROMPT)).output
        check_answer(output, "miniagent")
        return output

    figures = Figures(runs=runs, rounds=rounds)
    provider, exported = _provider()
    stream = _Counting()
    measured_on = 0
    try:
        for i in range(rounds * 2):
            on = (i % 4) in (1, 2)  # off, on, on, off, off, on, ...
            handle = None
            if on:
                handle = configure(
                    log_format="json",
                    log_level="INFO",
                    stream=stream,  # type: ignore[arg-type]
                    stdlib_logging=False,
                    tracer_provider=provider,
                    registry=CollectorRegistry(),
                )
            else:
                unconfigure()
            lines_before, spans_before = stream.lines, exported[0]
            provider.force_flush()
            spans_before = exported[0]
            cpu, wall = await _harness.sequential(run_once, warmup=warmup, runs=runs)
            if on:
                assert handle is not None
                handle.force_flush()
                measured_on += warmup + runs
                figures.log_lines_per_run += stream.lines - lines_before
                figures.spans_per_run += exported[0] - spans_before
                figures.on_cpu_ms.append(cpu)
                figures.on_wall_ms.append(wall)
                handle.close()
            else:
                figures.off_cpu_ms.append(cpu)
                figures.off_wall_ms.append(wall)
    finally:
        unconfigure()
        provider.shutdown()
        stream.close()
        await model.aclose()
    figures.log_lines_per_run /= max(measured_on, 1)
    figures.spans_per_run /= max(measured_on, 1)
    return figures


def render(figures: Figures) -> Any:
    from rich.table import Table

    table = Table(
        title=f"(g) observability overhead: one agent run (2 model calls, 2 tool calls) with JSON logs + spans + "
        f"metrics on vs off; median of {figures.rounds} interleaved blocks of {figures.runs} runs each, client CPU "
        f"ms per run; on = {figures.log_lines_per_run:.1f} log lines and {figures.spans_per_run:.1f} spans per run "
        "(no-op exporter)",
        title_justify="left",
    )
    for column in ("side", "CPU ms/run", "wall ms/run", "blocks (CPU ms)"):
        table.add_column(column, justify="left" if column == "side" else "right")
    for side, cpu, wall in (
        ("off", figures.off_cpu_ms, figures.off_wall_ms),
        ("on", figures.on_cpu_ms, figures.on_wall_ms),
    ):
        table.add_row(
            side,
            f"{statistics.median(cpu):.3f}",
            f"{statistics.median(wall):.3f}",
            " ".join(f"{v:.2f}" for v in cpu),
        )
    table.add_row("on / off", f"{figures.ratio:.3f}x", "", "goal <= 1.05x")
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--obs-runs", type=int, default=200, help="(g): runs per block")
    parser.add_argument("--obs-warmup", type=int, default=10, help="(g): warm-up runs per block")
    parser.add_argument("--obs-rounds", type=int, default=6, help="(g): blocks per side, interleaved")


def run_section(args: argparse.Namespace) -> Figures:
    with _harness.stub_process(BENCH / "stub_server.py") as root:
        return asyncio.run(measure(root + "/v1", runs=args.obs_runs, warmup=args.obs_warmup, rounds=args.obs_rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    _harness.apply_quiet_env()
    from rich.console import Console

    figures = run_section(args)
    Console(width=150).print(render(figures))
    if args.json:
        args.json.write_text(json.dumps(figures.as_dict(), indent=2))


if __name__ == "__main__":
    main()

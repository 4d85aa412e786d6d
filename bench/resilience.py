"""(h) Resilience: the chaos matrix, recovery time per fault class, and the happy-path cost of the wrappers.

`python bench/resilience.py` (run by `make bench`) measures three things:

1. **The chaos matrix.** Every fault class of the chaos suite (tests/chaos) end to end: an agent with a real,
   short retry policy (4 attempts, 10-50 ms jittered delays, 0.25 s request timeout) streams a run against the
   loopback fault servers (OpenAI-compatible and Anthropic-shaped), which run in this process. Each row says what
   the run ended with, how many requests the server saw, and the median time of the run.
2. **Recovery time per fault class**: the median run time minus the median of the same run with no fault (same
   provider, same shape: a text answer, or a tool call then the answer).
3. **Happy-path overhead**: against `stub_server.py` (its own process), the default agent (retry policy and
   circuit breaker) vs one with `retry=None, breakers=False`, interleaved; and the bare model vs the same model in
   a `ResilientModel`. Client CPU ms per run, and the ratio (aim: <= 1.02x).

Options: `--repeat N` timed runs per matrix row (5), `--runs N` runs per side for the overhead (300), `--rounds N`
interleaved blocks (6), `--markdown FILE` to also write the matrix as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # the fault servers live with the chaos suite, in tests/chaos
    sys.path.insert(0, str(ROOT))

# Imports below need the repository root on sys.path (above), hence E402.
import anyio  # noqa: E402
from tests.chaos._fault_anthropic import ANTHROPIC  # noqa: E402
from tests.chaos._fault_openai import OPENAI  # noqa: E402
from tests.chaos._server import (  # noqa: E402
    Call,
    Cut,
    Dialect,
    Drop,
    FaultServer,
    Malformed,
    Reply,
    Respond,
    Slow,
    Stall,
    Status,
    Step,
    Text,
    ToolCalls,
    Truncated,
    refused_url,
)

import _harness  # noqa: E402
from miniagent import Agent, ModelSettings, OpenAIChatModel, Tool  # noqa: E402
from miniagent.events import (  # noqa: E402
    AgentEvent,
    FallbackUsed,
    RetryScheduled,
    StreamRestarted,
    ToolCallFinished,
    add_event_handler,
)
from miniagent.messages import ModelMessage, ModelRequest, SystemPromptPart, UserPromptPart  # noqa: E402
from miniagent.models import Model, ModelRequestParameters, ResponseAssembler  # noqa: E402
from miniagent.models.anthropic import AnthropicModel  # noqa: E402
from miniagent.resilience import BreakerRegistry, FallbackModel, ResilientModel, RetryPolicy  # noqa: E402

SHORT = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=10.0)
"""The matrix's retry policy: the default's shape with millisecond delays."""
REQUEST_TIMEOUT_S = 0.25
"""Each request's timeout in the matrix (the slow faults wait past it)."""
TOOL_TIMEOUT_S = 0.25
"""The tool timeout for the hung-tool row (the default, 60 s, is what the chaos suite checks on a manual clock)."""
PROMPT = "What is the weather in Paris?"
ANSWER = "It is sunny and 18 C in Paris today."
BACKUP_ANSWER = "Backup: it is sunny and 18 C in Paris today."
WEATHER = Call("get_weather", '{"city": "Paris"}', id="call_weather")

Kind = Literal["single", "refused", "fallback-down", "all-down", "breaker-open"]
ToolKind = Literal["ok", "raises", "hangs"]


def _dialect(provider: str) -> Dialect:
    return OPENAI if provider == "openai" else ANTHROPIC


def _tool_then_answer(dialect: Dialect) -> Callable[[Any], Reply]:
    def reply(body: Any) -> Reply:
        return Text(ANSWER) if dialect.has_tool_results(body) else ToolCalls((WEATHER,))

    return reply


def _words(provider: str, n: int) -> int:
    """Stream events that carry the first `n` words of a text answer (Anthropic opens with two more events)."""
    return n if provider == "openai" else n + 2


@dataclass(frozen=True)
class Case:
    """One row of the matrix."""

    fault: str
    provider: Literal["openai", "anthropic"]
    script: Callable[[], list[Step]]
    expect: str
    """`recovered`, or the class name of the typed error the run must end with."""
    tool: ToolKind | None = None
    """A `get_weather` tool that works, raises, or hangs; `None`: no tools (a text answer)."""
    kind: Kind = "single"
    streamed: bool = True

    @property
    def shape(self) -> str:
        return "tool" if self.tool is not None else "text"


def _never() -> list[Step]:
    return []


def cases() -> list[Case]:
    """Every fault class, as the chaos suite covers them."""
    ev = anyio.Event  # a fresh event per run: never set, so the server waits until the client gives up
    o: Literal["openai"] = "openai"
    a: Literal["anthropic"] = "anthropic"
    return [
        Case("none (baseline, text)", o, _never, "recovered"),
        Case("none (baseline, tool call)", o, _never, "recovered", tool="ok"),
        Case("HTTP 500 once", o, lambda: [Status(500)], "recovered"),
        Case("HTTP 503 three times", o, lambda: [Status(503)] * 3, "recovered"),
        Case("HTTP 429, Retry-After: 1 (s)", o, lambda: [Status(429, headers={"retry-after": "1"})], "recovered"),
        Case(
            "HTTP 429, x-ratelimit-reset-requests: 50ms",
            o,
            lambda: [Status(429, headers={"x-ratelimit-reset-requests": "50ms"})],
            "recovered",
        ),
        Case("HTTP 503 for good", o, lambda: [Status(503)] * 10, "ModelOverloaded"),
        Case("slow response (> 0.25 s timeout), once", o, lambda: [Slow(release=ev())], "recovered"),
        Case("stream goes silent mid-answer, once", o, lambda: [Stall(3, release=ev())], "recovered"),
        Case("connection dropped before responding", o, lambda: [Drop()], "recovered"),
        Case("SSE cut mid tool-call arguments", o, lambda: [Cut(3)], "recovered", tool="ok"),
        Case(
            "SSE cut mid final answer",
            o,
            lambda: [Respond(ToolCalls((WEATHER,))), Cut(3)],
            "recovered",
            tool="ok",
        ),
        Case("SSE ends early (no finish, no [DONE])", o, lambda: [Truncated(3)], "recovered"),
        Case("SSE ends without [DONE] after finish", o, lambda: [Truncated()], "recovered"),
        Case("JSON body cut half-way (not streamed)", o, lambda: [Cut(0)], "recovered", streamed=False),
        Case("malformed JSON with 200 (not streamed)", o, lambda: [Malformed()] * 4, "ModelAPIError", streamed=False),
        Case("malformed SSE event with 200", o, lambda: [Malformed()] * 4, "ModelAPIError"),
        Case("HTML login page with 200", o, lambda: [_login_page()] * 4, "ModelAPIError"),
        Case(
            "tool call with invalid JSON arguments",
            o,
            lambda: [Respond(ToolCalls((Call("get_weather", '{"city": "Par'),)))],
            "recovered",
            tool="ok",
        ),
        Case(
            "tool call to an unknown tool",
            o,
            lambda: [Respond(ToolCalls((Call("get_wether", '{"city": "Paris"}'),)))],
            "recovered",
            tool="ok",
        ),
        Case("tool raises", o, _never, "recovered", tool="raises"),
        Case("tool hangs (0.25 s tool timeout; 60 s by default)", o, _never, "recovered", tool="hangs"),
        Case("permanently down (connection refused)", o, _never, "ModelAPIError", kind="refused"),
        Case("primary down, FallbackModel([down, good])", o, _never, "recovered", kind="fallback-down"),
        Case("every model down (fallback chain)", o, _never, "AllModelsFailed", kind="all-down"),
        Case("circuit breaker open", o, lambda: [Status(500)] * 10, "CircuitOpen", kind="breaker-open"),
        Case("none (baseline, text)", a, _never, "recovered"),
        Case("HTTP 529 overloaded once", a, lambda: [Status(529)], "recovered"),
        Case("HTTP 429, retry-after: 1 (s)", a, lambda: [Status(429, headers={"retry-after": "1"})], "recovered"),
        Case("SSE cut mid answer", a, lambda: [Cut(_words("anthropic", 3))], "recovered"),
        Case("SSE ends without message_stop", a, lambda: [Truncated()], "recovered"),
        Case("malformed SSE event with 200", a, lambda: [Malformed()] * 4, "ModelAPIError"),
        Case("malformed JSON with 200 (not streamed)", a, lambda: [Malformed()] * 4, "ModelAPIError", streamed=False),
        Case("HTML login page with 200", a, lambda: [_login_page()] * 4, "ModelAPIError"),
    ]


def _login_page() -> Malformed:
    return Malformed(b"<html><head><title>Sign in</title></head><body>...</body></html>", content_type="text/html")


@dataclass
class Trial:
    """One run of a case."""

    seconds: float
    error: BaseException | None
    output: str | None
    attempts: str
    events: list[AgentEvent]


@dataclass
class MatrixRow:
    """One case's figures over its runs."""

    case: Case
    trials: list[Trial] = field(default_factory=list)
    baseline_ms: float | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(t.seconds for t in self.trials) * 1000

    @property
    def ok(self) -> bool:
        """Whether every run ended as the case expects."""
        expect = self.case.expect
        if expect == "recovered":
            return all(t.error is None and t.output in (ANSWER, BACKUP_ANSWER, _TOOL_DOWN) for t in self.trials)
        return all(t.error is not None and type(t.error).__name__ == expect for t in self.trials)

    def outcome(self) -> str:
        last = self.trials[-1]
        if last.error is not None:
            text = f"error: `{type(last.error).__name__}`"
        else:
            text = "recovered"
            notes = []
            kinds = {type(e) for e in last.events}
            causes = {e.cause for e in last.events if isinstance(e, RetryScheduled)}
            if causes & {"tool-args", "unknown-tool"}:
                notes.append("retry prompt")
            if StreamRestarted in kinds:
                notes.append("`StreamRestarted`")
            if FallbackUsed in kinds:
                notes.append("`FallbackUsed`")
            tool_outcomes = {e.outcome for e in last.events if isinstance(e, ToolCallFinished)} - {"success"}
            if tool_outcomes:
                notes.append(f"tool {'/'.join(sorted(tool_outcomes))} told to the model")
            if notes:
                text += " (" + ", ".join(notes) + ")"
        return text if self.ok else f"**UNEXPECTED** {text} (expected {self.case.expect})"


_TOOL_DOWN = "I could not reach the weather service."


class CaseRunner:
    """Runs one case again and again: its servers and models are made once (SDK clients cost tens of ms), and
    each run gets a fresh script, a fresh breaker registry and a fresh agent.
    """

    def __init__(self, case: Case) -> None:
        self.case = case
        dialect = _dialect(case.provider)
        default: Any = Text(ANSWER)
        if case.tool == "ok":
            default = _tool_then_answer(dialect)
        elif case.tool in ("raises", "hangs"):
            default = _tool_failure_reply(dialect)
        if case.kind in ("fallback-down", "all-down"):
            default = Text(BACKUP_ANSWER)
        self.server = FaultServer(dialect, default=default)
        self.models: list[Model] = []

    async def __aenter__(self) -> CaseRunner:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for model in self.models:
            await model.aclose()
        await self.server.stop()

    def _make(self, where: FaultServer | str, name: str) -> Model:
        if self.case.provider == "anthropic":
            url = where if isinstance(where, str) else where.url()
            model: Model = AnthropicModel(name, base_url=url, api_key="sk-ant-bench")
        else:
            url = where if isinstance(where, str) else where.url("/v1")
            model = OpenAIChatModel(name, base_url=url, api_key="sk-bench", provider="openai-compatible")
        self.models.append(model)
        return model

    def _model(self) -> tuple[Model, Callable[[list[AgentEvent]], str]]:
        """The run's model, and how to count the attempts of the run from its events and the server."""
        case, server = self.case, self.server
        if not self.models:  # made once: the primary (or only) model, then the backup
            if case.kind in ("single", "breaker-open"):
                self._make(server, "fault-model")
            else:
                self._make(refused_url("/v1"), "primary")
                self._make(server, "backup")
        if case.kind in ("single", "breaker-open"):
            return self.models[0], lambda _: str(server.count)
        down = self.models[0]
        if case.kind == "refused":
            return down, lambda events: f"{_retries(events, down.upstream) + 1} (refused)"
        chain = FallbackModel([down, self.models[1]], retry=SHORT, breakers=BreakerRegistry())

        def attempts(events: list[AgentEvent]) -> str:
            return f"{_retries(events, down.upstream) + 1} refused + {server.count} backup"

        return chain, attempts

    async def run(self) -> Trial:
        case, server = self.case, self.server
        server.script = case.script()
        if case.kind == "all-down":
            server.script = [Status(503)] * 10
        server.requests.clear()
        model, attempts = self._model()
        agent = Agent(
            model,
            tools=_tools(case.tool),
            retry=SHORT,
            breakers=_registry(case),
            model_settings=ModelSettings(timeout_s=REQUEST_TIMEOUT_S),
            tool_timeout=TOOL_TIMEOUT_S,
        )
        if case.kind == "breaker-open":  # trip it first (not timed): failed attempts open it
            await _quietly(agent, case)
            server.requests.clear()
        events: list[AgentEvent] = []
        remove = add_event_handler(events.append)
        error: BaseException | None = None
        output: str | None = None
        try:
            started = time.perf_counter()
            try:
                output = await _run_agent(agent, case.streamed)
            except Exception as exc:
                error = exc
            seconds = time.perf_counter() - started
        finally:
            remove()
        return Trial(seconds, error, output, attempts(events), events)


def _tool_failure_reply(dialect: Dialect) -> Callable[[Any], Reply]:
    def reply(body: Any) -> Reply:
        return Text(_TOOL_DOWN) if dialect.has_tool_results(body) else ToolCalls((WEATHER,))

    return reply


def _registry(case: Case) -> BreakerRegistry:
    if case.kind == "breaker-open":
        return BreakerRegistry(failure_rate=0.5, window=4, min_calls=2, open_s=60.0)
    return BreakerRegistry()  # fresh per run: no state leaks from row to row


async def _quietly(agent: Agent[None, str], case: Case) -> None:
    try:
        await _run_agent(agent, case.streamed)
    except Exception:  # the failures that open the breaker
        return


async def _run_agent(agent: Agent[None, str], streamed: bool) -> str:
    if not streamed:
        return (await agent.run(PROMPT)).output
    async with agent.run_stream(PROMPT) as run:
        async for _ in run.events():
            pass
        return await run.get_output()


def _tools(kind: ToolKind | None) -> list[Tool[None]]:
    if kind is None:
        return []

    async def get_weather(city: str) -> str:
        """Current weather for a city."""
        if kind == "raises":
            raise RuntimeError(f"the weather service for {city} is down")
        if kind == "hangs":
            await anyio.Event().wait()
        return f"Sunny, 18 C in {city}"

    return [Tool(get_weather)]


def _retries(events: list[AgentEvent], upstream: str) -> int:
    return sum(
        1 for e in events if isinstance(e, RetryScheduled) and e.cause == "model-error" and e.upstream == upstream
    )


async def measure_matrix(repeat: int) -> list[MatrixRow]:
    """Every case: one warm-up run, then `repeat` timed runs."""
    rows = [MatrixRow(case) for case in cases()]
    for row in rows:
        async with CaseRunner(row.case) as runner:
            await runner.run()  # warm-up: the SDK client, the first connection
            for _ in range(repeat):
                row.trials.append(await runner.run())
    baselines = {
        (r.case.provider, r.case.shape, r.case.streamed): r.median_ms for r in rows if r.case.fault.startswith("none")
    }
    for row in rows:
        key = (row.case.provider, row.case.shape, True)
        row.baseline_ms = baselines.get(key)
    return rows


def render_matrix(rows: list[MatrixRow], *, repeat: int) -> str:
    """The matrix as a Markdown table."""
    lines = [
        f"Each row: a streamed agent run (unless marked) against a loopback fault server, retry policy of 4 attempts "
        f"with 10-50 ms jittered delays, {REQUEST_TIMEOUT_S} s request timeout; median of {repeat} runs. "
        "`attempts` = requests the server saw; `recovery` = time beyond the same run without a fault.",
        "",
        "| provider | fault | outcome | attempts | time (ms) | recovery (ms) |",
        "| --- | --- | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        case = row.case
        fault = case.fault if case.streamed or "not streamed" in case.fault else f"{case.fault} (not streamed)"
        recovery = "-"
        if row.baseline_ms is not None and not case.fault.startswith("none"):
            recovery = f"+{max(0.0, row.median_ms - row.baseline_ms):.0f}"
        label = "OpenAI-compatible" if case.provider == "openai" else "Anthropic"
        lines.append(
            f"| {label} | {fault} | {row.outcome()} | {row.trials[-1].attempts} | {row.median_ms:.0f} | {recovery} |"
        )
    return "\n".join(lines)


# ---- happy-path overhead ---------------------------------------------------------------------------------------


def _get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny, 18 C in {city}"


def _get_time(city: str) -> str:
    """Local time in a city."""
    return f"14:00 in {city}"


@dataclass
class Overhead:
    """CPU ms per run of the wrapped and unwrapped sides, measured in interleaved blocks."""

    label: str
    wrapped_cpu_ms: float
    bare_cpu_ms: float
    wrapped_wall_ms: float
    bare_wall_ms: float

    @property
    def ratio(self) -> float:
        return self.wrapped_cpu_ms / self.bare_cpu_ms


async def _interleaved(
    wrapped: Callable[[], Any], bare: Callable[[], Any], *, runs: int, rounds: int, warmup: int = 20
) -> tuple[float, float, float, float]:
    for _ in range(warmup):
        await wrapped()
        await bare()
    per_block = max(1, runs // rounds)
    cpu = {"w": 0.0, "b": 0.0}
    walls: dict[str, list[float]] = {"w": [], "b": []}
    for block in range(rounds * 2):
        side = "w" if block % 2 == 0 else "b"
        fn = wrapped if side == "w" else bare
        gc.collect()
        start_cpu = time.process_time()
        for _ in range(per_block):
            start = time.perf_counter()
            await fn()
            walls[side].append(time.perf_counter() - start)
        cpu[side] += time.process_time() - start_cpu
    n = per_block * rounds
    return (
        cpu["w"] / n * 1000,
        cpu["b"] / n * 1000,
        statistics.median(walls["w"]) * 1000,
        statistics.median(walls["b"]) * 1000,
    )


async def measure_overhead(base_url: str, *, runs: int, rounds: int) -> list[Overhead]:
    """The default agent vs `retry=None, breakers=False`; and a bare model vs the same in a `ResilientModel`."""
    results: list[Overhead] = []
    model = OpenAIChatModel("stub-model", base_url=base_url, api_key="sk-bench", provider="openai-compatible")
    tools = [_get_weather, _get_time]
    resilient = Agent(model, instructions=_harness.INSTRUCTIONS, tools=tools, breakers=BreakerRegistry())
    plain = Agent(model, instructions=_harness.INSTRUCTIONS, tools=tools, retry=None, breakers=False)

    async def run_resilient() -> None:
        _harness.check_answer((await resilient.run(_harness.PROMPT)).output, "resilient agent")

    async def run_plain() -> None:
        _harness.check_answer((await plain.run(_harness.PROMPT)).output, "plain agent")

    figures = await _interleaved(run_resilient, run_plain, runs=runs, rounds=rounds)
    results.append(Overhead("agent run: default resilience vs retry=None, breakers=False", *figures))

    wrapped_model = ResilientModel(model, breakers=BreakerRegistry())
    messages: list[ModelMessage] = [
        ModelRequest([SystemPromptPart(_harness.INSTRUCTIONS), UserPromptPart(_harness.PROMPT)])
    ]
    params = ModelRequestParameters(function_tools=[t.definition for t in resilient.tools])

    def streamed(target: Model) -> Callable[[], Any]:
        async def once() -> None:
            assembler = ResponseAssembler(target.name)
            async for chunk in target.request_stream(messages, None, params):
                assembler.add(chunk)
            assert assembler.response().tool_calls

        return once

    figures = await _interleaved(streamed(wrapped_model), streamed(model), runs=runs, rounds=rounds)
    results.append(Overhead("one streamed request: ResilientModel(model) vs the bare model", *figures))
    await model.aclose()
    return results


def render_overhead(rows: list[Overhead], *, runs: int, rounds: int) -> str:
    lines = [
        f"Happy path against the stub (its own process): client CPU ms per run, {runs} runs per side in {rounds} "
        "interleaved blocks each; median wall ms.",
        "",
        "| what | wrapped CPU ms | unwrapped CPU ms | ratio | wrapped wall ms | unwrapped wall ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.wrapped_cpu_ms:.3f} | {r.bare_cpu_ms:.3f} | {r.ratio:.3f}x | "
            f"{r.wrapped_wall_ms:.2f} | {r.bare_wall_ms:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per matrix row (after one warm-up)")
    parser.add_argument("--runs", type=int, default=300, help="overhead: runs per side")
    parser.add_argument("--rounds", type=int, default=6, help="overhead: interleaved blocks per side")
    parser.add_argument("--no-overhead", action="store_true", help="print the matrix only")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this Markdown file")
    args = parser.parse_args()
    _harness.apply_quiet_env()  # no proxies (traffic stays on 127.0.0.1), no telemetry, a fake key

    started = time.monotonic()
    print("## (h) resilience: the chaos matrix\n", flush=True)
    rows = asyncio.run(measure_matrix(args.repeat))
    text = render_matrix(rows, repeat=args.repeat)
    print(text + "\n", flush=True)
    if not args.no_overhead:
        with _harness.stub_process(BENCH / "stub_server.py") as root:
            overhead = asyncio.run(measure_overhead(root + "/v1", runs=args.runs, rounds=args.rounds))
        table = render_overhead(overhead, runs=args.runs, rounds=args.rounds)
        print(table + "\n")
        text += "\n\n" + table
    print(f"took {time.monotonic() - started:.0f} s")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if not all(row.ok for row in rows):
        sys.exit("some fault classes did not end as expected: see **UNEXPECTED** rows above")


if __name__ == "__main__":
    main()

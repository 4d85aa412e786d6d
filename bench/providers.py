"""(e) Provider adapters: client CPU per request of miniagent's providers vs the bare SDK call doing the same job.

For each provider (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages), as JSON and streamed, and for
two answers (a short text with usage; one tool call), this measures in one process against `stub_providers.py`:

- **ours**: `await model.request(HISTORY, None, PARAMS)`, or `model.request_stream(...)` consumed fully and folded
  with `ResponseAssembler`, as the agent does;
- **bare**: `client.chat.completions.create(...)` / `client.responses.create(...)` / `client.messages.create(...)`
  with the same wire payload written by hand (checked against what the adapter sent), the stream iterated fully,
  and the text or tool call (name, parsed arguments, id) and the usage extracted by hand.

The history is realistic and small: system prompt, user prompt, an assistant tool call, its tool result; one
tool is offered. `python bench/providers.py` runs this section alone; `--profile CASE` profiles one adapter case
(e.g. `anthropic/sse/text`) with cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import statistics
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import anthropic
import openai
from anthropic import AsyncAnthropic
from anthropic.types import (
    AssistantMessageParam,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextDelta,
    ToolParam,
    ToolUseBlock,
    ToolUseBlockParam,
)
from anthropic.types import InputJSONDelta as AntInputJSONDelta
from anthropic.types import TextBlock as AntTextBlock
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionAssistantMessageParam, ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.responses import (
    FunctionToolParam,
    ResponseCompletedEvent,
    ResponseFunctionToolCall,
    ResponseInputItemParam,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseTextDeltaEvent,
)

import _harness
from miniagent.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from miniagent.models import Model, ModelRequestParameters, ResponseAssembler, ToolDefinition
from miniagent.models.anthropic import DEFAULT_MAX_TOKENS, AnthropicModel
from miniagent.models.openai_chat import OpenAIChatModel
from miniagent.models.openai_responses import OpenAIResponsesModel
from stub_providers import (
    INPUT_TOKENS,
    INSTRUCTIONS,
    TEXT,
    TEXT_TOKENS,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_SCHEMA,
    TOOL_TOKENS,
)

BENCH = Path(__file__).resolve().parent
KEY = "sk-bench-not-a-real-key"
PROMPT = "What is the weather in Paris right now, and what time is it there?"
TOOL_RESULT = "Sunny, 18 C, wind 9 km/h from the west; local time 14:00."
PAST_CALL_ID = "call_8fJ2kLm0pQ4rS6tU"
PAST_ARGS = '{"city": "Paris"}'
MODELS = {"text": "stub-model", "tool": "stub-tool-model"}
"""The stub answers a model whose name contains `tool` with a tool call, any other with text."""
PROVIDERS = ("chat", "responses", "anthropic")
LABELS = {"chat": "OpenAI Chat Completions", "responses": "OpenAI Responses", "anthropic": "Anthropic Messages"}
ARGS: dict[str, object] = {"city": "Paris"}

Answer = Literal["text", "tool"]
Job = Callable[[], Awaitable[object]]

# ---- what our adapters get ---------------------------------------------------------------------------------------

HISTORY: list[ModelMessage] = [
    ModelRequest([SystemPromptPart(INSTRUCTIONS), UserPromptPart(PROMPT)]),
    ModelResponse([ToolCallPart(TOOL_NAME, PAST_ARGS, PAST_CALL_ID)], model_name="stub-model"),
    ModelRequest([ToolReturnPart(TOOL_NAME, TOOL_RESULT, PAST_CALL_ID)]),
]
PARAMS = ModelRequestParameters(function_tools=[ToolDefinition(TOOL_NAME, TOOL_DESCRIPTION, TOOL_SCHEMA)])

# ---- the same payloads, by hand ----------------------------------------------------------------------------------

_CHAT_ASSISTANT: ChatCompletionAssistantMessageParam = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": PAST_CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": PAST_ARGS}}],
}
CHAT_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": INSTRUCTIONS},
    {"role": "user", "content": PROMPT},
    _CHAT_ASSISTANT,
    {"role": "tool", "tool_call_id": PAST_CALL_ID, "content": TOOL_RESULT},
]
CHAT_TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA}}
]
RESP_INPUT: list[ResponseInputItemParam] = [
    {"role": "user", "content": PROMPT},
    {"type": "function_call", "call_id": PAST_CALL_ID, "name": TOOL_NAME, "arguments": PAST_ARGS},
    {"type": "function_call_output", "call_id": PAST_CALL_ID, "output": TOOL_RESULT},
]
RESP_TOOLS: list[FunctionToolParam] = [
    {"type": "function", "name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA, "strict": False}
]
_ANT_TOOL_USE: ToolUseBlockParam = {"type": "tool_use", "id": PAST_CALL_ID, "name": TOOL_NAME, "input": ARGS}
_ANT_ASSISTANT: AssistantMessageParam = {"role": "assistant", "content": [_ANT_TOOL_USE]}
_ANT_USER: MessageParam = {"role": "user", "content": [{"type": "text", "text": PROMPT}]}
ANT_MESSAGES: list[MessageParam] = [
    _ANT_USER,
    _ANT_ASSISTANT,
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": PAST_CALL_ID, "content": TOOL_RESULT, "is_error": False}],
    },
]
ANT_TOOLS: list[ToolParam] = [{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}]


@dataclass(slots=True)
class Extracted:
    """What a hand-written client takes out of a response."""

    text: str = ""
    calls: list[tuple[str, object, str]] = field(default_factory=list)
    """(name, parsed arguments, call id)"""
    input_tokens: int = 0
    output_tokens: int = 0


def _check_bare(got: Extracted, answer: Answer, where: str) -> None:
    if answer == "text":
        ok = got.text == TEXT and not got.calls and got.output_tokens == TEXT_TOKENS
    else:
        ok = got.calls == [(TOOL_NAME, ARGS, got.calls[0][2])] and got.output_tokens == TOOL_TOKENS
    if not ok or got.input_tokens != INPUT_TOKENS:
        raise RuntimeError(f"{where}: unexpected answer {got!r}")


def _check_ours(response: ModelResponse, answer: Answer, where: str) -> None:
    parts = response.parts
    if answer == "text":
        ok = len(parts) == 1 and isinstance(parts[0], TextPart) and parts[0].content == TEXT
        ok = ok and response.usage.output_tokens == TEXT_TOKENS
    else:
        part = parts[0] if len(parts) == 1 else None
        ok = isinstance(part, ToolCallPart) and part.tool_name == TOOL_NAME and part.args_dict() == ARGS
        ok = ok and response.usage.output_tokens == TOOL_TOKENS
    if not ok or response.usage.input_tokens != INPUT_TOKENS:
        raise RuntimeError(f"{where}: unexpected response {response!r}")


# ---- bare SDK jobs -----------------------------------------------------------------------------------------------


async def chat_json(client: AsyncOpenAI, model: str) -> Extracted:
    completion = await client.chat.completions.create(
        model=model, messages=CHAT_MESSAGES, tools=CHAT_TOOLS, stream=False
    )
    message = completion.choices[0].message
    got = Extracted(message.content or "")
    for call in message.tool_calls or ():
        if call.type == "function":
            got.calls.append((call.function.name, json.loads(call.function.arguments), call.id))
    if completion.usage is not None:
        got.input_tokens, got.output_tokens = completion.usage.prompt_tokens, completion.usage.completion_tokens
    return got


async def chat_sse(client: AsyncOpenAI, model: str) -> Extracted:
    stream = await client.chat.completions.create(
        model=model, messages=CHAT_MESSAGES, tools=CHAT_TOOLS, stream=True, stream_options={"include_usage": True}
    )
    texts: list[str] = []
    calls: dict[int, tuple[list[str], list[str], list[str]]] = {}  # index -> (name, id, argument pieces)
    got = Extracted()
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                got.input_tokens, got.output_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            for choice in chunk.choices:
                delta = choice.delta
                if delta.content:
                    texts.append(delta.content)
                for call in delta.tool_calls or ():
                    name, call_id, args = calls.setdefault(call.index, ([], [], []))
                    if call.id:
                        call_id.append(call.id)
                    if call.function is not None:
                        if call.function.name:
                            name.append(call.function.name)
                        if call.function.arguments:
                            args.append(call.function.arguments)
    got.text = "".join(texts)
    got.calls = [("".join(n), json.loads("".join(a)), "".join(i)) for n, i, a in calls.values()]
    return got


async def responses_json(client: AsyncOpenAI, model: str) -> Extracted:
    response = await client.responses.create(
        model=model, instructions=INSTRUCTIONS, input=RESP_INPUT, tools=RESP_TOOLS, store=False, stream=False
    )
    got = Extracted()
    for item in response.output:
        if isinstance(item, ResponseOutputMessage):
            got.text += "".join(c.text for c in item.content if isinstance(c, ResponseOutputText))
        elif isinstance(item, ResponseFunctionToolCall):
            got.calls.append((item.name, json.loads(item.arguments), item.call_id))
    if response.usage is not None:
        got.input_tokens, got.output_tokens = response.usage.input_tokens, response.usage.output_tokens
    return got


async def responses_sse(client: AsyncOpenAI, model: str) -> Extracted:
    stream = await client.responses.create(
        model=model, instructions=INSTRUCTIONS, input=RESP_INPUT, tools=RESP_TOOLS, store=False, stream=True
    )
    texts: list[str] = []
    got = Extracted()
    async with stream:
        async for event in stream:
            if isinstance(event, ResponseTextDeltaEvent):
                texts.append(event.delta)
            elif isinstance(event, ResponseOutputItemDoneEvent) and isinstance(event.item, ResponseFunctionToolCall):
                got.calls.append((event.item.name, json.loads(event.item.arguments), event.item.call_id))
            elif isinstance(event, ResponseCompletedEvent) and event.response.usage is not None:
                got.input_tokens = event.response.usage.input_tokens
                got.output_tokens = event.response.usage.output_tokens
    got.text = "".join(texts)
    return got


async def anthropic_json(client: AsyncAnthropic, model: str) -> Extracted:
    message = await client.messages.create(
        model=model,
        max_tokens=DEFAULT_MAX_TOKENS,
        system=INSTRUCTIONS,
        messages=ANT_MESSAGES,
        tools=ANT_TOOLS,
        tool_choice={"type": "auto"},
        stream=False,
    )
    got = Extracted(input_tokens=message.usage.input_tokens, output_tokens=message.usage.output_tokens)
    for block in message.content:
        if isinstance(block, AntTextBlock):
            got.text += block.text
        elif isinstance(block, ToolUseBlock):
            got.calls.append((block.name, block.input, block.id))
    return got


async def anthropic_sse(client: AsyncAnthropic, model: str) -> Extracted:
    stream = await client.messages.create(
        model=model,
        max_tokens=DEFAULT_MAX_TOKENS,
        system=INSTRUCTIONS,
        messages=ANT_MESSAGES,
        tools=ANT_TOOLS,
        tool_choice={"type": "auto"},
        stream=True,
    )
    texts: list[str] = []
    calls: dict[int, tuple[str, str, list[str]]] = {}  # block index -> (name, id, JSON pieces)
    got = Extracted()
    async with stream:
        async for event in stream:
            if isinstance(event, RawContentBlockDeltaEvent):
                delta = event.delta
                if isinstance(delta, TextDelta):
                    texts.append(delta.text)
                elif isinstance(delta, AntInputJSONDelta):
                    calls[event.index][2].append(delta.partial_json)
            elif isinstance(event, RawContentBlockStartEvent) and isinstance(event.content_block, ToolUseBlock):
                calls[event.index] = (event.content_block.name, event.content_block.id, [])
            elif isinstance(event, RawMessageStartEvent):
                got.input_tokens = event.message.usage.input_tokens
            elif isinstance(event, RawMessageDeltaEvent):
                got.output_tokens = event.usage.output_tokens
    got.text = "".join(texts)
    got.calls = [(name, json.loads("".join(pieces)), call_id) for name, call_id, pieces in calls.values()]
    return got


# ---- cases -------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Row:
    """One case's figures: CPU ms and median wall ms per request, ours and bare."""

    provider: str
    stream: bool
    answer: Answer
    ours_cpu_ms: float = 0.0
    bare_cpu_ms: float = 0.0
    ours_wall_ms: float = 0.0
    bare_wall_ms: float = 0.0
    payload: str = ""
    """`same` when the adapter and the hand-written call sent equal JSON bodies, else what differed."""

    @property
    def case(self) -> str:
        return f"{self.provider}/{'sse' if self.stream else 'json'}/{self.answer}"

    @property
    def ratio(self) -> float:
        return self.ours_cpu_ms / self.bare_cpu_ms if self.bare_cpu_ms else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"section": "providers", "case": self.case, **asdict(self), "ratio": self.ratio}


class Clients:
    """Our models (one per answer) and the bare SDK clients, all against one stub."""

    def __init__(self, root: str) -> None:
        v1 = root + "/v1"
        self.root = root
        self.openai = AsyncOpenAI(base_url=v1, api_key=KEY, max_retries=0)
        self.anthropic = AsyncAnthropic(base_url=root, api_key=KEY, max_retries=0)
        self.models: dict[tuple[str, Answer], Model] = {}
        for answer, name in MODELS.items():
            key: Answer = "text" if answer == "text" else "tool"
            self.models["chat", key] = OpenAIChatModel(name, base_url=v1, api_key=KEY, provider="openai")
            self.models["responses", key] = OpenAIResponsesModel(name, base_url=v1, api_key=KEY)
            self.models["anthropic", key] = AnthropicModel(name, base_url=root, api_key=KEY)

    def ours(self, provider: str, stream: bool, answer: Answer) -> Job:
        model = self.models[provider, answer]
        where = f"{provider} adapter"

        async def request() -> object:
            response = await model.request(HISTORY, None, PARAMS)
            _check_ours(response, answer, where)
            return response

        async def request_stream() -> object:
            assembler = ResponseAssembler(model.name)
            async for chunk in model.request_stream(HISTORY, None, PARAMS):
                assembler.add(chunk)
            response = assembler.response()
            _check_ours(response, answer, where)
            return response

        return request_stream if stream else request

    def bare(self, provider: str, stream: bool, answer: Answer) -> Job:
        name = MODELS[answer]
        where = f"bare {provider} SDK"
        call: Callable[[], Awaitable[Extracted]]
        if provider == "chat":
            call = (lambda: chat_sse(self.openai, name)) if stream else (lambda: chat_json(self.openai, name))
        elif provider == "responses":
            call = (lambda: responses_sse(self.openai, name)) if stream else (lambda: responses_json(self.openai, name))
        else:
            call = (
                (lambda: anthropic_sse(self.anthropic, name))
                if stream
                else (lambda: anthropic_json(self.anthropic, name))
            )

        async def job() -> object:
            got = await call()
            _check_bare(got, answer, where)
            return got

        return job

    def last_body(self, provider: str) -> Any:
        api = {"chat": "chat", "responses": "responses", "anthropic": "messages"}[provider]
        with urllib.request.urlopen(f"{self.root}/_last/{api}", timeout=5) as reply:
            return json.loads(reply.read())

    async def aclose(self) -> None:
        for model in self.models.values():
            await model.aclose()
        await self.openai.close()
        await self.anthropic.close()


async def compare_payloads(clients: Clients, provider: str, stream: bool) -> str:
    """`same` when the adapter and the hand-written call send equal JSON bodies; else the keys that differ."""
    await clients.ours(provider, stream, "text")()
    ours = clients.last_body(provider)
    await clients.bare(provider, stream, "text")()
    bare = clients.last_body(provider)
    if ours == bare:
        return "same"
    keys = sorted(k for k in ours.keys() | bare.keys() if ours.get(k) != bare.get(k))
    return "differs: " + ", ".join(keys)


async def _block(job: Job, n: int) -> tuple[float, list[float]]:
    walls: list[float] = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await job()
        walls.append(time.perf_counter() - start)
    return time.process_time() - cpu, walls


async def measure_case(clients: Clients, row: Row, *, requests: int, warmup: int, rounds: int) -> None:
    """Fill `row`: `requests` requests per side after `warmup`, in `rounds` interleaved blocks (ours, bare, ...).

    Interleaving spreads drift (other load, CPU frequency) over both sides rather than onto one.
    """
    ours = clients.ours(row.provider, row.stream, row.answer)
    bare = clients.bare(row.provider, row.stream, row.answer)
    for _ in range(warmup):
        await ours()
        await bare()
    gc.collect()  # once per case: a full collection walks both SDKs' modules (~0.1 s)
    per_block = max(1, requests // rounds)
    cpu = {"ours": 0.0, "bare": 0.0}
    walls: dict[str, list[float]] = {"ours": [], "bare": []}
    for i in range(rounds):
        order = [("ours", ours), ("bare", bare)]
        for side, job in order if i % 2 == 0 else order[::-1]:
            spent, block_walls = await _block(job, per_block)
            cpu[side] += spent
            walls[side] += block_walls
    count = per_block * rounds
    row.ours_cpu_ms, row.bare_cpu_ms = cpu["ours"] / count * 1000, cpu["bare"] / count * 1000
    row.ours_wall_ms = statistics.median(walls["ours"]) * 1000
    row.bare_wall_ms = statistics.median(walls["bare"]) * 1000


async def measure(root: str, *, requests: int, warmup: int, rounds: int) -> list[Row]:
    """Every case against the stub at `root`, in this process."""
    clients = Clients(root)
    rows: list[Row] = []
    try:
        for provider in PROVIDERS:
            for stream in (False, True):
                payload = await compare_payloads(clients, provider, stream)
                for answer in ("text", "tool"):
                    row = Row(provider, stream, "text" if answer == "text" else "tool", payload=payload)
                    await measure_case(clients, row, requests=requests, warmup=warmup, rounds=rounds)
                    rows.append(row)
    finally:
        await clients.aclose()
    return rows


async def profile(root: str, case: str, *, requests: int, top: int) -> None:
    """cProfile our adapter (and the bare call, for comparison) on one case, e.g. `anthropic/sse/text`."""
    provider, mode, answer = case.split("/")
    clients = Clients(root)
    try:
        for side in ("ours", "bare"):
            make = clients.ours if side == "ours" else clients.bare
            job = make(provider, mode == "sse", "text" if answer == "text" else "tool")
            for _ in range(20):
                await job()
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(requests):
                await job()
            profiler.disable()
            print(f"\n===== {side}: {case}, {requests} requests; sorted by cumulative time =====")
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("cumulative").print_stats(top)
            print(f"===== {side}: {case}; sorted by own time =====")
            stats.sort_stats("tottime").print_stats(top)
    finally:
        await clients.aclose()


def render(rows: list[Row], *, requests: int, warmup: int, rounds: int) -> Any:
    from rich.table import Table

    table = Table(
        title=f"(e) provider adapters, one request (history: system, user, assistant tool call, tool result; one "
        f"tool): mean client CPU ms per request over {requests} requests per side after {warmup} warm-up, in "
        f"{rounds} interleaved blocks; median wall ms. ours = miniagent's adapter; bare = the SDK call with the "
        f"same payload, answer extracted by hand.",
        title_justify="left",
    )
    for column in ("provider", "mode", "answer", "ours CPU ms", "bare CPU ms", "ours/bare", "ours wall", "bare wall"):
        table.add_column(column, justify="left" if column in ("provider", "mode", "answer") else "right")
    table.add_column("payload")
    for row in rows:
        ratio = row.ratio
        flag = "[bold red]" if ratio > 1.05 else ""
        table.add_row(
            LABELS[row.provider],
            "SSE" if row.stream else "JSON",
            row.answer,
            f"{row.ours_cpu_ms:.2f}",
            f"{row.bare_cpu_ms:.2f}",
            f"{flag}{ratio:.2f}x",
            f"{row.ours_wall_ms:.2f}",
            f"{row.bare_wall_ms:.2f}",
            row.payload,
        )
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider-requests", type=int, default=100, help="(e): measured requests per side and case")
    parser.add_argument("--provider-warmup", type=int, default=10, help="(e): warm-up requests per side and case")
    parser.add_argument("--provider-rounds", type=int, default=4, help="(e): interleaved blocks per case")


def run_section(root: str, args: argparse.Namespace) -> list[Row]:
    return asyncio.run(
        measure(root, requests=args.provider_requests, warmup=args.provider_warmup, rounds=args.provider_rounds)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    parser.add_argument("--profile", metavar="CASE", help="cProfile one case instead, e.g. anthropic/sse/text")
    parser.add_argument("--top", type=int, default=30, help="with --profile: functions to list")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    _harness.apply_quiet_env()  # no proxies (traffic stays on 127.0.0.1), no telemetry, a fake key

    from rich.console import Console

    console = Console(width=max(Console().width, 150))
    started = time.monotonic()
    with _harness.stub_process(BENCH / "stub_providers.py") as root:
        if args.profile:
            asyncio.run(profile(root, args.profile, requests=args.provider_requests, top=args.top))
            return
        console.print(
            f"[bold]miniagent bench (e)[/bold]  openai {openai.__version__}, anthropic {anthropic.__version__}"
        )
        rows = run_section(root, args)
    console.print(
        render(rows, requests=args.provider_requests, warmup=args.provider_warmup, rounds=args.provider_rounds)
    )
    console.print(f"took {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([row.as_dict() for row in rows], indent=2))


if __name__ == "__main__":
    main()

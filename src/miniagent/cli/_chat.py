"""The interactive chat loop behind `miniagent chat`."""

from __future__ import annotations

import ast
import asyncio
import datetime
import importlib
import operator
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console

from ..agent import Agent
from ..context import correlation_scope
from ..errors import MiniAgentError, UserError
from ..events import (
    AgentEvent,
    FallbackUsed,
    RetryScheduled,
    StreamRestarted,
    TextDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from ..messages import ModelMessage
from ..models import Model

if TYPE_CHECKING:
    from ..store import SQLStore

_HELP = (
    "Commands: /reset starts a new conversation, /threads lists them, /branch [N] lists or switches branches, "
    "/exit quits (or Ctrl-D). Ctrl-C stops a generation."
)

_PROMPT = "you> "


def current_time() -> str:
    """The current local date and time, ISO 8601."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


_OPS: dict[type[ast.AST], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression such as `(2 + 3) * 4.5`.

    Args:
        expression: Numbers with + - * / % ** and parentheses.
    """

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](ev(node.left), ev(node.right)))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](ev(node.operand)))
        raise ValueError(f"unsupported expression element: {ast.dump(node)[:40]}")

    return ev(ast.parse(expression, mode="eval").body)


def load_agent(path: str) -> Agent[Any, Any]:
    """Import `module:attribute` and check that it is an Agent."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--agent must look like 'package.module:attribute', got {path!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"Cannot import {module_name!r} for --agent ({exc}); check the module path and PYTHONPATH."
        ) from exc
    obj = getattr(module, attr, None)
    if not isinstance(obj, Agent):
        raise UserError(f"{path!r} is {type(obj).__name__}, not a miniagent Agent.")
    return obj


class _Input:
    """Reads lines in a daemon thread so the event loop stays free and Ctrl-C can reach it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, console: Console) -> None:
        self._loop = loop
        self._console = console

    async def readline(self) -> str | None:
        future: asyncio.Future[str | None] = self._loop.create_future()

        def read() -> None:
            try:
                line: str | None = input(_PROMPT) if sys.stdin.isatty() else sys.stdin.readline()
                if line == "" and not sys.stdin.isatty():
                    line = None
            except EOFError:
                line = None
            except Exception:  # a closed stdin: treat as end of input
                line = None

            def deliver() -> None:
                if not future.done():
                    future.set_result(line)

            self._loop.call_soon_threadsafe(deliver)

        if not sys.stdin.isatty():
            self._console.print(_PROMPT, end="", markup=False, highlight=False)
        threading.Thread(target=read, daemon=True, name="miniagent-input").start()
        return await future


class _Session:
    def __init__(
        self, agent: Agent[Any, Any], model: Model, console: Console, debug: bool, store: SQLStore | None = None
    ) -> None:
        self.agent = agent
        self.model = model
        self.console = console
        self.debug = debug
        self.store = store
        self.thread_id: str | None = None
        self.history: list[ModelMessage] = []
        self.generation: asyncio.Task[None] | None = None
        self.interrupted = False
        self.text_open = False

    def on_sigint(self) -> None:
        if self.generation is not None and not self.generation.done():
            self.interrupted = True
            self.generation.cancel()
        else:
            self.console.print("\n(type /exit or press Ctrl-D to quit)", style="dim")

    async def turn(self, prompt: str) -> None:
        with correlation_scope():  # the CLI is the edge: one correlation id per turn, on its logs, spans and rows
            await self._turn(prompt)

    async def _turn(self, prompt: str) -> None:
        self.text_open = False
        if self.store is not None:
            stream = self.agent.run_stream(prompt, model=self.model, store=self.store, thread_id=self.thread_id)
        else:
            stream = self.agent.run_stream(prompt, message_history=self.history, model=self.model)
        async with stream as run:
            async for event in run.events():
                self._render(event)
            result = await run.get_result()
        self.history = result.all_messages()
        self.thread_id = result.thread_id
        if not self.text_open:
            self.console.print("bot> ", end="", style="bold cyan")
            self.console.print(str(result.output), markup=False)

    def _render(self, event: AgentEvent) -> None:
        out = self.console
        if isinstance(event, TextDelta):
            if not self.text_open:
                out.print("bot> ", end="", style="bold cyan")
                self.text_open = True
            out.print(event.delta, end="", markup=False)
            out.file.flush()
        elif isinstance(event, ToolCallStarted):
            if self.text_open:
                out.print()
                self.text_open = False
            args = ", ".join(f"{k}={v!r}" for k, v in event.args.items())
            out.print(f"  → {event.tool_name}({args})", style="yellow", markup=False)
        elif isinstance(event, ToolCallFinished):
            result = str(event.result)
            result = result if len(result) <= 200 else result[:200] + "…"
            style = "green" if event.outcome == "success" else "red"
            out.print(
                f"  ← {event.tool_name} [{event.outcome}, {event.duration_s:.2f}s]: {result}", style=style, markup=False
            )
        elif isinstance(event, RetryScheduled) and event.cause in ("model-error", "tool-error"):
            self._notice(f"[retrying in {event.delay_s:.1f} s: {_short(event.message)}]")
        elif isinstance(event, FallbackUsed):
            self._notice(f"[{event.from_model} failed ({event.error_type}); answering with {event.to_model}]")
        elif isinstance(event, StreamRestarted) and event.discarded_chars:
            # The partial answer above is void: say so, and the answer starts again on a fresh line.
            self._notice(f"[the answer was cut off and starts again ({event.model_name}); ignore the text above]")

    def _notice(self, text: str) -> None:
        """A dim line of its own, never inside the answer's text."""
        if self.text_open:
            self.console.print()
            self.text_open = False
        self.console.print(text, style="dim", markup=False)


async def _open_store(console: Console, resume: str | None) -> tuple[SQLStore, str | None]:
    from ..store import open_store

    store = await open_store()
    try:
        interrupted = await store.recover_interrupted()
        if interrupted:
            console.print(f"({len(interrupted)} interrupted run(s) found and marked)", style="dim")
        thread_id = None
        if resume is not None:
            if resume == "latest":
                threads = await store.list_threads(limit=1)
                if not threads:
                    raise UserError("There is no stored conversation to resume yet: start one without --resume.")
                thread_id = threads[0].id
            else:
                thread_id = (await store.get_thread(resume)).id
            count = len(await store.history(thread_id))
            console.print(f"(resumed conversation {thread_id}: {count} messages)", style="dim")
        return store, thread_id
    except BaseException:
        await store.close()
        raise


async def _threads(session: _Session) -> None:
    assert session.store is not None
    for thread in await session.store.list_threads(limit=20):
        mark = "*" if thread.id == session.thread_id else " "
        when = thread.updated_at.astimezone().strftime("%Y-%m-%d %H:%M")
        session.console.print(f"{mark} {thread.id}  {when}  {thread.title or ''}", markup=False)


async def _branch(session: _Session, arg: str) -> None:
    store = session.store
    assert store is not None
    if session.thread_id is None:
        session.console.print("(no conversation yet)", style="dim")
        return
    branches = await store.branches(session.thread_id)
    if arg:
        if not arg.isdigit() or not 1 <= int(arg) <= len(branches):
            session.console.print(f"(no branch {arg!r}: pick 1-{len(branches)})", style="dim")
            return
        await store.switch(session.thread_id, branches[int(arg) - 1].leaf_id)
        session.console.print(f"(switched to branch {arg})", style="dim")
        return
    for i, branch in enumerate(branches, start=1):
        mark = "*" if branch.current else " "
        session.console.print(f"{mark} {i}. {branch.length} messages  {branch.preview}", markup=False)


async def _command(session: _Session, prompt: str) -> bool:
    """Handle a slash command; `False` if `prompt` is not one (it is then sent as a message)."""
    console = session.console
    if prompt == "/reset":
        session.history = []
        session.thread_id = None
        console.print("(conversation reset)", style="dim")
    elif prompt == "/help":
        console.print(_HELP, style="dim")
    elif prompt == "/threads":
        await _threads(session)
    elif prompt == "/branch" or prompt.startswith("/branch "):
        await _branch(session, prompt.removeprefix("/branch").strip())
    else:
        return False
    return True


async def _chat(agent: Agent[Any, Any], model: Model, console: Console, debug: bool, resume: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    store, thread_id = await _open_store(console, resume)
    session = _Session(agent, model, console, debug, store)
    session.thread_id = thread_id
    reader = _Input(loop, console)
    loop.add_signal_handler(signal.SIGINT, session.on_sigint)
    try:
        while True:
            line = await reader.readline()
            if line is None:
                console.print()
                return 0
            prompt = line.strip()
            if not prompt:
                continue
            if prompt in ("/exit", "/quit"):
                return 0
            if prompt.startswith("/") and await _command(session, prompt):
                continue
            session.interrupted = False
            session.generation = asyncio.create_task(session.turn(prompt))
            try:
                await session.generation
            except asyncio.CancelledError:
                if not session.interrupted:
                    raise
                console.print("\n(interrupted)", style="dim")
            except MiniAgentError as exc:
                console.print(f"\nerror: {exc}", style="red", markup=False)
                if debug:
                    console.print_exception()
            except Exception as exc:  # the session survives any failure of one turn
                console.print(
                    f"\nunexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
                    style="red",
                    markup=False,
                )
                if debug:
                    console.print_exception()
            else:
                console.print()
            finally:
                session.generation = None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await model.aclose()
        await store.close()


def run_chat(
    *,
    model: str | None,
    agent_path: str | None,
    instructions: str | None,
    demo_tools: bool,
    debug: bool,
    resume: str | None = None,
    metrics_port: int | None = None,
    log_format: str | None = None,
    log_level: str | None = None,
) -> int:
    """Run the chat; returns the process exit code. Errors print their message (and a traceback with `debug`)."""
    console = Console(highlight=False, soft_wrap=True)
    try:
        observability = _observe(console, metrics_port=metrics_port, log_format=log_format, log_level=log_level)
    except MiniAgentError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        return 1
    try:
        return _run_chat(console, model, agent_path, instructions, demo_tools, debug, resume)
    finally:
        observability()


def _observe(
    console: Console, *, metrics_port: int | None, log_format: str | None, log_level: str | None
) -> Callable[[], None]:
    """Configure logs (when asked), metrics (with a port) and traces (when `OTEL_*` says so); returns the undo."""
    from ..observability import configure, start_metrics_server

    if log_format is not None and log_format not in ("json", "console"):
        raise UserError(f"--log-format must be 'json' or 'console', got {log_format!r}.")
    handle = configure(
        logs=log_format is not None or log_level is not None,
        log_format="json" if log_format == "json" else "console" if log_format == "console" else None,
        log_level=log_level.upper() if log_level is not None else None,
        metrics=metrics_port is not None,
    )
    if metrics_port is None:
        return handle.close
    try:
        server = start_metrics_server(metrics_port)
    except BaseException:
        handle.close()
        raise
    console.print(f"(metrics at {server.url})", style="dim", markup=False)

    def undo() -> None:
        server.close()
        handle.close()

    return undo


def _run_chat(
    console: Console,
    model: str | None,
    agent_path: str | None,
    instructions: str | None,
    demo_tools: bool,
    debug: bool,
    resume: str | None,
) -> int:
    try:
        if agent_path is not None:
            agent = load_agent(agent_path)
        else:
            agent = Agent(
                model=model,
                instructions=instructions or "You are a helpful, concise assistant.",
                name="chat",
                tools=[current_time, calculate] if demo_tools else [],
            )
        resolved = agent.resolve_model(model)
        console.print(f"miniagent {_version()} · model {resolved.name} · {_HELP}", style="dim", markup=False)
        return asyncio.run(_chat(agent, resolved, console, debug, resume))
    except MiniAgentError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        if debug:
            console.print_exception()
        return 1
    except Exception as exc:
        console.print(
            f"unexpected error: {type(exc).__name__}: {exc} (rerun with --debug for details)", style="red", markup=False
        )
        if debug:
            console.print_exception()
        return 1


def _version() -> str:
    from .._version import __version__

    return __version__


def _short(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"

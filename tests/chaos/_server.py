"""A fault-injecting HTTP/1.1 server on 127.0.0.1, written on raw asyncio streams so every byte is ours to control.

A server speaks one provider's wire format (a [`Dialect`][tests.chaos._server.Dialect]: OpenAI Chat Completions
or Anthropic Messages) and follows a script: one step per request, consumed in order (a fault or a normal reply),
then a default behaviour for every request after the script. It records every request it received, so a test
asserts exactly how many attempts reached it.

```python
async with FaultServer(OPENAI, [Status(500), Status(429, headers={"retry-after": "2"})], default=Text("Hi")) as srv:
    model = OpenAIChatModel("m", base_url=srv.url("/v1"), api_key="k", provider="openai-compatible")
    ...
    assert srv.count == 3
```

The server runs in the test's own event loop (start it inside the async test), so a fault that waits (`Slow`,
`Stall`) can be driven by an `anyio.Event` the test controls, and nothing needs a thread. Streams are sent with
`Transfer-Encoding: chunked`: a cut (`Cut`) aborts the socket in the middle of the body, which a client sees as a
broken transfer, while an early but clean end (`Truncated`) sends the terminating chunk without the provider's
end-of-stream marker.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import anyio

__all__ = [
    "Call",
    "Cut",
    "Default",
    "Dialect",
    "Drop",
    "FaultServer",
    "Malformed",
    "Received",
    "Reply",
    "Respond",
    "Slow",
    "Stall",
    "Status",
    "Step",
    "Text",
    "ToolCalls",
    "Truncated",
    "refused_url",
]


# ---- what a model answers ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A final text answer. Streamed, it is split into word pieces (one event each), so a cut can fall inside it."""

    text: str


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call. `arguments` is sent exactly as given (so it may be invalid JSON)."""

    name: str
    arguments: str
    _: KW_ONLY
    id: str = ""
    """The call id; empty gives `call_<index>`."""


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """A response made of tool calls. Streamed, each call's arguments arrive in pieces of `piece_chars`."""

    calls: tuple[Call, ...]
    _: KW_ONLY
    piece_chars: int = 6


Reply: TypeAlias = Text | ToolCalls
"""A normal answer."""

Default: TypeAlias = Reply | Callable[[Any], Reply]
"""What the server answers once its script is used up: a fixed reply, or one chosen from the request body."""


# ---- faults (one step of a script each) ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer normally with `reply` (a script step that is not a fault)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Status:
    """Answer with an error status and the provider's error body (429 with `Retry-After`, 500, 503, 529...)."""

    status: int
    _: KW_ONLY
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str = ""
    """The error message in the body (default: the status's reason)."""


@dataclass(frozen=True, slots=True)
class Drop:
    """Read the request, then close the connection without answering."""


@dataclass(frozen=True, slots=True)
class Slow:
    """Wait before answering normally: until `release` is set (a test's event), else for `seconds` of real time."""

    _: KW_ONLY
    release: anyio.Event | None = None
    seconds: float | None = None
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Cut:
    """Stream `after_events` events of the reply, then abort the connection in the middle of the body.

    A request that did not ask for a stream gets half of its JSON body before the connection breaks.
    """

    after_events: int
    _: KW_ONLY
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Truncated:
    """End the stream cleanly (a well-formed end of body) without the provider's end-of-stream marker.

    With `after_events=None` every event but the final marker is sent (OpenAI: no `data: [DONE]`; Anthropic: no
    `message_stop`); with a number, only that many events are sent (the response is unfinished).
    """

    after_events: int | None = None
    _: KW_ONLY
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Stall:
    """Stream `after_events` events, then go silent until `release` is set (or `seconds` pass), then finish."""

    after_events: int
    _: KW_ONLY
    release: anyio.Event | None = None
    seconds: float | None = None
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """Answer HTTP 200 with a body that is not valid JSON (streamed: an SSE event whose data is not JSON).

    With another `content_type` (a proxy's `text/html` login page), the body is sent whole, stream asked or not.
    """

    body: bytes = b'{"id": "broken", "choices": [{"index": 0, "message": '
    _: KW_ONLY
    content_type: str = "application/json"
    """The content type of a whole (not streamed) answer, e.g. `text/html` for a proxy's login page."""


Step: TypeAlias = Respond | Status | Drop | Slow | Cut | Truncated | Stall | Malformed
"""One request's behaviour in a script."""


# ---- the provider's wire format ------------------------------------------------------------------------------


class Dialect(Protocol):
    """How one provider's API looks on the wire."""

    name: str
    """`openai` or `anthropic`."""
    path: str
    """The endpoint served, e.g. `/v1/chat/completions`."""

    def json_body(self, reply: Reply, request: Any) -> bytes:
        """The complete (non-streamed) response body."""
        ...

    def sse_events(self, reply: Reply, request: Any) -> list[bytes]:
        """The stream's events as wire bytes, the end-of-stream marker last."""
        ...

    def error_body(self, status: int, message: str) -> bytes:
        """The provider's JSON error body."""
        ...

    def malformed_sse(self, body: bytes) -> bytes:
        """A stream event whose data is `body` (not JSON)."""
        ...

    def has_tool_results(self, request: Any) -> bool:
        """Whether the request carries tool results (the model is asked to go on after its tool calls)."""
        ...


def split_words(text: str) -> list[str]:
    """`text` in pieces that join back to it exactly: each word with the space before it."""
    pieces: list[str] = []
    for i, word in enumerate(text.split(" ")):
        pieces.append(word if i == 0 else " " + word)
    return [p for p in pieces if p]


def split_chars(text: str, size: int) -> list[str]:
    """`text` in pieces of `size` characters (at least one piece)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# ---- the server ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """One request the server read."""

    method: str
    path: str
    headers: Mapping[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        """The body parsed as JSON (`None` if empty)."""
        return json.loads(self.raw) if self.raw else None

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream."""
        body = self.body
        return isinstance(body, dict) and body.get("stream") is True


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


class _BadRequest(Exception):
    """The client sent something this server does not parse."""


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request from `reader`, or `None` when the client closed the connection between requests."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError as exc:
        raise _BadRequest(f"bad request line {line!r}") from exc
    headers: dict[str, str] = {}
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        raw = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()  # the blank line after the last chunk (no trailers are sent to us)
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        raw = b"".join(parts)
    else:
        raw = b""
    return method, target.split("?", 1)[0], headers, raw


class FaultServer:
    """An HTTP server on 127.0.0.1 (a free port) that answers one provider's endpoint by a script of faults.

    Use it as `async with FaultServer(dialect, script, default=...) as server:` inside the test's event loop.

    Args:
        dialect: The provider's wire format (`OPENAI` or `ANTHROPIC`).
        script: One step per request, in order; each request consumes one.
        default: The answer to every request after the script.
    """

    def __init__(self, dialect: Dialect, script: Sequence[Step] = (), *, default: Default = Text("OK")) -> None:
        self.dialect = dialect
        self.script: list[Step] = list(script)
        self.default = default
        self.requests: list[Received] = []
        """Every request to the served endpoint, in the order received."""
        self.connections = 0
        """Connections accepted."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[int, anyio.Event]] = []

    @property
    def count(self) -> int:
        """How many requests reached the endpoint (attempts, as the server saw them)."""
        return len(self.requests)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the requests received."""
        return [r.body for r in self.requests]

    def url(self, path: str = "") -> str:
        """`http://127.0.0.1:<port>` followed by `path`."""
        return f"http://127.0.0.1:{self.port}{path}"

    async def wait_for(self, count: int) -> None:
        """Return once `count` requests have reached the endpoint (wait on state, not on time)."""
        if self.count >= count:
            return
        event = anyio.Event()
        self._waiters.append((count, event))
        await event.wait()

    def then(self, *steps: Step) -> None:
        """Append steps to the script."""
        self.script.extend(steps)

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP (no 40 ms delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._connection, sock=sock)

    async def stop(self) -> None:
        """Stop listening and end every connection (a waiting fault is cancelled)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ---- serving ---------------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, raw = request
                if method != "POST" or path != self.dialect.path:
                    body = self.dialect.error_body(404, f"only POST {self.dialect.path} is served, not {method} {path}")
                    await self._send(writer, 404, body)
                    continue
                received = Received(method, path, headers, raw)
                self.requests.append(received)
                for waiter in [w for w in self._waiters if w[0] <= self.count]:
                    self._waiters.remove(waiter)
                    waiter[1].set()
                step: Step = self.script.pop(0) if self.script else Respond(self._default_reply(received))
                if not await self._answer(step, received, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest):
            pass  # the client went away (it timed out, or gave up on a cut stream)
        except asyncio.CancelledError:
            pass  # `stop` ends a connection still waiting (a `Slow` or `Stall` never released): a normal end
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    def _default_reply(self, received: Received) -> Reply:
        default = self.default
        return default if isinstance(default, Text | ToolCalls) else default(received.body)

    def _reply(self, reply: Reply | None, received: Received) -> Reply:
        return reply if reply is not None else self._default_reply(received)

    async def _answer(self, step: Step, received: Received, writer: asyncio.StreamWriter) -> bool:
        """Carry out one step; whether the connection stays open for another request."""
        dialect = self.dialect
        if isinstance(step, Respond):
            await self._normal(step.reply, received, writer)
            return True
        if isinstance(step, Status):
            body = dialect.error_body(step.status, step.message or _REASONS.get(step.status, "error"))
            await self._send(writer, step.status, body, headers=step.headers)
            return True
        if isinstance(step, Drop):
            return False
        if isinstance(step, Slow):
            await _wait(step.release, step.seconds)
            await self._normal(self._reply(step.reply, received), received, writer)
            return True
        if isinstance(step, Malformed):
            if received.stream and step.content_type == "application/json":
                await self._stream(writer, [dialect.malformed_sse(step.body)])
            else:
                await self._send(writer, 200, step.body, content_type=step.content_type)
            return True
        reply = self._reply(step.reply, received)
        if not received.stream:  # a cut or truncated non-streamed answer: half of the body, then the socket breaks
            body = dialect.json_body(reply, received.body)
            head = self._head(200, "application/json", {"content-length": str(len(body))})
            writer.write(head + body[: len(body) // 2])
            await writer.drain()
            return False
        events = dialect.sse_events(reply, received.body)
        if isinstance(step, Cut):
            await self._stream(writer, events[: step.after_events], finish=False)
            return False
        if isinstance(step, Truncated):
            await self._stream(writer, events[: step.after_events] if step.after_events is not None else events[:-1])
            return True
        assert isinstance(step, Stall)
        await self._stream(writer, events[: step.after_events], finish=False)
        await _wait(step.release, step.seconds)
        await self._stream(writer, events[step.after_events :], head=False)
        return True

    async def _normal(self, reply: Reply, received: Received, writer: asyncio.StreamWriter) -> None:
        if received.stream:
            await self._stream(writer, self.dialect.sse_events(reply, received.body))
        else:
            await self._send(writer, 200, self.dialect.json_body(reply, received.body))

    @staticmethod
    def _head(status: int, content_type: str, headers: Mapping[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"content-type: {content_type}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        all_headers = {"content-length": str(len(body)), "x-request-id": f"req_{self.count}", **(headers or {})}
        writer.write(self._head(status, content_type, all_headers) + body)
        await writer.drain()

    async def _stream(
        self, writer: asyncio.StreamWriter, events: list[bytes], *, finish: bool = True, head: bool = True
    ) -> None:
        """Send `events` as chunks of a chunked body (after the headers, if `head`), then its end if `finish`."""
        if head:
            headers = {"transfer-encoding": "chunked", "cache-control": "no-cache", "x-request-id": f"req_{self.count}"}
            writer.write(self._head(200, "text/event-stream", headers))
        for event in events:
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()  # one write per event: a cut falls between events, as on a real network
        if finish:
            writer.write(b"0\r\n\r\n")
            await writer.drain()


async def _wait(release: anyio.Event | None, seconds: float | None) -> None:
    if release is not None:
        if seconds is None:
            await release.wait()
        else:
            with anyio.move_on_after(seconds):
                await release.wait()
    elif seconds is not None:
        await anyio.sleep(seconds)


def refused_url(path: str = "") -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (a permanently down upstream: connection refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound, never listening, now closed: connecting gets a refusal
    return f"http://127.0.0.1:{port}{path}"

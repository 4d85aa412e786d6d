"""A loopback server that replays recorded HTTP exchanges (vcrpy YAML cassettes) to real HTTP clients.

Usage:
    ```python
    with ReplayServer() as server:
        server.serve(load_cassette(path))       # the interactions, answered in order
        ...  # point the client at server.url("/v1")
        assert server.received[0].body["model"] == "gpt-4o"
        assert not server.pending               # every interaction was played
    ```

uvicorn runs in a daemon thread on 127.0.0.1 with a free port. Each request is answered by the first unplayed
interaction whose method and path (query and fragment ignored) match; an unmatched request gets HTTP 599 with a
JSON body naming it, so a test fails with a clear message instead of hanging. Cassette format:
/work/shared/fixtures/recorded/README.md (tests/models/cassettes/README.md).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import uvicorn
import yaml

__all__ = ["Interaction", "ReceivedRequest", "ReplayServer", "load_cassette"]

Scope: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[dict[str, Any]]]
Send: TypeAlias = Callable[[dict[str, Any]], Awaitable[None]]

_DROPPED_HEADERS = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection"})


@dataclass
class Interaction:
    """One recorded request and the response to replay for it."""

    method: str
    """The request method, e.g. `POST`."""
    path: str
    """The request path, without query or fragment, e.g. `/v1/chat/completions`."""
    status: int
    """The response status."""
    body: bytes
    """The response body as sent on the wire."""
    _: KW_ONLY
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Response headers (without `content-length`, which the server computes)."""
    request_body: Any = None
    """The recorded request body (parsed JSON when it was JSON), for tests to compare with what was sent."""
    uri: str = ""
    """The recorded request URL."""
    delay_s: float = 0.0
    """Wait this long before answering (for timeout tests)."""
    cut_after: int | None = None
    """Send only this many body bytes, then drop the connection (a stream cut mid-way)."""

    @property
    def is_sse(self) -> bool:
        """Whether the response is a server-sent event stream."""
        return any(k == "content-type" and "text/event-stream" in v for k, v in self.headers)


@dataclass
class ReceivedRequest:
    """A request the server received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        """The body parsed as JSON (`None` when empty)."""
        return json.loads(self.raw) if self.raw else None


def load_cassette(path: str | Path) -> list[Interaction]:
    """The interactions of a vcrpy YAML cassette, in recorded order."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    out: list[Interaction] = []
    for item in doc["interactions"]:
        request, response = item["request"], item["response"]
        if "parsed_body" in response:
            body = json.dumps(response["parsed_body"]).encode()
        else:
            text = response["body"]["string"]
            body = text.encode() if isinstance(text, str) else bytes(text)
        headers = [
            (name.lower(), value)
            for name, values in (response.get("headers") or {}).items()
            if name.lower() not in _DROPPED_HEADERS
            for value in values
        ]
        uri = request["uri"]
        out.append(
            Interaction(
                request["method"].upper(),
                urlsplit(uri).path,
                int(response["status"]["code"]),
                body,
                headers=headers,
                request_body=request.get("parsed_body", request.get("body")),
                uri=uri,
            )
        )
    return out


class ReplayServer:
    """Replays interactions over real HTTP on 127.0.0.1; a context manager that starts and stops uvicorn."""

    def __init__(self) -> None:
        self.pending: list[Interaction] = []
        """Interactions not yet played."""
        self.received: list[ReceivedRequest] = []
        """Every request received, in order."""
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def serve(self, interactions: Iterable[Interaction]) -> None:
        """Replace what is to be replayed, and forget the requests received so far."""
        with self._lock:
            self.pending = list(interactions)
            self.received = []

    def url(self, path: str = "") -> str:
        """The server's URL with `path` appended, e.g. `url('/v1')`."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        """Start serving in a daemon thread; returns once the server accepts connections."""
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and without it
        # every response waits ~40 ms for a delayed ACK (headers and body are written separately).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            ws="none",
            http="h11",
            log_level="error",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the replay server did not start")
            time.sleep(0.005)
        self._server, self._thread, self._sock = server, thread, sock

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def __enter__(self) -> ReplayServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _take(self, method: str, path: str) -> Interaction | None:
        with self._lock:
            for i, interaction in enumerate(self.pending):
                if interaction.method == method and interaction.path == path:
                    return self.pending.pop(i)
        return None

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            self.received.append(ReceivedRequest(method, path, scope["query_string"].decode(), headers, raw))
        interaction = self._take(method, path)
        if interaction is None:
            body = json.dumps({"error": {"message": f"replay: nothing recorded for {method} {path}"}}).encode()
            await _start(send, 599, [("content-type", "application/json")], len(body))
            await send({"type": "http.response.body", "body": body})
            return
        if interaction.delay_s:
            await asyncio.sleep(interaction.delay_s)
        body = interaction.body
        if interaction.cut_after is not None:
            # Chunked (no content-length), part of the body, then an exception: uvicorn drops the connection
            # without the terminating chunk, as a server dying mid-stream would.
            await _start(send, interaction.status, interaction.headers, None)
            await send({"type": "http.response.body", "body": body[: interaction.cut_after], "more_body": True})
            await asyncio.sleep(0.01)
            raise ConnectionAbortedError("replay: stream cut on purpose")
        if not interaction.is_sse:
            await _start(send, interaction.status, interaction.headers, len(body))
            await send({"type": "http.response.body", "body": body})
            return
        await _start(send, interaction.status, interaction.headers, None)
        events = body.split(b"\n\n")
        pieces = [event + b"\n\n" for event in events[:-1]] + ([events[-1]] if events[-1] else [])
        for i, piece in enumerate(pieces):  # one write per event, as a server streams them
            await send({"type": "http.response.body", "body": piece, "more_body": i < len(pieces) - 1})
        if not pieces:
            await send({"type": "http.response.body", "body": b""})


async def _start(send: Send, status: int, headers: list[tuple[str, str]], length: int | None) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers if k.lower() not in _DROPPED_HEADERS]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})

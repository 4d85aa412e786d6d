"""An OpenAI-compatible embeddings server on 127.0.0.1 (`POST /v1/embeddings`), on raw asyncio streams.

Each text's vector is derived from the text alone ([`vector_for`][tests.embeddings._server.vector_for]), so a test
checks that every caller got the vector of its own text. The server records the texts of every request, can hold
requests until an event is set, fail the requests a predicate picks, and (for the benchmark) add a per-request and
a per-text latency with a bounded number of requests processed at once, as a real embedding server has.

```python
async with EmbeddingsServer() as server:
    embedder = OpenAIEmbedder("m", dimensions=server.dimensions, client=server.client())
    ...
    assert server.count == 1
```

Run as a script (`python tests/embeddings/_server.py --port 0 --latency-ms 3`), it prints `PORT <n>` and serves
until killed (`GET /_stats` gives the requests and texts received so far): `bench/embed_batching.py` runs it in a
process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import socket
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio

__all__ = ["EmbeddingsServer", "vector_for"]

PATH = "/v1/embeddings"


def vector_for(text: str, dimensions: int) -> list[float]:
    """The (not normalized) vector the server returns for `text`: floats in [-1, 1) from the text's hash."""
    digest = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    return [int.from_bytes(digest[2 * i : 2 * i + 2], "little") / 32768.0 - 1.0 for i in range(dimensions)]


class _BadRequest(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    """One HTTP/1.1 request (method, path, body), or `None` when the client closed the connection."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    except ValueError as exc:
        raise _BadRequest(f"bad request line {line!r}") from exc
    length = 0
    while True:
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return method, target.split("?", 1)[0], await reader.readexactly(length) if length else b""


class EmbeddingsServer:
    """An embeddings endpoint on a free port of 127.0.0.1, in the caller's event loop.

    Args:
        dimensions: The vectors' length.
        latency_s: Seconds each request takes, plus `per_text_s` per text.
        per_text_s: Seconds per text of a request.
        concurrency: Requests processed at once (the others wait their turn); `None`: no limit.
        gate: Requests are answered only once this event is set (they are recorded when they arrive).
        fail: Given a request's texts, an HTTP status to answer with instead (`None`: answer normally).
    """

    def __init__(
        self,
        dimensions: int = 8,
        *,
        latency_s: float = 0.0,
        per_text_s: float = 0.0,
        concurrency: int | None = None,
        gate: anyio.Event | None = None,
        fail: Callable[[list[str]], int | None] | None = None,
    ) -> None:
        self.dimensions = dimensions
        self.latency_s = latency_s
        self.per_text_s = per_text_s
        self.gate = gate
        self.fail = fail
        self.requests: list[list[str]] = []
        """The texts of every request, in the order the requests arrived."""
        self.port = 0
        self._limit = anyio.Semaphore(concurrency) if concurrency else None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[int, anyio.Event]] = []
        self._clients: list[Any] = []

    @property
    def count(self) -> int:
        """How many embedding requests arrived."""
        return len(self.requests)

    @property
    def texts(self) -> int:
        """How many texts those requests carried."""
        return sum(len(r) for r in self.requests)

    def url(self, path: str = "/v1") -> str:
        """`http://127.0.0.1:<port>` followed by `path` (the API's base URL by default)."""
        return f"http://127.0.0.1:{self.port}{path}"

    def client(self) -> Any:
        """An `openai.AsyncOpenAI` on this server that never retries (so the server sees every attempt once).

        `stop` closes it.
        """
        import openai

        client = openai.AsyncOpenAI(base_url=self.url(), api_key="test-key", max_retries=0)
        self._clients.append(client)
        return client

    async def wait_for(self, count: int) -> None:
        """Return once `count` requests have arrived (wait on state, not on time)."""
        if self.count >= count:
            return
        event = anyio.Event()
        self._waiters.append((count, event))
        await event.wait()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP (no 40 ms delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._connection, sock=sock)

    async def stop(self) -> None:
        """Close the clients made by `client()`, stop listening and end every connection."""
        for client in self._clients:
            await client.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> EmbeddingsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                method, path, raw = request
                if method == "GET" and path == "/_stats":
                    await self._send(writer, 200, {"requests": self.count, "texts": self.texts})
                    continue
                if method != "POST" or path != PATH:
                    await self._send(writer, 404, {"error": {"message": f"only POST {PATH} is served"}})
                    continue
                status, body = await self._answer(json.loads(raw))
                await self._send(writer, status, body)
        except (ConnectionError, asyncio.IncompleteReadError, _BadRequest):
            pass  # the client went away
        except asyncio.CancelledError:
            pass  # `stop` ends a connection still waiting on the gate: a normal end
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        texts: list[str] = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        self.requests.append(texts)
        for waiter in [w for w in self._waiters if w[0] <= self.count]:
            self._waiters.remove(waiter)
            waiter[1].set()
        if self.gate is not None:
            await self.gate.wait()
        status = self.fail(texts) if self.fail is not None else None
        if status is not None:
            return status, {"error": {"message": f"failing on purpose ({len(texts)} texts)", "type": "server_error"}}
        if self._limit is not None:
            async with self._limit:
                await self._work(len(texts))
        else:
            await self._work(len(texts))
        data = []
        for i, text in enumerate(texts):
            vector = vector_for(text, self.dimensions)
            if body.get("encoding_format") == "base64":
                embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return 200, {"object": "list", "data": data, "model": body.get("model", ""), "usage": usage}

    async def _work(self, texts: int) -> None:
        seconds = self.latency_s + self.per_text_s * texts
        if seconds > 0:
            await anyio.sleep(seconds)

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: application/json\r\n"
        head += f"content-length: {len(payload)}\r\n\r\n"
        writer.write(head.encode() + payload)
        await writer.drain()


async def _serve(args: argparse.Namespace) -> None:
    server = EmbeddingsServer(
        args.dimensions,
        latency_s=args.latency_ms / 1000,
        per_text_s=args.per_text_ms / 1000,
        concurrency=args.concurrency or None,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    server.port = sock.getsockname()[1]
    async with await asyncio.start_server(server._connection, sock=sock) as listener:
        print(f"PORT {server.port}", flush=True)
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="An OpenAI-compatible embeddings server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dimensions", type=int, default=384)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="per request")
    parser.add_argument("--per-text-ms", type=float, default=0.0, help="per text of a request")
    parser.add_argument("--concurrency", type=int, default=0, help="requests processed at once (0: no limit)")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()

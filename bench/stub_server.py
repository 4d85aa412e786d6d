"""A fast, deterministic OpenAI-compatible Chat Completions stub for the benchmarks (run as its own process).

Every agent run against it is the same two steps:

1. a request without tool results gets one response with TWO tool calls, `get_weather(city)` and `get_time(city)`;
2. a request that carries tool results (`role: tool` messages) gets the final text answer.

`stream: true` requests get the same answers as server-sent events. Answers are pre-encoded, so the server
spends its time in HTTP, not in building JSON. Usage: `python bench/stub_server.py [--port N]`; it prints
`PORT <n>` on stdout once it listens (port 0 picks a free one) and serves until killed.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import uvicorn

Scope: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[dict[str, Any]]]
Send: TypeAlias = Callable[[dict[str, Any]], Awaitable[None]]

MODEL = "stub-model"
CITY = "Paris"
FINAL_TEXT = "In Paris it is sunny and 18 C, and the local time is 14:00."
TOOL_CALLS = [
    {"id": "call_weather", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    {"id": "call_time", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Paris"}'}},
]
USAGE = {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}


def _completion(message: dict[str, Any], finish: str) -> bytes:
    body = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": USAGE,
    }
    return json.dumps(body).encode()


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: bool = False) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = USAGE
    return b"data: " + json.dumps(body).encode() + b"\n\n"


TOOLS_JSON = _completion({"role": "assistant", "content": None, "tool_calls": TOOL_CALLS}, "tool_calls")
FINAL_JSON = _completion({"role": "assistant", "content": FINAL_TEXT}, "stop")
TOOLS_SSE = b"".join(
    [
        _chunk({"role": "assistant", "content": None, "tool_calls": [{"index": i, **call}]})
        for i, call in enumerate(TOOL_CALLS)
    ]
    + [_chunk({}, "tool_calls"), _chunk(None, usage=True), b"data: [DONE]\n\n"]
)
FINAL_SSE = b"".join(
    [
        _chunk({"role": "assistant", "content": FINAL_TEXT}),
        _chunk({}, "stop"),
        _chunk(None, usage=True),
        b"data: [DONE]\n\n",
    ]
)
NOT_FOUND = json.dumps({"error": {"message": "only POST /v1/chat/completions is served", "type": "not_found"}}).encode()


def _has_tool_results(body: dict[str, Any]) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "tool" for m in body.get("messages", ()))


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI app: answers POST .../chat/completions (any prefix) with the next step of the script."""
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
        await _send(send, 404, b"application/json", NOT_FOUND)
        return
    body = json.loads(raw)
    final = _has_tool_results(body)
    if body.get("stream"):
        await _send(send, 200, b"text/event-stream", FINAL_SSE if final else TOOLS_SSE)
    else:
        await _send(send, 200, b"application/json", FINAL_JSON if final else TOOLS_JSON)


async def _send(send: Send, status: int, content_type: bytes, data: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def serve(asgi_app: Callable[[Scope, Receive, Send], Awaitable[None]], description: str | None) -> None:
    """Parse `--port`, listen on 127.0.0.1, print `PORT <n>` and serve `asgi_app` until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    args = parser.parse_args()
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose `proto` says TCP, and without it
    # every response waits ~40 ms for a delayed ACK (headers and body are written separately).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        asgi_app, lifespan="off", ws="none", log_level="warning", access_log=False, backlog=4096, timeout_keep_alive=30
    )
    uvicorn.Server(config).run(sockets=[sock])
    sys.exit(0)


def main() -> None:
    serve(app, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    main()

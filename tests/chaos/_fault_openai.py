"""The OpenAI Chat Completions wire format for the fault server: `POST /v1/chat/completions`, JSON and SSE.

Streams look like OpenAI's: one `data: {chat.completion.chunk}` event per piece (the first text piece carries
`role`), each tool call's first event carries its `id` and `name` and later ones pieces of `arguments`, then an
event with the `finish_reason`, a usage event with no choices, and `data: [DONE]`.

Stream layout for `Text("a b c")`: events 0..2 are the pieces `a`, ` b`, ` c`; then finish; then usage; then
`[DONE]`. For `ToolCalls`: per call, one event with id and name, then one per argument piece; then finish, usage,
`[DONE]`.
"""

from __future__ import annotations

import json
from typing import Any

from ._server import Reply, Text, ToolCalls, split_chars, split_words

__all__ = ["OPENAI", "OpenAIDialect"]

_MODEL = "fault-model"
_USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, *, usage: bool = False) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": _MODEL,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = _USAGE
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _call_id(index: int, given: str) -> str:
    return given or f"call_{index}"


class OpenAIDialect:
    """Chat Completions responses, errors and streams."""

    name = "openai"
    path = "/v1/chat/completions"

    def json_body(self, reply: Reply, request: Any) -> bytes:
        """A `chat.completion` object."""
        if isinstance(reply, Text):
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            finish = "stop"
        else:
            calls = [
                {
                    "id": _call_id(i, call.id),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for i, call in enumerate(reply.calls)
            ]
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            finish = "tool_calls"
        body = {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": 1700000000,
            "model": _MODEL,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": _USAGE,
        }
        return json.dumps(body).encode()

    def sse_events(self, reply: Reply, request: Any) -> list[bytes]:
        """`chat.completion.chunk` events, then the finish event, the usage event and `data: [DONE]`."""
        events: list[bytes] = []
        if isinstance(reply, Text):
            for i, piece in enumerate(split_words(reply.text)):
                events.append(_chunk({"role": "assistant", "content": piece} if i == 0 else {"content": piece}))
            finish = "stop"
        else:
            assert isinstance(reply, ToolCalls)
            for i, call in enumerate(reply.calls):
                first = {"index": i, "id": _call_id(i, call.id), "type": "function"}
                events.append(_chunk({"tool_calls": [{**first, "function": {"name": call.name, "arguments": ""}}]}))
                for piece in split_chars(call.arguments, reply.piece_chars):
                    events.append(_chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
            finish = "tool_calls"
        events.append(_chunk({}, finish))
        events.append(_chunk(None, usage=True))
        events.append(b"data: [DONE]\n\n")
        return events

    def error_body(self, status: int, message: str) -> bytes:
        """OpenAI's `{"error": {...}}` body."""
        kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()

    def malformed_sse(self, body: bytes) -> bytes:
        """A `data:` event whose payload is not JSON."""
        return b"data: " + body + b"\n\n"

    def has_tool_results(self, request: Any) -> bool:
        """Whether a `role: tool` message is in the request."""
        messages = request.get("messages", ()) if isinstance(request, dict) else ()
        return any(isinstance(m, dict) and m.get("role") == "tool" for m in messages)


OPENAI = OpenAIDialect()
"""The OpenAI Chat Completions dialect."""

"""The Anthropic Messages wire format for the fault server: `POST /v1/messages`, JSON and SSE.

Streams look like Anthropic's (tests/models/cassettes/anthropic): `event: message_start`, then per content block
`content_block_start`, its `content_block_delta`s (`text_delta` word pieces, or `input_json_delta` pieces of a
tool call's arguments) and `content_block_stop`, then `message_delta` (stop reason and output usage) and
`message_stop`, the end-of-stream marker.

Stream layout for `Text("a b c")`: event 0 is `message_start`, 1 `content_block_start`, 2..4 the pieces, 5
`content_block_stop`, 6 `message_delta`, 7 `message_stop`. For `ToolCalls`: `message_start`, then per call
`content_block_start`, one delta per argument piece and `content_block_stop`; then `message_delta`,
`message_stop`.
"""

from __future__ import annotations

import json
from typing import Any

from ._server import Reply, Text, ToolCalls, split_chars, split_words

__all__ = ["ANTHROPIC", "AnthropicDialect"]

_MODEL = "claude-fault"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _call_id(index: int, given: str) -> str:
    return given or f"toolu_{index:02d}"


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # not JSON: sent as the raw string, as a broken proxy might


class AnthropicDialect:
    """Messages API responses, errors and streams."""

    name = "anthropic"
    path = "/v1/messages"

    def json_body(self, reply: Reply, request: Any) -> bytes:
        """A `message` object."""
        if isinstance(reply, Text):
            content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
            stop = "end_turn"
        else:
            content = [
                {"type": "tool_use", "id": _call_id(i, call.id), "name": call.name, "input": _input(call.arguments)}
                for i, call in enumerate(reply.calls)
            ]
            stop = "tool_use"
        body = {
            "id": "msg_fault",
            "type": "message",
            "role": "assistant",
            "model": _MODEL,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7},
        }
        return json.dumps(body).encode()

    def sse_events(self, reply: Reply, request: Any) -> list[bytes]:
        """The Messages stream, `message_stop` last."""
        start: dict[str, Any] = {
            "id": "msg_fault",
            "type": "message",
            "role": "assistant",
            "model": _MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        }
        events = [_event("message_start", {"type": "message_start", "message": start})]
        if isinstance(reply, Text):
            text_block: dict[str, Any] = {"type": "text", "text": ""}
            events.append(
                _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": text_block})
            )
            for piece in split_words(reply.text):
                delta = {"type": "text_delta", "text": piece}
                events.append(
                    _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
                )
            events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            stop = "end_turn"
        else:
            assert isinstance(reply, ToolCalls)
            for i, call in enumerate(reply.calls):
                block: dict[str, Any] = {"type": "tool_use", "id": _call_id(i, call.id), "name": call.name, "input": {}}
                events.append(
                    _event("content_block_start", {"type": "content_block_start", "index": i, "content_block": block})
                )
                for piece in split_chars(call.arguments, reply.piece_chars):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    events.append(
                        _event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
                    )
                events.append(_event("content_block_stop", {"type": "content_block_stop", "index": i}))
            stop = "tool_use"
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": 7},
        }
        events.append(_event("message_delta", message_delta))
        events.append(_event("message_stop", {"type": "message_stop"}))
        return events

    def error_body(self, status: int, message: str) -> bytes:
        """Anthropic's `{"type": "error", "error": {...}}` body."""
        kind = _ERROR_TYPES.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def malformed_sse(self, body: bytes) -> bytes:
        """A `content_block_delta` event whose data is not JSON."""
        return b"event: content_block_delta\ndata: " + body + b"\n\n"

    def has_tool_results(self, request: Any) -> bool:
        """Whether a `tool_result` block is in the request's messages."""
        messages = request.get("messages", ()) if isinstance(request, dict) else ()
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list) and any(
                isinstance(block, dict) and block.get("type") == "tool_result" for block in content
            ):
                return True
        return False


ANTHROPIC = AnthropicDialect()
"""The Anthropic Messages dialect."""

"""A stub of three provider APIs for `providers.py` (run as its own process): Chat Completions, Responses, Messages.

- `POST /v1/chat/completions`: OpenAI Chat Completions;
- `POST /v1/responses`: OpenAI Responses;
- `POST /v1/messages`: Anthropic Messages.

Each answers with a fixed, pre-encoded body shaped and sized like the real API's: as JSON, or as server-sent
events when the request says `"stream": true` (text streamed a word per event, as models do). The requested
model picks the answer: a name containing `tool` gets one `get_weather({"city": "Paris"})` call, any other name a
short text answer (`TEXT`). Usage is always there. `GET /_last/<chat|responses|messages>` returns the last request
body of that API as received, so a benchmark can check that two clients sent the same payload.

Usage: `python bench/stub_providers.py [--port N]`; it prints `PORT <n>` once it listens and serves until killed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from stub_server import Receive, Scope, Send, serve

TEXT = (
    "In Paris it is sunny and 18 C right now, with a light westerly breeze and no rain expected this afternoon; "
    "the local time is 14:00."
)
TOOL_NAME = "get_weather"
TOOL_ARGS = '{"city":"Paris"}'
CALL_ID = "call_Qm2vR8dXk4TfYp1LzA7nWc3E"
INSTRUCTIONS = "You are a helpful assistant. Use the tools when they help, and answer in one or two sentences."
TOOL_DESCRIPTION = "Current weather for a city: conditions, temperature in Celsius, and wind."
TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "The city, e.g. 'Paris'."}},
    "required": ["city"],
}
INPUT_TOKENS, TEXT_TOKENS, TOOL_TOKENS = 142, 31, 17

_WORDS = re.findall(r"\S+\s*", TEXT)
"""The text as streamed: a word (with its trailing space) per event, about a token each."""
_ARG_PIECES = ['{"', "city", '":"', "Paris", '"}']
assert "".join(_ARG_PIECES) == TOOL_ARGS


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# ---- Chat Completions ------------------------------------------------------------------------------------------

_CHAT_MODEL = "gpt-4.1-mini-2025-04-14"
_CHAT_META = {"id": "chatcmpl-Bq7yX2mW9aT4kLs0pZ3vR6nE1fHc", "created": 1751900000, "model": _CHAT_MODEL}


def _chat_usage(output: int) -> dict[str, Any]:
    return {
        "prompt_tokens": INPUT_TOKENS,
        "completion_tokens": output,
        "total_tokens": INPUT_TOKENS + output,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_json(message: dict[str, Any], finish: str, output: int) -> bytes:
    return _json(
        {
            **_CHAT_META,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", **message, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _chat_usage(output),
            "service_tier": "default",
            "system_fingerprint": "fp_6f2eabb9a5",
        }
    )


def _chat_event(delta: dict[str, Any] | None, finish: str | None = None, output: int | None = None) -> bytes:
    body = {
        **_CHAT_META,
        "object": "chat.completion.chunk",
        "service_tier": "default",
        "system_fingerprint": "fp_6f2eabb9a5",
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None if output is None else _chat_usage(output),
    }
    return b"data: " + _json(body) + b"\n\n"


def _chat_sse(deltas: list[dict[str, Any]], finish: str, output: int) -> bytes:
    events = [_chat_event(delta) for delta in deltas]
    events += [_chat_event({}, finish), _chat_event(None, output=output), b"data: [DONE]\n\n"]
    return b"".join(events)


_CHAT_CALL = {"id": CALL_ID, "type": "function", "function": {"name": TOOL_NAME, "arguments": TOOL_ARGS}}
CHAT_TEXT_JSON = _chat_json({"content": TEXT}, "stop", TEXT_TOKENS)
CHAT_TOOL_JSON = _chat_json({"content": None, "tool_calls": [_CHAT_CALL]}, "tool_calls", TOOL_TOKENS)
CHAT_TEXT_SSE = _chat_sse(
    [{"role": "assistant", "content": "", "refusal": None}] + [{"content": word} for word in _WORDS],
    "stop",
    TEXT_TOKENS,
)
CHAT_TOOL_SSE = _chat_sse(
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"index": 0, **_CHAT_CALL, "function": {"name": TOOL_NAME, "arguments": ""}}],
            "refusal": None,
        }
    ]
    + [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in _ARG_PIECES],
    "tool_calls",
    TOOL_TOKENS,
)

# ---- Responses -------------------------------------------------------------------------------------------------

_RESP_ID = "resp_68a1f0c2b7d48190a3e5c1d2f4b6a8c0"
_MSG_ID = "msg_68a1f0c3d9e08190b2c4d6e8f0a1b3c5"
_FC_ID = "fc_68a1f0c3d9e08190b2c4d6e8f0a1b3c6"


def _resp_object(output: list[dict[str, Any]], tokens: int | None) -> dict[str, Any]:
    done = tokens is not None
    return {
        "id": _RESP_ID,
        "object": "response",
        "created_at": 1751900000,
        "status": "completed" if done else "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": INSTRUCTIONS,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": _CHAT_MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [
            {
                "type": "function",
                "name": TOOL_NAME,
                "description": TOOL_DESCRIPTION,
                "parameters": TOOL_SCHEMA,
                "strict": False,
            }
        ],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None
        if tokens is None
        else {
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": INPUT_TOKENS + tokens,
        },
        "user": None,
        "metadata": {},
    }


def _resp_message(text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}] if text else []
    return {"id": _MSG_ID, "type": "message", "status": status, "content": content, "role": "assistant"}


def _resp_call(arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": _FC_ID,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": CALL_ID,
        "name": TOOL_NAME,
    }


def _resp_sse(middle: list[dict[str, Any]], item: dict[str, Any], tokens: int) -> bytes:
    """The events of a response with one output item: created, in progress, `middle`, item done, completed."""
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _resp_object([], None)},
        {"type": "response.in_progress", "response": _resp_object([], None)},
        *middle,
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": _resp_object([item], tokens)},
    ]
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + _json({**event, "sequence_number": n}) + b"\n\n"
        for n, event in enumerate(events)
    )


_TEXT_PART = {"type": "output_text", "annotations": [], "logprobs": [], "text": TEXT}
_TEXT_AT = {"item_id": _MSG_ID, "output_index": 0, "content_index": 0}
RESP_TEXT_JSON = _json(_resp_object([_resp_message(TEXT, "completed")], TEXT_TOKENS))
RESP_TOOL_JSON = _json(_resp_object([_resp_call(TOOL_ARGS, "completed")], TOOL_TOKENS))
RESP_TEXT_SSE = _resp_sse(
    [
        {"type": "response.output_item.added", "output_index": 0, "item": _resp_message("", "in_progress")},
        {"type": "response.content_part.added", **_TEXT_AT, "part": {**_TEXT_PART, "text": ""}},
        *({"type": "response.output_text.delta", **_TEXT_AT, "delta": word, "logprobs": []} for word in _WORDS),
        {"type": "response.output_text.done", **_TEXT_AT, "text": TEXT, "logprobs": []},
        {"type": "response.content_part.done", **_TEXT_AT, "part": _TEXT_PART},
    ],
    _resp_message(TEXT, "completed"),
    TEXT_TOKENS,
)
RESP_TOOL_SSE = _resp_sse(
    [
        {"type": "response.output_item.added", "output_index": 0, "item": _resp_call("", "in_progress")},
        *(
            {"type": "response.function_call_arguments.delta", "item_id": _FC_ID, "output_index": 0, "delta": piece}
            for piece in _ARG_PIECES
        ),
        {
            "type": "response.function_call_arguments.done",
            "item_id": _FC_ID,
            "output_index": 0,
            "arguments": TOOL_ARGS,
        },
    ],
    _resp_call(TOOL_ARGS, "completed"),
    TOOL_TOKENS,
)

# ---- Anthropic Messages ----------------------------------------------------------------------------------------

_ANT_MODEL = "claude-sonnet-4-5-20250929"
_ANT_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
_TOOLU_ID = "toolu_01A09q90qw90lq917835lq9"


def _ant_usage(output: int) -> dict[str, Any]:
    return {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _ant_message(content: list[dict[str, Any]], stop: str | None, output: int) -> dict[str, Any]:
    return {
        "id": _ANT_ID,
        "type": "message",
        "role": "assistant",
        "model": _ANT_MODEL,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _ant_usage(output),
    }


def _ant_sse(block: dict[str, Any], deltas: list[dict[str, Any]], stop: str, output: int) -> bytes:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _ant_message([], None, 1)},
        {"type": "content_block_start", "index": 0, "content_block": block},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {
                "input_tokens": INPUT_TOKENS,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output,
            },
        },
        {"type": "message_stop"},
    ]
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + _json(e) + b"\n\n" for e in events)


_TOOL_USE = {"type": "tool_use", "id": _TOOLU_ID, "name": TOOL_NAME, "input": {"city": "Paris"}}
ANT_TEXT_JSON = _json(_ant_message([{"type": "text", "text": TEXT}], "end_turn", TEXT_TOKENS))
ANT_TOOL_JSON = _json(_ant_message([_TOOL_USE], "tool_use", TOOL_TOKENS))
ANT_TEXT_SSE = _ant_sse(
    {"type": "text", "text": ""}, [{"type": "text_delta", "text": word} for word in _WORDS], "end_turn", TEXT_TOKENS
)
ANT_TOOL_SSE = _ant_sse(
    {**_TOOL_USE, "input": {}},
    [{"type": "input_json_delta", "partial_json": piece} for piece in ["", *_ARG_PIECES]],
    "tool_use",
    TOOL_TOKENS,
)

# ---- the app ---------------------------------------------------------------------------------------------------

# path suffix -> (name, {(tool?, stream?): body})
ROUTES: dict[str, tuple[str, dict[tuple[bool, bool], bytes]]] = {
    "/chat/completions": (
        "chat",
        {
            (False, False): CHAT_TEXT_JSON,
            (True, False): CHAT_TOOL_JSON,
            (False, True): CHAT_TEXT_SSE,
            (True, True): CHAT_TOOL_SSE,
        },
    ),
    "/responses": (
        "responses",
        {
            (False, False): RESP_TEXT_JSON,
            (True, False): RESP_TOOL_JSON,
            (False, True): RESP_TEXT_SSE,
            (True, True): RESP_TOOL_SSE,
        },
    ),
    "/messages": (
        "messages",
        {
            (False, False): ANT_TEXT_JSON,
            (True, False): ANT_TOOL_JSON,
            (False, True): ANT_TEXT_SSE,
            (True, True): ANT_TOOL_SSE,
        },
    ),
}
_HEADERS = [
    (b"x-request-id", b"req_3f9c2a7e1b8d4c6a9e0f1a2b3c4d5e6f"),
    (b"request-id", b"req_011CSHoEeqs5C35K2UUqR7Fy"),
    (b"openai-processing-ms", b"412"),
]
_last: dict[str, bytes] = {}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    if scope["method"] == "GET" and path.startswith("/_last/"):
        await _send(send, 200, b"application/json", _last.get(path.removeprefix("/_last/"), b"null"))
        return
    route = next((r for suffix, r in ROUTES.items() if path.endswith(suffix)), None)
    if scope["method"] != "POST" or route is None:
        await _send(send, 404, b"application/json", b'{"error": {"message": "not served", "type": "not_found"}}')
        return
    name, bodies = route
    _last[name] = raw
    body = json.loads(raw)
    stream = bool(body.get("stream"))
    data = bodies[("tool" in str(body.get("model", "")), stream)]
    await _send(send, 200, b"text/event-stream" if stream else b"application/json", data)


async def _send(send: Send, status: int, content_type: bytes, data: bytes) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def main() -> None:
    serve(app, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    main()

"""Locust users for the server's load test: `POST /v1/chat/completions`, JSON or `stream: true`.

Run ONLY as its own process (`locust -f bench/locustfile.py ...`, as `bench/server_load.py` and
`tests/server/test_load_smoke.py` do): locust monkey-patches the standard library with gevent on import, so this
module must never be imported by pytest or by another bench script.

Settings come from the environment:

- `MINIAGENT_LOAD_KEY`: the API key (`Authorization: Bearer ...`); required.
- `MINIAGENT_LOAD_MODEL`: the agent `ChatUser` calls (the request's `model`); default `bench`.
- `MINIAGENT_LOAD_STREAM_MODEL`: the agent `StreamUser` calls; default `bench-stream`.
- `MINIAGENT_LOAD_EXPECT`: text every answer must contain; default `echo:`.
- `MINIAGENT_LOAD_TIMEOUT`: seconds one request may take; default 120.

`ChatUser` sends non-streamed requests; `StreamUser` sends `stream: true` and reads the whole event stream to
`data: [DONE]`, so its response time is the full stream's. Both wait 0 s between requests (closed loop: the user
count is the concurrency). A request counts as failed on any non-200 status, a body without the expected text, a
stream without `[DONE]` or with an `error` event, or a broken connection.
"""

from __future__ import annotations

import json
import os
from typing import Any

from locust import FastHttpUser, constant, task

KEY = os.environ.get("MINIAGENT_LOAD_KEY", "")
MODEL = os.environ.get("MINIAGENT_LOAD_MODEL", "bench")
STREAM_MODEL = os.environ.get("MINIAGENT_LOAD_STREAM_MODEL", "bench-stream")
EXPECT = os.environ.get("MINIAGENT_LOAD_EXPECT", "echo:")
TIMEOUT = float(os.environ.get("MINIAGENT_LOAD_TIMEOUT", "120"))
PROMPT = "What is the weather in Paris?"
if not KEY:
    raise SystemExit("set MINIAGENT_LOAD_KEY to an API key with the `chat` scope (bench/server_load.py does)")


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _stream_problem(text: str) -> str | None:
    """What is wrong with an SSE body, or None: it must end with `[DONE]`, carry no error and contain EXPECT."""
    content: list[str] = []
    done = False
    for line in text.splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        event: dict[str, Any] = json.loads(data)
        if "error" in event:
            return f"error event: {data[:200]}"
        for choice in event.get("choices", ()):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                content.append(piece)
    if not done:
        return f"no [DONE] in {len(text)} bytes"
    if EXPECT not in "".join(content):
        return f"streamed text {''.join(content)[:120]!r} lacks {EXPECT!r}"
    return None


class ChatUser(FastHttpUser):
    """One client sending non-streamed chat completions back to back."""

    wait_time = constant(0)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    @task
    def chat(self) -> None:
        """One non-streamed request; its answer must contain EXPECT."""
        body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}
        with self.client.post(
            "/v1/chat/completions", json=body, headers=_headers(), name="chat", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                text = response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                response.failure(f"bad body ({exc!r}): {(response.text or '')[:200]}")
                return
            if EXPECT not in text:
                response.failure(f"answer {text[:120]!r} lacks {EXPECT!r}")


class StreamUser(FastHttpUser):
    """One client sending `stream: true` chat completions back to back, each read to `[DONE]`."""

    wait_time = constant(0)
    network_timeout = TIMEOUT
    connection_timeout = TIMEOUT

    @task
    def stream(self) -> None:
        """One streamed request, read whole (the response time covers the full stream)."""
        body = {"model": STREAM_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
        with self.client.post(
            "/v1/chat/completions", json=body, headers=_headers(), name="stream", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
                return
            try:
                problem = _stream_problem(response.text or "")
            except (ValueError, AttributeError) as exc:
                problem = f"bad event ({exc!r})"
            if problem is not None:
                response.failure(problem)

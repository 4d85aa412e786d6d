"""OpenAPI pieces shared by the routers: how a Server-Sent Events answer is documented."""

from __future__ import annotations

from typing import Any

__all__ = ["sse_content"]


def sse_content(data_schema: dict[str, Any] | None = None, *, id_pattern: str | None = None) -> dict[str, Any]:
    """The `content` of an answer that is a stream of Server-Sent Events (`text/event-stream`).

    Before OpenAPI 3.2 (no `itemSchema`), the media type's `schema` describes one event: an object with the event's
    `data` (a string: JSON text when `data_schema` is given, described by `contentMediaType`/`contentSchema`),
    `event` (its kind; `message` when the frame names none), `id` and `retry`. Frames with no `data` (a bare
    `retry:`) are not events.

    Args:
        data_schema: The JSON schema of each event's decoded `data`, or `None` when `data` is any text.
        id_pattern: A regular expression every event `id` matches (`None`: any string).
    """
    data: dict[str, Any] = {"type": "string", "description": "The event's data."}
    if data_schema is not None:
        data.update(contentMediaType="application/json", contentSchema=data_schema)
    event_id: dict[str, Any] = {"type": "string", "description": "The event's id (resume after it)."}
    if id_pattern is not None:
        event_id["pattern"] = id_pattern
    event = {
        "type": "object",
        "properties": {
            "data": data,
            "event": {"type": "string", "description": "The event's kind."},
            "id": event_id,
            "retry": {"type": "integer", "minimum": 0, "description": "The reconnection delay (ms)."},
        },
        "required": ["data", "event"],
    }
    return {"text/event-stream": {"schema": event}}

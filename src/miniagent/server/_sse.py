"""Server-Sent Event answers that stay alive: a `: keep-alive` comment after every quiet spell, so proxies and load
balancers, which cut connections that send nothing for a while (often 60 s), keep a stream that waits on a long tool
call or a slow model.
"""  # noqa: D205

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING

import anyio
from starlette.responses import StreamingResponse

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
    from starlette.types import Send

__all__ = ["HEARTBEAT", "SseResponse"]

HEARTBEAT = b": keep-alive\n\n"
"""An SSE comment line: clients ignore it (the SSE spec, browsers' `EventSource`, the OpenAI SDKs), proxies see
traffic."""


class SseResponse(StreamingResponse):
    """A `text/event-stream` answer: the frames of `content`, and [`HEARTBEAT`][miniagent.server._sse.HEARTBEAT]
    whenever nothing was sent for `heartbeat_s` seconds.

    The frames are produced by a task of this response that feeds a memory stream without a buffer; the response
    waits for the next frame at most `heartbeat_s` seconds at a time, and a wait that times out sends a heartbeat
    instead. No frame is lost to a timeout: a frame is handed over only to a waiting receiver that is not being
    cancelled, otherwise it stays with the producer until the next wait. The wait is a plain coroutine, not an async
    generator, so the producer's task group never spans a `yield`, and the frames' generator is closed by the task
    that iterated it (when the client leaves, it is cancelled there and its `finally` blocks run).

    Args:
        content: The frames (whole SSE events, as bytes).
        heartbeat_s: The longest silence, in seconds (`MINIAGENT_SSE_HEARTBEAT_S`).
        status_code: The answer's status (FastAPI reads its default to document the route).
        headers: More headers (`Cache-Control: no-cache` and `X-Accel-Buffering: no` are set).
    """  # noqa: D205

    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        heartbeat_s: float,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be a positive number of seconds, got {heartbeat_s!r}.")
        super().__init__(
            content,
            status_code=status_code,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self.heartbeat_s = heartbeat_s
        self._frames = content

    async def stream_response(self, send: Send) -> None:
        """Send the headers, then the frames with heartbeats in the silences, then the end of the body."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        errors: list[Exception] = []
        sender, receiver = anyio.create_memory_object_stream[bytes](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce, self._frames, sender, errors)
            try:
                await self._relay(receiver, send)
            except Exception as exc:  # the client went away (or sending failed): stop the frames, then re-raise
                errors.insert(0, exc)
                tg.cancel_scope.cancel()
        if errors:  # raised as it is, as a plain `StreamingResponse` would (not in an exception group)
            raise errors[0]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay(self, receiver: MemoryObjectReceiveStream[bytes], send: Send) -> None:
        """Send each frame as it comes, and a heartbeat after each `heartbeat_s` of waiting, until the frames end."""
        async with receiver:
            while True:
                frame = HEARTBEAT
                with anyio.move_on_after(self.heartbeat_s):
                    try:
                        frame = await receiver.receive()
                    except anyio.EndOfStream:
                        return
                await send({"type": "http.response.body", "body": frame, "more_body": True})


async def _produce(
    content: AsyncIterable[bytes], sender: MemoryObjectSendStream[bytes], errors: list[Exception]
) -> None:
    """Hand `content`'s frames to `sender` one by one, then close it; an error is kept in `errors`."""
    frames: AsyncIterator[bytes] = aiter(content)
    async with sender:
        try:
            async for frame in frames:
                await sender.send(frame)
        except Exception as exc:  # re-raised by the response once the stream ended
            errors.append(exc)
        finally:
            close = getattr(frames, "aclose", None)
            if close is not None:
                await close()

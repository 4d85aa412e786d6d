"""The OpenAI-compatible API: `POST /v1/chat/completions` and `GET /v1/models`, so every OpenAI SDK is a client.

`model` names a served agent, or a pass-through model (`server_passthrough_models`: a plain agent on that model
string, with no instructions and no tools but the client's). Each request is one agent run, recorded in the store
as the principal's (a run without a thread: the conversation lives in the client, which sends it whole each time).
The agent's own tools run on the server; the client's `tools` are offered to the model too, and a call to one ends
the run and comes back as `tool_calls` for the client to run. `response_format` `json_object`/`json_schema` makes
the answer validated JSON.

Streaming (`stream: true`) sends `chat.completion.chunk` events: the role, the text as it is generated, the client's
tool calls, a last chunk with the finish reason, the usage (with `stream_options.include_usage`), then
`data: [DONE]`. When the model's stream breaks off and the resilience layer restarts it (a retry or a fallback model)
after text of that step was already sent, the answer cannot be corrected (the protocol has no way to take text back):
the stream ends with an error event instead of mixing two attempts. A restart before any text of the step was sent
is invisible to the client. A stream that has nothing to send for `sse_heartbeat_s` seconds sends a `: keep-alive`
comment (which SSE clients ignore).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.responses import Response

from ..agent import ExternalToolCalls
from ..context import current_correlation_id
from ..errors import (
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    ModelAPIError,
    ModelRateLimited,
    ModelTimeout,
    RunError,
    RunTimeout,
    UnexpectedModelBehavior,
    UsageLimitExceeded,
    UserError,
)
from ..events import (
    AgentEvent,
    ModelRequestStarted,
    ModelResponseReceived,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunStarted,
    StreamRestarted,
    TextDelta,
)
from ..usage import Usage
from ._deps import StateDep, TenantStore, TenantStoreDep, require_scope
from ._errors import ApiError, error_body, validation_message
from ._openai_convert import (
    RunPlan,
    chunk,
    completion,
    finish_reason,
    now,
    output_content,
    plan_run,
    tool_call_dicts,
)
from ._openai_types import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList, ModelObject
from ._openapi import sse_content
from ._sse import SseResponse

if TYPE_CHECKING:
    from ..agent import Agent
    from ..messages import ModelResponse, ToolCallPart
    from ..store import RunStatus
    from ._state import ServerState

__all__ = ["router"]

_log = logging.getLogger("miniagent.server")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "The request is invalid (OpenAI's `invalid_request_error`)."),
        (401, "Missing or invalid credentials."),
        (403, "The credentials lack the `chat` scope."),
        (404, "No served agent or pass-through model has that name (`model_not_found`)."),
        (429, "A rate limit or budget was reached, or the model's provider limited us."),
        (502, "The model's provider failed."),
        (503, "The model's provider is unavailable (its circuit breaker is open)."),
        (504, "The run or a model request ran past its deadline."),
    )
}


class _OpenAIRoute(APIRoute):
    """A route whose invalid request bodies are a 400 `invalid_request_error`, as OpenAI answers them (not 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                message, param = validation_message(exc.errors())
                raise ApiError(400, "invalid_request", message, param=param) from None

        return route


router = APIRouter(
    prefix="/v1",
    tags=["OpenAI-compatible"],
    dependencies=[Depends(require_scope("chat"))],
    route_class=_OpenAIRoute,
)
"""The `/v1` routes; every one needs a principal with the `chat` scope."""


def _created(state: ServerState) -> int:
    """When this app started serving its agents (each model's `created`)."""
    created: int = state.extras.setdefault("openai.created", now())
    return created


OWNED_BY_AGENT = "miniagent"
"""The `owned_by` of a served agent in `GET /v1/models`."""
OWNED_BY_PASSTHROUGH = "miniagent-passthrough"
"""The `owned_by` of a pass-through model (`server_passthrough_models`) in `GET /v1/models`."""


def _model(state: ServerState, name: str) -> dict[str, Any]:
    owner = OWNED_BY_AGENT if name in state.agents else OWNED_BY_PASSTHROUGH
    return {"id": name, "object": "model", "created": _created(state), "owned_by": owner}


def _model_names(state: ServerState) -> list[str]:
    """The models of `/v1`: the served agents, then the pass-through models."""
    return [*state.agents.names(), *state.passthrough]


def _not_found(state: ServerState, name: str) -> ApiError:
    names = _model_names(state)
    return ApiError(
        404,
        "model_not_found",
        f"The model {name[:200]!r} does not exist: models are the served agents and pass-through models "
        f"({', '.join(repr(n) for n in names) or 'none'}); see GET /v1/models.",
        param="model",
    )


def _served(state: ServerState, name: str) -> Agent[Any, Any]:
    """The agent that answers for the model `name` (a served agent, or a pass-through model's), or 404."""
    if name in state.agents:
        return state.agents.get(name)
    passthrough = state.passthrough.get(name)
    if passthrough is None:
        raise _not_found(state, name)
    return passthrough


@router.get("/models", response_model=ModelList, responses={k: _ERRORS[k] for k in (401, 403)})
async def list_models(state: StateDep) -> dict[str, Any]:
    """The served agents (`owned_by: miniagent`), then the pass-through models (`owned_by: miniagent-passthrough`):
    pass an entry's `id` as `model`.
    """  # noqa: D205
    return {"object": "list", "data": [_model(state, name) for name in _model_names(state)]}


@router.get("/models/{model_id:path}", response_model=ModelObject, responses={k: _ERRORS[k] for k in (401, 403, 404)})
async def get_model(model_id: str, state: StateDep) -> dict[str, Any]:
    """One served agent or pass-through model, as a model (a model string may hold `/`)."""
    _served(state, model_id)
    return _model(state, model_id)


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "description": "The answer; with `stream: true`, server-sent `chat.completion.chunk` events ending with "
            '`data: [DONE]` (an error after the stream started is sent as a `data: {"error": ...}` event; a quiet '
            "spell of `MINIAGENT_SSE_HEARTBEAT_S` seconds gets a `: keep-alive` comment).",
            "content": sse_content(),
        },
        **_ERRORS,
    },
)
async def chat_completions(body: ChatCompletionRequest, state: StateDep, tenant: TenantStoreDep) -> Response:
    """Answer a conversation with a served agent or pass-through model (`model`), whole or streamed (`stream: true`)."""
    served = _served(state, body.model)
    try:
        served.resolve_model()
    except UserError:  # the server's configuration, not the request: the detail goes to the logs only
        _log.exception("agent %r cannot resolve its model", body.model)
        raise ApiError(
            503, "agent_unavailable", f"The agent {body.model[:200]!r} cannot run now (its model is not available)."
        ) from None
    plan = plan_run(served, body)
    log = _RunLog(tenant, body.model, plan.agent.resolve_model().name)
    if body.user:
        _log.debug("chat completion for end user %r of %s/%s", body.user, tenant.tenant_id, tenant.user_id)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SseResponse(
            _stream(plan, log, body.model, include_usage=include_usage), heartbeat_s=state.settings.sse_heartbeat_s
        )
    return JSONResponse(await _answer(plan, log, body.model))


class _RunLog:
    """Records a request's run in the store as the principal's, in one transaction at its end.

    A run without a thread has nothing to protect before the model call (no conversation to commit), so its row,
    events and usage records are written together once it ends (cancelled and failed runs too): one transaction
    per request instead of two, at the cost of the run not being listed as `running` while it is in flight (and of
    no record at all for a process killed mid-request, whose usage is then not in the usage report).
    """

    def __init__(self, tenant: TenantStore, agent_name: str, model_name: str) -> None:
        self.tenant = tenant
        self.agent_name = agent_name
        self.model_name = model_name
        self.run_id: str | None = None
        self.steps = 0
        self.events: list[AgentEvent] = []
        self.model_usage: list[tuple[str, Usage]] = []
        self.finished = False
        self.last_response: ModelResponse | None = None
        self.correlation_id: str | None = None

    async def on_event(self, event: AgentEvent) -> None:
        self.events.append(event)
        if isinstance(event, RunStarted):
            self.run_id = event.run_id
            self.correlation_id = current_correlation_id()
        elif isinstance(event, ModelRequestStarted):
            self.steps = event.step
        elif isinstance(event, ModelResponseReceived):
            self.last_response = event.response
            self.model_usage.append((event.response.model_name or self.model_name, event.response.usage))
        elif isinstance(event, RunFinished):
            await self.finish("succeeded", event.usage)
        elif isinstance(event, RunFailed):
            await self.finish("failed", event.usage, f"{event.error_type}: {event.message}")
        elif isinstance(event, RunCancelled):
            await self.finish("cancelled", event.usage)

    async def finish(self, status: RunStatus, usage: Usage, error: str | None = None) -> None:
        if self.finished or self.run_id is None:
            return
        self.finished = True
        with anyio.CancelScope(shield=True):  # a cancelled run is still recorded as such
            await self.tenant.record_threadless_run(
                self.run_id,
                agent_name=self.agent_name,
                correlation_id=self.correlation_id,
                status=status,
                steps=self.steps,
                usage=usage,
                error=error,
                events=self.events,
                model_usage=self.model_usage,
            )

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.run_id}"


def _run_error(exc: BaseException) -> ApiError:
    """The HTTP error of a failed run: the client's fault is 4xx, the provider's 5xx, with what to do."""
    message = str(exc)
    if isinstance(exc, ContextLengthExceeded):
        return ApiError(400, "context_length_exceeded", message, param="messages")
    if isinstance(exc, ContentFiltered):
        return ApiError(400, "content_filter", message)
    if isinstance(exc, ModelRateLimited):
        retry = exc.retry_after_s
        headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else None
        return ApiError(429, "upstream_rate_limited", message, headers=headers)
    if isinstance(exc, CircuitOpen):
        return ApiError(
            503, "upstream_unavailable", message, headers={"Retry-After": str(max(1, round(exc.retry_in_s)))}
        )
    if isinstance(exc, ModelTimeout | RunTimeout):
        return ApiError(504, "timeout", message)
    if isinstance(exc, ModelAPIError):
        return ApiError(502, "upstream_error", message)
    if isinstance(exc, UsageLimitExceeded):
        return ApiError(500, "usage_limit_exceeded", message)
    if isinstance(exc, UnexpectedModelBehavior):
        return ApiError(502, "unexpected_model_behavior", message)
    if isinstance(exc, RunError):
        return ApiError(500, "run_failed", message)
    return ApiError(
        500, "internal_error", f"The run failed ({type(exc).__name__}); see the server's logs for this request."
    )


def _client_calls(output: Any) -> list[ToolCallPart]:
    """The calls of the client's tools a run ended with (none when it answered)."""
    return output.calls if isinstance(output, ExternalToolCalls) else []


async def _answer(plan: RunPlan, log: _RunLog, model: str) -> dict[str, Any]:
    """Run the agent to its end and build the `chat.completion`."""
    created = now()
    try:
        result = await plan.agent.run(
            message_history=plan.history, model_settings=plan.settings, event_sink=log.on_event, stream=False
        )
    except RunError as exc:
        raise _run_error(exc) from None
    calls = _client_calls(result.output)
    last = result.response
    content = (last.text or None) if calls else output_content(result.output, plan.structured)
    return completion(
        completion_id=f"chatcmpl-{result.run_id}",
        created=created,
        model=model,
        content=content,
        tool_calls=calls,
        reason=finish_reason(last, tool_calls=bool(calls)),
        usage=result.usage,
    )


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _error_event(error: ApiError) -> bytes:
    return _sse(error_body(error.status, error.code, error.message, openai=True, param=error.param))


def _restart_error(event: StreamRestarted, sent: int) -> ApiError:
    return ApiError(
        502,
        "stream_restarted",
        f"The model's stream broke off after {sent} characters of this answer were sent ({event.reason}), and was "
        f"restarted (model {event.model_name!r}); a streamed answer cannot take text back, so it ends here. Send the "
        "request again (or without `stream` to get only the complete answer).",
    )


async def _stream(plan: RunPlan, log: _RunLog, model: str, *, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body of a streamed answer."""
    created = now()
    sent: dict[int, int] = {}  # characters of content sent, per step
    output: Any = None
    usage = Usage()
    try:
        async with plan.agent.run_stream(
            message_history=plan.history, model_settings=plan.settings, usage=usage
        ) as run:
            try:
                async for event in run.events():
                    await log.on_event(event)
                    if isinstance(event, RunStarted):
                        yield _sse(chunk(log.completion_id, created, model, {"role": "assistant", "content": ""}))
                    elif isinstance(event, TextDelta) and plan.structured == "text":
                        sent[event.step] = sent.get(event.step, 0) + len(event.delta)
                        yield _sse(chunk(log.completion_id, created, model, {"content": event.delta}))
                    elif isinstance(event, StreamRestarted) and sent.get(event.step):
                        yield _error_event(_restart_error(event, sent[event.step]))
                        return  # leaving the block cancels the run, recorded as cancelled
                    elif isinstance(event, ModelResponseReceived):
                        text = event.response.text
                        if plan.structured == "text" and text and not sent.get(event.step):
                            # A model that does not stream (`supports_streaming` false) gives its text whole.
                            sent[event.step] = len(text)
                            yield _sse(chunk(log.completion_id, created, model, {"content": text}))
                        calls = [c for c in event.response.tool_calls if c.tool_name in plan.client_tools]
                        if calls:
                            yield _sse(chunk(log.completion_id, created, model, {"tool_calls": tool_call_dicts(calls)}))
                    elif isinstance(event, RunFinished):
                        output = event.output
            except RunError as exc:
                yield _error_event(_run_error(exc))
                return
            except Exception as exc:
                _log.exception("streamed run %s failed", log.run_id)
                yield _error_event(_run_error(exc))
                return
    finally:
        if not log.finished:  # the client went away (or the stream was ended above): the run was cancelled
            await log.finish("cancelled", usage)
    calls = _client_calls(output)
    if not calls and plan.structured != "text":
        yield _sse(chunk(log.completion_id, created, model, {"content": output_content(output, plan.structured)}))
    reason = finish_reason(log.last_response, tool_calls=bool(calls))
    yield _sse(chunk(log.completion_id, created, model, {}, reason=reason))
    if include_usage:
        last_usage = next((e.usage for e in reversed(log.events) if isinstance(e, RunFinished)), Usage())
        yield _sse(chunk(log.completion_id, created, model, None, usage=last_usage))
    yield b"data: [DONE]\n\n"

"""The server's one error type and how errors are rendered.

Every error answer has a machine-readable code and a human message:
`{"error": {"code": "agent_not_found", "message": "No agent 'x'; available: 'echo'.", "type": "not_found_error"}}`.
Under `/v1` (the OpenAI-compatible API) the body has OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, so OpenAI SDKs raise their usual exceptions. A 500 never carries a stack trace: it names the request id
to look up in the server's logs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["ApiError", "error_body", "error_type", "install_error_handlers", "validation_message"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}


class ApiError(HTTPException):
    """An HTTP error answer with a machine-readable `code` and a human `message` (which says what to do).

    Args:
        status: The HTTP status, e.g. 404.
        code: A stable snake_case code, e.g. `agent_not_found`.
        message: What went wrong and how to fix it.
        headers: Extra response headers (`WWW-Authenticate`, `Retry-After`...).
        extra: More machine-readable fields added to the error object (e.g. `{"available": [...]}`).
        param: The request parameter at fault, when one is (OpenAI's `param`).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(status, detail=message, headers=dict(headers) if headers else None)
        self.status = status
        """The HTTP status."""
        self.code = code
        """The machine-readable code."""
        self.message = message
        """The human message."""
        self.extra: dict[str, Any] = dict(extra or {})
        """Extra fields of the error object."""
        self.param = param
        """The parameter at fault, if any."""

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.code!r}, {self.message!r})"


def error_type(status: int) -> str:
    """The error `type` of a status: `invalid_request_error`, `authentication_error`, ... or `server_error`."""
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(
    status: int,
    code: str,
    message: str,
    *,
    openai: bool = False,
    param: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of an error answer (OpenAI's shape when `openai`)."""
    if openai:
        error: dict[str, Any] = {"message": message, "type": error_type(status), "param": param, "code": code}
    else:
        error = {"code": code, "message": message, "type": error_type(status)}
        if param is not None:
            error["param"] = param
    for key, value in (extra or {}).items():
        error.setdefault(key, value)
    return {"error": error}


def is_openai_path(path: str) -> bool:
    """Whether `path` is under the OpenAI-compatible API (`/v1/...`), whose errors have OpenAI's shape."""
    return path == "/v1" or path.startswith("/v1/")


def error_json(status: int, code: str, message: str, *, path: str, **kw: Any) -> bytes:
    """The encoded error body for a request to `path`."""
    return json.dumps(error_body(status, code, message, openai=is_openai_path(path), **kw)).encode()


def _loc(loc: Sequence[object]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where, rest = parts[0], parts[1:]
        return f"{where} field {'.'.join(rest)!r}" if rest else f"the request {where}"
    return ".".join(parts) or "the request"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """A readable message for pydantic/FastAPI validation errors, and the first parameter at fault."""
    lines: list[str] = []
    param: str | None = None
    for error in list(errors)[:5]:
        loc = error.get("loc") or ()
        kind = error.get("type", "")
        if kind == "json_invalid":
            lines.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'syntax error')})")
            continue
        if param is None and len(loc) > 1:
            param = ".".join(str(p) for p in loc[1:])
        lines.append(f"{_loc(loc)}: {error.get('msg', 'invalid')}")
    more = len(errors) - 5
    text = "; ".join(lines) + (f"; and {more} more" if more > 0 else "")
    return f"Invalid request: {text}. Fix the request (see /docs for the schema) and retry.", param


def _unreadable_body(request: Request) -> ApiError:
    """The error for a body FastAPI could not parse at all: 422 `invalid_request` (OpenAI's 400 under `/v1`)."""
    return ApiError(
        400 if is_openai_path(request.url.path) else 422,
        "invalid_request",
        "Invalid request: the body could not be read (send UTF-8 JSON with `Content-Type: application/json`). "
        "Fix the request (see /docs for the schema) and retry.",
        param="body",
    )


def _allowed_methods(request: Request, allow: str | None) -> list[str]:
    """The methods of the request's path: those of every operation documented on it (FastAPI makes one route per
    method, so the router's own `Allow` names only the first route's), and `allow`, the router's.
    """  # noqa: D205
    from starlette.routing import compile_path

    methods = {m.strip().upper() for m in (allow or "").split(",") if m.strip()}
    path = request.url.path
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(path):
            methods.update(m.upper() for m in item if m in _HTTP_METHODS)
    return sorted(methods)


def _response(request: Request, error: ApiError) -> Response:
    from starlette.responses import JSONResponse

    body = error_body(
        error.status,
        error.code,
        error.message,
        openai=is_openai_path(request.url.path),
        param=error.param,
        extra=error.extra,
    )
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Render `ApiError`, HTTP errors, validation errors and miniagent errors as error bodies (crashes are rendered
    by the edge middleware, which also logs them).
    """  # noqa: D205
    from fastapi.exceptions import RequestValidationError

    from ..errors import StoreError, ThreadConflict, ThreadNotFound, UserError

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI could not read the body at all (not UTF-8, a broken form...)
            return _response(request, _unreadable_body(request))
        code = _CODES.get(exc.status_code, "http_error")
        detail: object = exc.detail  # FastAPI's HTTPException takes any JSON value
        message = detail if isinstance(detail, str) else "The request failed."
        headers = exc.headers
        if exc.status_code == 404:
            message = f"No route {request.url.path!r}: see /docs for the API."
        elif exc.status_code == 405:
            allowed = _allowed_methods(request, (exc.headers or {}).get("Allow"))
            message = f"{request.method} is not allowed on {request.url.path!r} (allowed: {', '.join(allowed)}): " \
                "see /docs for the API."  # fmt: skip
            headers = {**(headers or {}), "Allow": ", ".join(allowed)} if allowed else headers
        return _response(request, ApiError(exc.status_code, code, message, headers=headers))

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message, param = validation_message(exc.errors())
        return _response(request, ApiError(422, "invalid_request", message, param=param))

    async def miniagent_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ThreadNotFound):
            error = ApiError(404, "not_found", str(exc))
        elif isinstance(exc, ThreadConflict):
            error = ApiError(409, "conflict", str(exc))
        elif isinstance(exc, StoreError):
            logging.getLogger("miniagent.server").warning("store_unavailable: %s", exc)
            error = ApiError(
                503,
                "store_unavailable",
                "The server's store is unavailable; retry later.",
                headers={"Retry-After": "5"},
            )
        else:  # an invalid value the models accepted but miniagent refused: 422 (OpenAI's 400 under /v1)
            error = ApiError(400 if is_openai_path(request.url.path) else 422, "invalid_request", str(exc))
        return _response(request, error)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ThreadNotFound, miniagent_error)
    app.add_exception_handler(ThreadConflict, miniagent_error)
    app.add_exception_handler(StoreError, miniagent_error)
    app.add_exception_handler(UserError, miniagent_error)

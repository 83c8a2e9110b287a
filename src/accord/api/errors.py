"""Rendering errors once, at the edge: every failure leaves the API as `{"code", "message"}`.

Services raise AccordError subclasses and never think about HTTP; this module is the only place that
maps them to responses (Flower's error catalog and Prefect's `exception_handlers` are the models):

- `AccordError`            -> its class's `http_status`, body `exc.to_dict()`.
- `RequestValidationError` -> 400, code 11100, a message naming the parameter or body field and why.
- Starlette `HTTPException` (unknown route, wrong method) -> its status with a catalog code.
- anything else            -> 500, code 11101, a generic message; the traceback goes to the log only,
  because the cause may contain internals (paths, SQL) that a remote caller must not see.

The catch-all is a small ASGI middleware instead of an `Exception` handler: Starlette runs `Exception`
handlers in its outermost middleware and then *re-raises*, so the server would log the same failure a
second time; the middleware logs it exactly once and answers.  Errors inside a streaming body (watch,
logs) cannot change a status already sent; those streams report them in-band (see `api/watch.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from accord.errors import AccordError, ErrorCode

log = logging.getLogger("accord.api")

INTERNAL_ERROR_MESSAGE = "internal error in the node; the node's log has the details"


class ErrorBody(BaseModel):
    """The body of every error response (KusciaAPI's `status{code, message}`)."""

    code: int
    message: str


# For the OpenAPI document: routes list these next to their success response.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid request (code names the problem)"},
    401: {"model": ErrorBody, "description": "missing or wrong token (code 11102)"},
    404: {"model": ErrorBody, "description": "object not found"},
    409: {"model": ErrorBody, "description": "already exists, stale resource_version or immutable field"},
}

_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_ARGUMENT,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.PERMISSION_DENIED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_ARGUMENT,
    409: ErrorCode.CONFLICT,
    410: ErrorCode.WATCH_EXPIRED,
    503: ErrorCode.STORE_UNAVAILABLE,
}


def error_response(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"code": int(code), "message": message})


def describe_validation_error(error: dict[str, Any]) -> str:
    """`query parameter 'since': Input should be a valid integer ...` for one pydantic error."""
    loc = [str(part) for part in error.get("loc", ())]
    where, rest = (loc[0], ".".join(loc[1:])) if loc else ("", "")
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "json_invalid":
        cause = (error.get("ctx") or {}).get("error", "")
        return f"request body is not valid JSON{f' ({cause})' if cause else ''}"
    if where == "body":
        label = f"body field {rest!r}" if rest else "request body"
    elif where in ("query", "path", "header", "cookie"):
        label = f"{where} parameter {rest!r}"
    else:
        label = ".".join(loc) or "request"
    return f"{label}: {message}"


async def _accord_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AccordError)
    if exc.http_status >= 500:
        log.warning("%s %s failed: %r", request.method, request.url.path, exc)
    return error_response(exc.http_status, exc.code, exc.message)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = "; ".join(describe_validation_error(dict(e)) for e in exc.errors())
    return error_response(400, ErrorCode.INVALID_ARGUMENT, message or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.UNKNOWN)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"no such API route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    response = error_response(exc.status_code, code, message)
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


class CatchAllMiddleware:
    """Log an unexpected exception once (with traceback) and answer 500 `{code: 11101}`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:  # the status line is gone already; the server closes the connection
                return
            response = error_response(500, ErrorCode.UNKNOWN, INTERNAL_ERROR_MESSAGE)
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AccordError, _accord_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(CatchAllMiddleware)

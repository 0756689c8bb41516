"""Client-facing errors: one exception type, rendered as plain text for `POST /` and JSON for `/v1`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerec.web.access_log import request_id as scope_request_id

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An expected failure with the HTTP status and message the client should see."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.detail = detail
        """What went wrong inside (a backend's error text): logged with the request id, never sent to the client."""


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = Field(
        None, description="On 5xx answers: the id under which the server logged the details (quote it in reports)."
    )


class ErrorBody(BaseModel):
    """The JSON error body of every `/v1` endpoint."""

    error: ErrorDetail


def wants_json(path: str) -> bool:
    # The course contract (`POST /`) is plain text; everything versioned speaks JSON.
    return path.startswith("/v1")


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> Response:
    """A 5xx answer names the request id (`request_id`), under which its details were logged: its message is a
    generic reason and never carries a backend's error text (paths, ARNs, account ids)."""
    if request_id is None or status < 500:
        request_id = None
    if wants_json(path):
        body = ErrorBody(error=ErrorDetail(code=code, message=message, request_id=request_id))
        return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)
    if request_id is not None:
        message = f"{message} (request id {request_id})"
    return PlainTextResponse(message, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    identifier = scope_request_id(request.scope)
    if exc.status >= 500:
        log.warning(
            "server_error",
            extra={"request_id": identifier, "status": exc.status, "code": exc.code, "detail": exc.detail},
        )
    return error_response(request.url.path, exc.status, exc.code, exc.message, exc.headers, identifier)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = "not_found" if exc.status_code == 404 else f"http_{exc.status_code}"
    return error_response(
        request.url.path,
        exc.status_code,
        code,
        str(exc.detail),
        dict(exc.headers or {}),
        scope_request_id(request.scope),
    )


async def _invalid_request(request: Request, exc: Exception) -> Response:
    """A query or path parameter FastAPI refused (e.g. `top_k=0`): the same error body as every other 4xx."""
    assert isinstance(exc, RequestValidationError)
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or "request"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    return error_response(request.url.path, 422, "invalid_parameter", "; ".join(problems) or "invalid request")


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Never show a traceback to the client; the log keeps it.
    identifier = scope_request_id(request.scope)
    log.exception(
        "unhandled_error",
        extra={"path": request.url.path, "error_type": type(exc).__name__, "request_id": identifier},
    )
    return error_response(
        request.url.path, 500, "internal_error", "internal error; the request was not processed", None, identifier
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _unexpected_error)

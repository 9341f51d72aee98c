"""One place that turns every failure into the envelope with the right status."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from docbatch.core.errors import (
    DocBatchError,
    InfrastructureError,
    ServiceUnavailableError,
    is_unavailable_sqlstate,
    summarize_error,
)

logger = structlog.get_logger(__name__)

_HTTP_MESSAGES = {
    404: "No action exists at this path; check the URL against /docs.",
    405: "This action does not accept the {method} method; check /docs for the right one.",
}


def envelope_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"isSuccess": False, "error": message, "result": None},
        status_code=status_code,
        headers=headers,
    )


def describe_validation_error(error: dict[str, Any]) -> str:
    """Turn one of FastAPI's validation errors into a sentence naming the field and the fix."""
    raw_location = [str(part) for part in error.get("loc", ())]
    location = [part for part in raw_location if part not in ("body", "query")]
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ").rstrip(".")
    kind = error.get("type")
    if kind == "json_invalid":
        detail = error.get("ctx", {}).get("error", message)
        return f"The request body is not valid JSON: {detail}."
    if not location:
        if raw_location[:1] == ["body"]:
            if kind == "missing":
                return (
                    "The JSON request body is missing; send it with Content-Type: application/json."
                )
            return f"The JSON request body is invalid: {message}."
        return f"The request is invalid: {message}."
    where = ".".join(location)
    if kind == "missing":
        return f"{where} is required; add it to the request."
    if kind == "extra_forbidden":
        return f"{where} is not a known field; remove it from the request."
    return f"{where} is invalid: {message}. Correct it and retry."


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DocBatchError)
    logger.info("request.rejected", status=error.status_code, error=error.message)
    return envelope_response(error.status_code, error.message, error.headers)


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = list(error.errors())
    message = describe_validation_error(errors[0]) if errors else "The request is invalid."
    if len(errors) > 1:
        message += (
            f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in the request.)"
        )
    logger.info("request.rejected", status=400, error=message)
    return envelope_response(400, message)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if isinstance(error.__cause__, DocBatchError):
        # FastAPI reports any failure while reading a body as a 400 "error parsing the body";
        # a body limit hit while reading keeps its own status.
        return await _domain_error(request, error.__cause__)
    template = _HTTP_MESSAGES.get(error.status_code)
    message = template.format(method=request.method) if template else str(error.detail)
    return envelope_response(error.status_code, message, dict(error.headers or {}))


async def _client_disconnected(request: Request, error: Exception) -> JSONResponse:
    # The client has disconnected, so this response is never delivered. An upload in progress
    # has already deleted its payloads.
    logger.info("request.client_disconnected")
    return envelope_response(400, "The client disconnected before the request body was complete.")


async def _unavailable(request: Request, error: Exception) -> JSONResponse:
    logger.warning(
        "request.backend_unavailable",
        error=summarize_error(error),
        error_type=type(error).__name__,
    )
    unavailable = ServiceUnavailableError()
    return envelope_response(unavailable.status_code, unavailable.message, unavailable.headers)


def internal_error_message(request_id: str) -> str:
    return (
        "The service failed to complete the request; report request id "
        f"{request_id} to the operator."
    )


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    logger.exception("request.failed", error_type=type(error).__name__)
    request_id = request.scope.get("state", {}).get("request_id", "unknown")
    return envelope_response(500, internal_error_message(request_id))


def _is_unavailable_sqlstate(error: DBAPIError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return is_unavailable_sqlstate(sqlstate)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DocBatchError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    for unavailable in (
        OperationalError,
        PoolTimeoutError,
        InfrastructureError,
        ConnectionError,
        OSError,
    ):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(DBAPIError, _dbapi_error)
    # Any other exception is turned into a 500 envelope by RequestIdMiddleware, which runs
    # inside Starlette's outermost error middleware and so can still add X-Request-ID.


async def _dbapi_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DBAPIError)
    if error.connection_invalidated or _is_unavailable_sqlstate(error):
        return await _unavailable(request, error)
    return await _unexpected(request, error)

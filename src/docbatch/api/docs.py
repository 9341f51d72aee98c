"""OpenAPI `responses` built from the error classes, with envelope examples."""

from __future__ import annotations

from typing import Any

from docbatch.api.schemas import ErrorEnvelope
from docbatch.core.errors import (
    AuthenticationError,
    DocBatchError,
    ForbiddenError,
    InvalidRequestError,
    ServiceUnavailableError,
)

_EXAMPLES: dict[int, str] = {
    400: "batchGuid 'abc' is not a GUID; send it as 8-4-4-4-12 hexadecimal digits.",
    401: (
        "A bearer token is required: send 'Authorization: Bearer <token>' with a token from "
        "/core/connect/token."
    ),
    403: "This action requires the BatchCreator role, which the token lacks.",
    404: (
        "Batch 3f2b8e1c-4d5a-4b6c-8d7e-9f0a1b2c3d4e was not found in tenant "
        "0e6a2b1c-5d4e-4f3a-9b8c-7d6e5f4a3b2c."
    ),
    409: (
        "Batch 3f2b8e1c-4d5a-4b6c-8d7e-9f0a1b2c3d4e is Queued and no longer accepts records; "
        "nothing was stored. Create a new batch for more records."
    ),
    413: "Record data is over the limit of 104857600 bytes; nothing was stored.",
    415: (
        "The body must be multipart/form-data with a RecordData file part; got 'application/json'."
    ),
    503: ServiceUnavailableError.default_message,
}

COMMON_ERRORS: tuple[type[DocBatchError], ...] = (
    InvalidRequestError,
    AuthenticationError,
    ForbiddenError,
    ServiceUnavailableError,
)


def error_responses(*errors: type[DocBatchError]) -> dict[int | str, dict[str, Any]]:
    """Document each error's status with an envelope example; the common ones are always listed."""
    responses: dict[int | str, dict[str, Any]] = {}
    for error in (*COMMON_ERRORS, *errors):
        status = error.status_code
        responses[status] = {
            "model": ErrorEnvelope,
            "description": error.default_message,
            "content": {
                "application/json": {
                    "example": {
                        "isSuccess": False,
                        "error": _EXAMPLES.get(status, error.default_message),
                        "result": None,
                    }
                }
            },
        }
    return responses


def success_example(result: Any) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "content": {
                "application/json": {
                    "example": {"isSuccess": True, "error": None, "result": result}
                }
            }
        }
    }

"""The domain error hierarchy. Each class carries its HTTP status; one handler renders them."""

from __future__ import annotations

from typing import ClassVar


class DocBatchError(Exception):
    """Base class of errors that reach the client as an envelope with a specific status."""

    status_code: ClassVar[int] = 500
    default_message: ClassVar[str] = "The request failed."
    headers: dict[str, str] | None = None

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidRequestError(DocBatchError):
    status_code = 400
    default_message = "The request is invalid; check the parameters and the body."


class AuthenticationError(DocBatchError):
    status_code = 401
    default_message = "A valid bearer token is required; request one from /core/connect/token."

    def __init__(self, message: str | None = None, *, token_sent: bool = True) -> None:
        super().__init__(message)
        # RFC 6750 section 3.1: a request without a token gets the challenge without an error code.
        challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
        self.headers = {"WWW-Authenticate": challenge}


class ForbiddenError(DocBatchError):
    status_code = 403
    default_message = "The token does not grant access to this action."


class NotFoundError(DocBatchError):
    status_code = 404
    default_message = "The requested object was not found in this tenant."


class ConflictError(DocBatchError):
    status_code = 409
    default_message = "The object's current state does not allow this action."


class PayloadTooLargeError(DocBatchError):
    status_code = 413
    default_message = "The request body is over the configured limit; nothing was stored."


class UnsupportedMediaTypeError(DocBatchError):
    status_code = 415
    default_message = "The request body has the wrong content type."


class ServiceUnavailableError(DocBatchError):
    status_code = 503
    default_message = (
        "The database or blob store is unreachable; nothing was changed. Retry the request later."
    )
    retry_after_seconds: ClassVar[int] = 5

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(self.retry_after_seconds)}


class InfrastructureError(Exception):
    """A database or blob store failure that a worker retries with backoff."""


# PostgreSQL SQLSTATE classes that mean the server cannot take the request now: 08 connection
# exceptions, 53 insufficient resources (too many clients), 57P operator intervention (shutdown).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57P")


def is_unavailable_sqlstate(sqlstate: object) -> bool:
    """Tell whether a PostgreSQL SQLSTATE means the server cannot take the request now."""
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)


def summarize_error(error: BaseException, limit: int = 300) -> str:
    """Return the first line of an error's message for a log line, or its type when it has none."""
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]

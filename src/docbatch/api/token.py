"""The OAuth 2.0 client-credentials token endpoint. Its errors follow RFC 6749 section 5.2, not
the envelope, because OAuth client libraries parse them."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from docbatch.api.schemas import TokenResponse
from docbatch.api.state import app_state
from docbatch.auth.clients import authenticate_client
from docbatch.core.text import unstorable_character

logger = structlog.get_logger(__name__)

router = APIRouter(tags=["Authentication"])

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM_BYTES = 16 * 1024
# The length of the column that keeps client ids; a longer id cannot belong to a client.
_MAX_CLIENT_ID_LENGTH = 64


def _oauth_error(status_code: int, error: str, description: str) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status_code == 401:
        headers["WWW-Authenticate"] = 'Basic realm="docbatch"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status_code, headers=headers
    )


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


@router.post(
    "/core/connect/token",
    summary="Get an access token (OAuth 2.0 client credentials)",
    description=(
        "Form fields: client_id, client_secret, grant_type=client_credentials, optional scope "
        "(clients send DocFusion) and resource (ignored). HTTP Basic client authentication is "
        "accepted too. Errors follow RFC 6749 section 5.2."
    ),
    response_model=TokenResponse,
    responses={
        400: {
            "description": "invalid_request or unsupported_grant_type",
            "content": {
                "application/json": {
                    "example": {
                        "error": "unsupported_grant_type",
                        "error_description": "grant_type must be client_credentials.",
                    }
                }
            },
        },
        401: {
            "description": "invalid_client",
            "content": {
                "application/json": {
                    "example": {
                        "error": "invalid_client",
                        "error_description": "The client id or secret is wrong.",
                    }
                }
            },
        },
    },
)
async def issue_token(request: Request) -> JSONResponse:
    state = app_state(request)
    if state.issuer is None:
        return _oauth_error(
            400,
            "unsupported_grant_type",
            "Tokens are issued by the configured identity provider, not by this service.",
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error(
            400, "invalid_request", "The body must be application/x-www-form-urlencoded."
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_FORM_BYTES:
        return _oauth_error(400, "invalid_request", "The form is too large.")
    try:
        form = await request.form(max_files=0, max_fields=20, max_part_size=_MAX_FORM_BYTES)
    except StarletteHTTPException as error:
        return _oauth_error(400, "invalid_request", f"The form is malformed: {error.detail}")
    grant_type = form.get("grant_type")
    if not grant_type:
        return _oauth_error(
            400, "invalid_request", "grant_type is required; send grant_type=client_credentials."
        )
    if grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials.")
    basic = _basic_credentials(request)
    client_id, secret = basic if basic else (form.get("client_id"), form.get("client_secret"))
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id or not secret:
        return _oauth_error(400, "invalid_request", "client_id and client_secret are required.")
    if unstorable_character(client_id) or len(client_id) > _MAX_CLIENT_ID_LENGTH:
        return _oauth_error(401, "invalid_client", "The client id or secret is wrong.")
    async with state.database.read() as session:
        client = await authenticate_client(session, client_id, secret)
    if client is None:
        logger.info("token.rejected", client_id=client_id[:64])
        return _oauth_error(401, "invalid_client", "The client id or secret is wrong.")
    token = state.issuer.issue(client.client_id, client.roles, client.tenant_guids)
    logger.info("token.issued", client_id=client.client_id)
    body = TokenResponse(access_token=token, expires_in=state.issuer.ttl_seconds)
    return JSONResponse(body.model_dump(), headers=_NO_STORE)

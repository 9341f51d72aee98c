"""Authentication and authorization dependencies, declared once per role.

Order of checks: a missing or invalid token is 401; a token without the action's role is 403; a
malformed `tenantGuid` is 400; a tenant the token does not list is 403, before any lookup.

Every dependency here is a coroutine function, because FastAPI runs a plain function dependency in
its thread pool, which costs a thread hand-off per request. Each dependency also costs a step of
FastAPI's resolution, so the chain is short: the bearer scheme, one token and role check per role,
then the tenant scope. The scope stays a separate step because FastAPI validates a dependency's
query parameters before calling it. A merged check would report a missing `tenantGuid` (400)
before a missing token (401).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from docbatch.api.state import AppState, app_state
from docbatch.auth.principal import Principal, Role, TenantScope, grant_tenant
from docbatch.core.errors import (
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
)
from docbatch.core.text import unstorable_character

_bearer = HTTPBearer(auto_error=False, description="An access token from /core/connect/token.")


async def _app_state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(_app_state)]
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise AuthenticationError(
            "A bearer token is required: send 'Authorization: Bearer <token>' with a token from "
            "/core/connect/token.",
            token_sent=credentials is not None,
        )
    principal = await app_state(request).verifier.verify(credentials.credentials)
    structlog.contextvars.bind_contextvars(subject=principal.subject)
    return principal


def _requires(role: Role) -> Callable[[Request, BearerCredentials], Awaitable[Principal]]:
    async def check(request: Request, credentials: BearerCredentials) -> Principal:
        principal = await _principal(request, credentials)
        if role.value not in principal.roles:
            raise ForbiddenError(
                f"This action requires the {role.value} role, which the token lacks."
            )
        return principal

    return check


CreatorPrincipal = Annotated[Principal, Depends(_requires(Role.BATCH_CREATOR))]
ViewerPrincipal = Annotated[Principal, Depends(_requires(Role.BATCH_VIEWER))]
AdminPrincipal = Annotated[Principal, Depends(_requires(Role.BATCH_ADMIN))]


def parse_guid(value: str, name: str) -> uuid.UUID:
    """Parse a GUID in any case; raise `InvalidRequestError` (400) naming the parameter."""
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError) as error:
        raise InvalidRequestError(
            f"{name} '{value[:64]}' is not a GUID; send it as 8-4-4-4-12 hexadecimal digits."
        ) from error


def tenant_scope(
    principal: Principal,
    tenant_guid: str,
) -> TenantScope:
    guid = parse_guid(tenant_guid, "tenantGuid")
    scope = grant_tenant(principal, guid)
    if scope is None:
        raise ForbiddenError(f"The token does not grant access to tenant {guid}.")
    structlog.contextvars.bind_contextvars(tenant=str(guid))
    return scope


TenantGuidQuery = Annotated[str, Query(alias="tenantGuid", description="The tenant to act in.")]


async def _creator_scope(principal: CreatorPrincipal, tenant_guid: TenantGuidQuery) -> TenantScope:
    return tenant_scope(principal, tenant_guid)


async def _viewer_scope(principal: ViewerPrincipal, tenant_guid: TenantGuidQuery) -> TenantScope:
    return tenant_scope(principal, tenant_guid)


async def _admin_scope(principal: AdminPrincipal, tenant_guid: TenantGuidQuery) -> TenantScope:
    return tenant_scope(principal, tenant_guid)


async def require_json_body(request: Request) -> None:
    """Reject a request body in another content type than JSON with 415."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type and request.headers.get("content-length", "0") == "0":
        return  # no body at all: the missing body is reported as a 400
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"The body must be application/json; got '{content_type or 'no content type'}'."
        )


def reject_unstorable(value: str | None, name: str) -> None:
    """Raise 400 for text with a NUL character or a lone surrogate, which cannot be stored."""
    found = unstorable_character(value)
    if found:
        raise InvalidRequestError(f"{name} contains {found}; remove it.")


# The largest value a 64-bit signed integer column holds.
MAX_INT64 = 2**63 - 1

CreatorScope = Annotated[TenantScope, Depends(_creator_scope)]
ViewerScope = Annotated[TenantScope, Depends(_viewer_scope)]
AdminScope = Annotated[TenantScope, Depends(_admin_scope)]

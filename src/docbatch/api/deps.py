"""Authentication and authorization dependencies, declared once per role.

Order of checks: a missing or invalid token is 401; a token without the action's role is 403; a
missing or malformed `tenantGuid` is 400; a tenant the token does not list is 403, before any
lookup.

Every dependency here is a coroutine function, because FastAPI runs a plain function dependency in
its thread pool, which costs a thread hand-off per request. Each role has one dependency that
reads the `Authorization` header and `tenantGuid` from the request itself. FastAPI's resolution of
a security scheme and a query parameter in sub-dependencies took about 11 % of the instructions of
a GetBatch or a close (`python -m bench instructions`). It would also report a missing
`tenantGuid` (400) before a missing token (401), because it validates a dependency's parameters
before calling it. FastAPI does not see the header and the parameter, so `document_scopes` adds
them to the OpenAPI document.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.routing import BaseRoute

from docbatch.api.state import AppState, app_state
from docbatch.auth.principal import Principal, Role, TenantScope, grant_tenant
from docbatch.core.errors import (
    AuthenticationError,
    ForbiddenError,
    InvalidRequestError,
    UnsupportedMediaTypeError,
)
from docbatch.core.text import unstorable_character

# The scheme as the OpenAPI document names and describes it; requests never call it.
_bearer = HTTPBearer(auto_error=False, description="An access token from /core/connect/token.")
BEARER_SCHEME_NAME = _bearer.scheme_name
TENANT_GUID_DESCRIPTION = "The tenant to act in."


async def _app_state(request: Request) -> AppState:
    return app_state(request)


State = Annotated[AppState, Depends(_app_state)]


def _bearer_token(request: Request) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None without one."""
    authorization = request.headers.get("authorization")
    scheme, token = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and token) or scheme.lower() != "bearer":
        return None
    return token


async def _principal(request: Request, role: Role) -> Principal:
    token = _bearer_token(request)
    if token is None:
        raise AuthenticationError(
            "A bearer token is required: send 'Authorization: Bearer <token>' with a token from "
            "/core/connect/token.",
            token_sent=False,
        )
    principal = await app_state(request).verifier.verify(token)
    structlog.contextvars.bind_contextvars(subject=principal.subject)
    if role.value not in principal.roles:
        raise ForbiddenError(f"This action requires the {role.value} role, which the token lacks.")
    return principal


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


# The role of each scope dependency, for `document_scopes`.
_scope_roles: dict[Callable[..., Any], Role] = {}


def _scope_of(role: Role) -> Callable[[Request], Awaitable[TenantScope]]:
    async def scope(request: Request) -> TenantScope:
        principal = await _principal(request, role)
        tenant_guid = request.query_params.get("tenantGuid")
        if tenant_guid is None:
            raise InvalidRequestError("tenantGuid is required; add it to the request.")
        return tenant_scope(principal, tenant_guid)

    _scope_roles[scope] = role
    return scope


def document_scopes(schema: dict[str, Any], routes: Sequence[BaseRoute]) -> None:
    """Add the bearer scheme and the `tenantGuid` parameter to the operations of `schema` whose
    route depends on a role's scope."""
    secured = False
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        if not any(dependency.call in _scope_roles for dependency in route.dependant.dependencies):
            continue
        secured = True
        for method in route.methods or ():
            operation = schema["paths"][route.path_format][method.lower()]
            operation.setdefault("parameters", []).append(
                {
                    "description": TENANT_GUID_DESCRIPTION,
                    "in": "query",
                    "name": "tenantGuid",
                    "required": True,
                    "schema": {
                        "description": TENANT_GUID_DESCRIPTION,
                        "title": "Tenantguid",
                        "type": "string",
                    },
                }
            )
            operation["security"] = [{BEARER_SCHEME_NAME: []}]
    if secured:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME_NAME] = _bearer.model.model_dump(
            mode="json", by_alias=True, exclude_none=True
        )


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

CreatorScope = Annotated[TenantScope, Depends(_scope_of(Role.BATCH_CREATOR))]
ViewerScope = Annotated[TenantScope, Depends(_scope_of(Role.BATCH_VIEWER))]
AdminScope = Annotated[TenantScope, Depends(_scope_of(Role.BATCH_ADMIN))]

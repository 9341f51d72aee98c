"""The verified caller and the tenant scope that authorization grants."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass


class Role(enum.StrEnum):
    BATCH_CREATOR = "BatchCreator"
    BATCH_VIEWER = "BatchViewer"
    BATCH_ADMIN = "BatchAdmin"


@dataclass(frozen=True, slots=True)
class Principal:
    """The verified claims of a bearer token."""

    subject: str
    roles: frozenset[str]
    tenants: frozenset[uuid.UUID]


class TenantScope:
    """A tenant GUID the caller was proven to have access to.

    Store functions that touch tenant data take this type instead of a bare UUID, so a query
    cannot be written with a tenant that did not pass the authorization check. Only
    `grant_tenant` creates instances.
    """

    __slots__ = ("guid",)

    def __init__(self, guid: uuid.UUID, *, _granted: bool = False) -> None:
        if not _granted:
            raise TypeError("TenantScope is created by docbatch.auth.principal.grant_tenant")
        self.guid = guid

    def __repr__(self) -> str:
        return f"TenantScope({self.guid})"


def grant_tenant(principal: Principal, tenant_guid: uuid.UUID) -> TenantScope | None:
    """Return the scope for `tenant_guid` when the principal may act on it, otherwise None."""
    if tenant_guid not in principal.tenants:
        return None
    return TenantScope(tenant_guid, _granted=True)

"""Queries on tenants and registered API clients (operator tooling and the token endpoint)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.core.timefmt import utcnow
from docbatch.store.models import ApiClient, Tenant


async def insert_tenant(session: AsyncSession, guid: uuid.UUID, name: str) -> Tenant:
    tenant = Tenant(guid=guid, name=name, created_at=utcnow())
    session.add(tenant)
    await session.flush()
    return tenant


async def get_tenant(session: AsyncSession, guid: uuid.UUID) -> Tenant | None:
    return await session.get(Tenant, guid)


async def list_tenants(session: AsyncSession, guids: list[uuid.UUID]) -> list[Tenant]:
    result = await session.scalars(select(Tenant).where(Tenant.guid.in_(guids)))
    return list(result)


async def insert_client(session: AsyncSession, client: ApiClient) -> None:
    session.add(client)
    await session.flush()


async def get_client(session: AsyncSession, client_id: str) -> ApiClient | None:
    return await session.get(ApiClient, client_id)

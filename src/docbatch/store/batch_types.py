"""Queries on batch types. Rows are immutable once inserted, so reads by id are cached."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.core.timefmt import utcnow
from docbatch.store.database import Executor
from docbatch.store.models import BatchType

_CACHE_SIZE = 1024
_by_id: OrderedDict[int, BatchType] = OrderedDict()


async def insert_batch_type(
    session: AsyncSession, scope: TenantScope, name: str, configuration: dict[str, Any]
) -> BatchType:
    batch_type = BatchType(
        guid=uuid.uuid4(),
        tenant_guid=scope.guid,
        name=name,
        configuration=configuration,
        created_at=utcnow(),
    )
    session.add(batch_type)
    await session.flush()
    return batch_type


async def get_batch_type(
    session: AsyncSession, scope: TenantScope, guid: uuid.UUID
) -> BatchType | None:
    return await session.scalar(
        select(BatchType).where(BatchType.guid == guid, BatchType.tenant_guid == scope.guid)
    )


async def list_batch_types(session: AsyncSession, scope: TenantScope) -> list[BatchType]:
    result = await session.scalars(
        select(BatchType).where(BatchType.tenant_guid == scope.guid).order_by(BatchType.id)
    )
    return list(result)


def clear_cache() -> None:
    """Forget cached batch types; tests call it after emptying the database."""
    _by_id.clear()


async def get_batch_type_by_id(executor: Executor, batch_type_id: int) -> BatchType:
    """Return a batch type by primary key for a batch that is already known to the caller."""
    cached = _by_id.get(batch_type_id)
    if cached is not None:
        _by_id.move_to_end(batch_type_id)
        return cached
    if isinstance(executor, AsyncConnection):
        # A plain connection loads no ORM objects, so a session borrows it for this one load.
        async with AsyncSession(bind=executor) as session:
            batch_type = await session.get_one(BatchType, batch_type_id)
            session.expunge(batch_type)
    else:
        batch_type = await executor.get_one(BatchType, batch_type_id)
        executor.expunge(batch_type)
    _by_id[batch_type_id] = batch_type
    if len(_by_id) > _CACHE_SIZE:
        _by_id.popitem(last=False)
    return batch_type

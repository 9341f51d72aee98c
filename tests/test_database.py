"""The transaction scopes of `Database`, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, insert, select, text

from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.store import batch_types as batch_type_store
from docbatch.store import tenants as tenant_store
from docbatch.store.database import Database
from docbatch.store.models import BatchType, Tenant
from tests.support import Api


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    opened = Database(settings)
    try:
        yield opened
    finally:
        await opened.dispose()


async def _tenant_count(database: Database) -> int:
    async with database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Tenant)) or 0)


async def test_reads_see_commits_per_backend(database: Database, backend: str) -> None:
    """PostgreSQL reads each statement in autocommit, so a commit made between two statements
    is visible to the second. SQLite reads in a DEFERRED transaction, which keeps its snapshot
    and leaves the write lock free for the writer."""
    before = await _tenant_count(database)
    async with database.single_statements() as connection:
        counted = select(func.count()).select_from(Tenant)
        first = (await connection.execute(counted)).scalar_one()
        async with database.transaction() as session:
            await tenant_store.insert_tenant(session, uuid.uuid4(), "committed meanwhile")
        second = (await connection.execute(counted)).scalar_one()
    assert first == before
    assert second == (before + 1 if backend == "postgresql" else before)
    assert await _tenant_count(database) == before + 1


async def test_failed_write_scope_per_backend(database: Database, backend: str) -> None:
    """On SQLite the scope is one transaction, so an error undoes every statement in it. On
    PostgreSQL each statement has already committed."""
    before = await _tenant_count(database)

    async def insert_then_fail() -> None:
        async with database.single_statements(write=True) as connection:
            row = {"guid": uuid.uuid4(), "name": "first", "created_at": utcnow()}
            await connection.execute(insert(Tenant).values(row))
            raise RuntimeError("failure after the first statement")

    with pytest.raises(RuntimeError, match="after the first statement"):
        await insert_then_fail()
    assert await _tenant_count(database) == (before + 1 if backend == "postgresql" else before)


@pytest.mark.postgresql
async def test_postgresql_reads_autocommit(database: Database) -> None:
    # In autocommit every statement is a transaction of its own, so each gets a new id.
    async with database.single_statements() as connection:
        first = (await connection.execute(text("SELECT txid_current()"))).scalar_one()
        second = (await connection.execute(text("SELECT txid_current()"))).scalar_one()
    assert second > first
    async with database.read() as session:
        first = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        second = (await session.execute(text("SELECT txid_current()"))).scalar_one()
    assert second == first


async def test_batch_type_loads_through_connection(database: Database, api: Api) -> None:
    guid = uuid.UUID(await api.insert_batch_type("orders"))
    async with database.read() as session:
        batch_type_id = await session.scalar(select(BatchType.id).where(BatchType.guid == guid))
    assert batch_type_id is not None
    batch_type_store.clear_cache()
    async with database.single_statements() as connection:
        loaded = await batch_type_store.get_batch_type_by_id(connection, batch_type_id)
        # The second read is served from the cache.
        assert await batch_type_store.get_batch_type_by_id(connection, batch_type_id) is loaded
    assert (loaded.guid, loaded.name) == (guid, "orders")

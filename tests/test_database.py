"""The transaction scopes of `Database`, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import BigInteger, String, bindparam, func, insert, literal, select, text

from docbatch.app import create_app
from docbatch.core.errors import InfrastructureError
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.store import batch_types as batch_type_store
from docbatch.store import tenants as tenant_store
from docbatch.store.database import Database, DriverStatement, fetch_row
from docbatch.store.models import Batch, BatchType, Tenant
from tests.support import Api, TokenFactory


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


@pytest.mark.postgresql
async def test_single_writes_keep_their_connections(settings: Settings) -> None:
    """Concurrent single writes share `db_pool_size` connections and open no others, so a load
    that rises and falls does not close server connections and open new ones. The main pool
    would open overflow connections here and close them when they come back."""
    database = Database(settings.model_copy(update={"db_pool_size": 2, "db_max_overflow": 10}))

    async def backend_pid() -> int:
        async with database.single_statements(write=True) as connection:
            result = await connection.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.05)"))
            return int(result.scalar_one())

    try:
        first_round = await asyncio.gather(*(backend_pid() for _ in range(12)))
        second_round = await asyncio.gather(*(backend_pid() for _ in range(12)))
    finally:
        await database.dispose()
    assert len(set(first_round)) <= 2
    assert set(second_round) <= set(first_round)


_BACKEND_PID = DriverStatement.compile(select(func.pg_backend_pid()))


@pytest.mark.postgresql
async def test_driver_statement_fills_literals(database: Database) -> None:
    statement = DriverStatement.compile(
        select(literal("fixed"), bindparam("given", type_=String()))
    )
    async with database.single_statements(write=True) as connection:
        row = await fetch_row(connection, statement, {"given": "passed"})
    assert row is not None
    assert tuple(row) == ("fixed", "passed")
    with pytest.raises(KeyError, match="given"):
        statement.arguments({})


@pytest.mark.postgresql
async def test_driver_statement_error_keeps_connection(database: Database) -> None:
    """An error of the statement itself leaves the connection usable, so it stays pooled."""
    dividing = DriverStatement.compile(
        select(literal(1) / bindparam("divisor", type_=BigInteger()))
    )
    async with database.single_statements(write=True) as connection:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await fetch_row(connection, dividing, {"divisor": 0})
        assert not connection.invalidated
        row = await fetch_row(connection, dividing, {"divisor": 1})
    assert row is not None
    assert row[0] == 1


@pytest.mark.postgresql
async def test_lost_driver_connection_is_replaced(database: Database) -> None:
    async with database.single_statements(write=True) as connection:
        first = await fetch_row(connection, _BACKEND_PID, {})
        assert first is not None
        async with database.transaction() as session:
            await session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first[0]})
        with pytest.raises(InfrastructureError, match="connection"):
            await fetch_row(connection, _BACKEND_PID, {})
        assert connection.invalidated
    async with database.single_statements(write=True) as connection:
        second = await fetch_row(connection, _BACKEND_PID, {})
    assert second is not None
    assert second[0] != first[0]


@pytest.mark.postgresql
async def test_cancelled_driver_statement_discards_connection(database: Database) -> None:
    """A statement cancelled by its caller may still run on the server, so its connection is
    not returned to the pool for the next request."""
    sleeping = DriverStatement.compile(select(func.pg_sleep(bindparam("seconds"))))
    async with database.single_statements(write=True) as connection:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(fetch_row(connection, sleeping, {"seconds": 5}), timeout=0.2)
        assert connection.invalidated
    async with database.single_statements(write=True) as connection:
        row = await fetch_row(connection, _BACKEND_PID, {})
    assert row is not None


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


@pytest.mark.postgresql
async def test_locked_close_leaves_reads_free(
    settings: Settings, tokens: TokenFactory, tenant: uuid.UUID
) -> None:
    """A close that waits for the row lock of one batch must not hold up GetBatch of another.

    With DOCBATCH_DB_POOL_SIZE=1 the read pool has one connection, so a close waiting on that
    connection would block the read. The read is given 5 s, because the pool's own checkout
    timeout (30 s) would end it with a 503 only after that.
    """
    small_pool = settings.model_copy(update={"db_pool_size": 1})
    application = create_app(small_pool)
    lock_holder = Database(small_pool)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            api = Api(http, tenant, tokens.for_tenant(tenant))
            batch_type = await api.insert_batch_type()
            locked_batch = await api.create_batch(batch_type)
            other_batch = await api.create_batch(batch_type)
            read = None
            try:
                async with lock_holder.transaction() as session:
                    await session.execute(
                        select(Batch.id)
                        .where(Batch.guid == uuid.UUID(locked_batch))
                        .with_for_update()
                    )
                    close = asyncio.create_task(api.complete(locked_batch))
                    await asyncio.sleep(0.5)
                    get_other = api.call("GET", "GetBatch", {"batchGuid": other_batch})
                    with contextlib.suppress(TimeoutError):
                        read = await asyncio.wait_for(get_other, timeout=5)
                closed = await close
            finally:
                await lock_holder.dispose()

    assert read is not None, "GetBatch waited over 5 s behind a close of another batch"
    assert read.status_code == 200, read.text
    assert closed.status_code == 200, closed.text
    assert closed.json()["result"]["statusId"] == "Queued"

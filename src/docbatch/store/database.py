"""Engine and transaction scopes. A request or a job owns its transaction; services never commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from docbatch.core.errors import InfrastructureError, is_unavailable_sqlstate
from docbatch.core.settings import Settings

# The execution option that picks how a SQLite transaction begins. Writers take the write lock at
# BEGIN (IMMEDIATE), so two writers never both read a row and then fail to upgrade their lock.
# Readers begin DEFERRED and see a consistent WAL snapshot without blocking writers.
_SQLITE_BEGIN = "docbatch_sqlite_begin"

# The argument of a store function that runs only Core statements: the session of a transaction,
# or the connection that `Database.single_statements` yields.
Executor = AsyncSession | AsyncConnection


def dialect_name(executor: Executor) -> str:
    """Return the name of the database dialect that `executor` runs on, such as "postgresql"."""
    if isinstance(executor, AsyncConnection):
        return executor.dialect.name
    return executor.get_bind().dialect.name


class Database:
    """The engine and the session factory for one database URL."""

    def __init__(self, settings: Settings) -> None:
        self.url = make_url(settings.database_url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # No pre-ping: it costs a round trip on every checkout. A connection that died with its
        # server fails its request with a 503 and is discarded, and the next one reconnects.
        engine_options: dict[str, Any] = {"pool_recycle": 1800}
        if self.is_sqlite:
            _ensure_sqlite_folder(self.url.database)
        else:
            engine_options.update(
                pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_options)
        if self.is_sqlite:
            _configure_sqlite(self.engine, settings.sqlite_busy_timeout_ms)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        # Single statements on PostgreSQL use two pools opened in autocommit mode, one for reads
        # and one for writes, so a write waiting for a row lock holds no connection a read needs.
        # Switching main-pool connections to autocommit per checkout cost about 40 % more
        # instructions per read (callgrind). Neither pool has overflow, because an overflow
        # connection is closed when it returns to a full pool, so a varying load would keep
        # opening new server connections. Each pool opens at most `db_pool_size` connections,
        # and only in processes that run such statements.
        self._autocommit_reads: AsyncEngine | None = None
        self._autocommit_writes: AsyncEngine | None = None
        if not self.is_sqlite:
            self._autocommit_reads = _autocommit_engine(self.url, settings.db_pool_size)
            self._autocommit_writes = _autocommit_engine(self.url, settings.db_pool_size)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """Open a read-write transaction that commits on success and rolls back on any error."""
        async with self._sessions() as session, session.begin():
            if self.is_sqlite:
                await session.connection(execution_options={_SQLITE_BEGIN: "IMMEDIATE"})
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """Open a read-only transaction; on SQLite it does not take the write lock."""
        async with self._sessions() as session, session.begin():
            if self.is_sqlite:
                await session.connection(execution_options={_SQLITE_BEGIN: "DEFERRED"})
            yield session

    @asynccontextmanager
    async def single_statements(self, *, write: bool = False) -> AsyncIterator[AsyncConnection]:
        """Open a connection for statements that are each complete on their own, such as one
        SELECT by key, or one UPDATE that inserts a job in a data-modifying CTE.

        On PostgreSQL every statement commits on its own (autocommit), which saves the BEGIN and
        COMMIT round trips of `transaction` and `read`. So statements that must agree or commit
        together belong in `transaction` or `read`. Reads and writes (`write`) take connections
        of two separate pools, so a write that waits for a row lock does not hold a connection
        that reads need. On SQLite the statements run in one transaction that
        commits at the end: BEGIN IMMEDIATE with `write`, so the writer holds the lock from the
        start, otherwise DEFERRED. The connection runs Core statements only, because no ORM
        session is open.
        """
        if self._autocommit_reads is None or self._autocommit_writes is None:
            async with self.engine.connect() as connection:
                mode = "IMMEDIATE" if write else "DEFERRED"
                await connection.execution_options(**{_SQLITE_BEGIN: mode})
                async with connection.begin():
                    yield connection
            return
        engine = self._autocommit_writes if write else self._autocommit_reads
        async with engine.connect() as connection:
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()
        for engine in (self._autocommit_reads, self._autocommit_writes):
            if engine is not None:
                await engine.dispose()


_ASYNCPG_DIALECT = make_url("postgresql+asyncpg://").get_dialect()()


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A Core statement compiled once into PostgreSQL's SQL for the asyncpg driver.

    `fetch_row` runs it on the driver connection under a pooled connection, which skips
    SQLAlchemy's work per execution: the compiled cache lookup, the execution context, the switch
    into a greenlet and the result wrapping. asyncpg still prepares the statement once per
    connection. No column type processes the parameters, so each must be a value that asyncpg
    encodes as it is: str, int, bool, UUID, or a datetime with its time zone set.
    """

    sql: str
    parameter_names: tuple[str, ...]
    # The values of the statement's literal parameters, such as the statuses it compares with.
    literals: Mapping[str, Any]

    @classmethod
    def compile(cls, statement: Any) -> DriverStatement:
        compiled = statement.compile(dialect=_ASYNCPG_DIALECT)
        literals = {
            name: parameter.value
            for parameter, name in compiled.bind_names.items()
            if not parameter.required
        }
        return cls(compiled.string, tuple(compiled.positiontup or ()), literals)

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """Return the positional arguments for `parameters`; a missing one raises KeyError."""
        return [
            parameters[name] if name in parameters else self.literals[name]
            for name in self.parameter_names
        ]


async def fetch_row(
    connection: AsyncConnection, statement: DriverStatement, parameters: Mapping[str, Any]
) -> Sequence[Any] | None:
    """Run `statement` on the asyncpg connection under `connection` and return its first row.

    `connection` must be in autocommit mode (`Database.single_statements` on PostgreSQL), because
    SQLAlchemy does not see the statement and so would not commit it. A failure that leaves the
    connection unusable (server gone, connection lost, cancelled mid-statement) invalidates it,
    so the pool opens a new one. A lost or unavailable server raises `InfrastructureError`, which
    the API returns as a 503. Other PostgreSQL errors propagate unchanged.
    """
    arguments = statement.arguments(parameters)
    driver = (await connection.get_raw_connection()).driver_connection
    if driver is None:
        raise InfrastructureError("the database connection is closed")
    try:
        row: Sequence[Any] | None = await driver.fetchrow(statement.sql, *arguments)
    except asyncio.CancelledError:
        # asyncpg may still be waiting for the server to end the statement, so start afresh.
        await connection.invalidate()
        raise
    except (
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
        OSError,
    ) as error:
        if not _connection_lost(driver, error):
            raise
        await connection.invalidate(error)
        raise InfrastructureError(f"the database connection failed: {error}") from error
    return row


def _connection_lost(driver: Any, error: Exception) -> bool:
    """Tell whether `error` leaves the driver connection unusable or the server unavailable.

    As SQLAlchemy's asyncpg dialect does, a connection that asyncpg has closed counts as lost.
    So do socket errors and asyncpg's internal state errors, which a connection cut in the middle
    of a statement can raise.
    """
    if driver.is_closed() or isinstance(error, OSError | asyncpg.InternalClientError):
        return True
    return isinstance(error, asyncpg.PostgresError) and is_unavailable_sqlstate(error.sqlstate)


def _autocommit_engine(url: URL, pool_size: int) -> AsyncEngine:
    """Create an engine whose connections run in autocommit mode, with a fixed-size pool."""
    return create_async_engine(
        url, isolation_level="AUTOCOMMIT", pool_recycle=1800, pool_size=pool_size, max_overflow=0
    )


def _ensure_sqlite_folder(database: str | None) -> None:
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    """Take over BEGIN from the driver and set the pragmas every connection needs."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Autocommit at the driver level, so that the "begin" listener below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")

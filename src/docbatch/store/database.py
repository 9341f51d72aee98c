"""Engine and transaction scopes. A request or a job owns its transaction; services never commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

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

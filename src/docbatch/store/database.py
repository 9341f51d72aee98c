"""Engine and transaction scopes. A request or a job owns its transaction; services never commit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
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
        # Sessions on the same pool whose connections run each statement in autocommit mode.
        self._autocommit_sessions = async_sessionmaker(
            self.engine.execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
            autoflush=False,
        )

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
    async def read_without_transaction(self) -> AsyncIterator[AsyncSession]:
        """Open a session for reads that each stand alone, such as one SELECT by key.

        On PostgreSQL every statement runs in autocommit mode, which saves the BEGIN and COMMIT
        round trips of `read`. At PostgreSQL's default READ COMMITTED level each statement takes
        its own snapshot inside a transaction too, so a caller that needs several statements to
        agree must still use `read`. On SQLite this is `read`, so the read begins DEFERRED.
        """
        if self.is_sqlite:
            async with self.read() as session:
                yield session
            return
        async with self._autocommit_sessions() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


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

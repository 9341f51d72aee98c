"""Alembic environment: runs on a connection handed over by DocBatch, or opens its own."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from docbatch.core.settings import Settings
from docbatch.store.database import Database
from docbatch.store.models import Base

target_metadata = Base.metadata


def run_on_connection(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    database = Database(Settings())
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(run_on_connection)
    finally:
        await database.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline SQL generation is not supported; run `docbatch db upgrade`.")

handed_over = context.config.attributes.get("connection")
if handed_over is not None:
    run_on_connection(handed_over)
else:
    asyncio.run(run_with_own_engine())

"""The Alembic history and the SQLAlchemy models describe the same schema on both backends."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from docbatch.store.migrate import alembic_config
from docbatch.store.models import Base


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _inspect(database_url: str) -> tuple[list[Any], str | None]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_schema_differences)
            revision = await connection.run_sync(_current_revision)
    finally:
        await engine.dispose()
    return differences, revision


def _head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def test_models_match_migrations(database_url: str) -> None:
    differences, revision = await _inspect(database_url)

    assert differences == []
    assert revision == _head_revision()


@pytest.fixture
async def fresh_database_url(backend: str, database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a database that exists but has no tables yet."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh' / 'docbatch.db'}"
        return
    url = make_url(database_url)
    fresh = url.set(database=f"{url.database}_fresh_migrations")
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(
                text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)')
            )
            await connection.execute(text(f'CREATE DATABASE "{fresh.database}"'))
        yield fresh.render_as_string(hide_password=False)
        async with admin.connect() as connection:
            await connection.execute(
                text(f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)')
            )
    finally:
        await admin.dispose()


async def _run_db_upgrade(database_url: str, working_folder: Path) -> tuple[int, str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("DOCBATCH_")
    }
    environment["DOCBATCH_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "docbatch",
        "db",
        "upgrade",
        cwd=working_folder,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def test_cli_upgrade_runs_twice(fresh_database_url: str, tmp_path: Path) -> None:
    first_code, first_output = await _run_db_upgrade(fresh_database_url, tmp_path)
    second_code, second_output = await _run_db_upgrade(fresh_database_url, tmp_path)

    assert first_code == 0, first_output
    assert second_code == 0, second_output
    differences, revision = await _inspect(fresh_database_url)
    assert differences == []
    assert revision == _head_revision()

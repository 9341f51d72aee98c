"""Shared fixtures: each test runs against a real SQLite file and a real PostgreSQL database,
both built by the Alembic migrations, through the ASGI app over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from docbatch.app import create_app
from docbatch.auth.keys import load_or_create_signing_key
from docbatch.core.settings import Settings
from docbatch.store import batch_types as batch_type_store
from docbatch.store import tenants as tenant_store
from docbatch.store.database import Database
from docbatch.store.migrate import upgrade_database
from docbatch.store.models import Base
from tests.support import Api, TokenFactory

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/docbatch_test"
POSTGRES_URL = os.environ.get("DOCBATCH_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
REQUIRE_POSTGRES = os.environ.get("DOCBATCH_TEST_REQUIRE_POSTGRES") == "1"


async def _prepare_postgres() -> str | None:
    """Recreate the test database and migrate it; return why it is unusable, or None."""
    url = make_url(POSTGRES_URL)
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            await connection.execute(text(f'CREATE DATABASE "{url.database}"'))
    except Exception as error:  # any failure to connect or create means "not usable"
        return f"PostgreSQL at {url.render_as_string(hide_password=True)} is not usable: {error}"
    finally:
        await admin.dispose()
    database = Database(Settings(database_url=POSTGRES_URL))
    try:
        await upgrade_database(database)
    finally:
        await database.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_ready() -> str | None:
    problem = asyncio.run(_prepare_postgres())
    if problem and REQUIRE_POSTGRES:
        pytest.fail(problem + " (DOCBATCH_TEST_REQUIRE_POSTGRES=1)", pytrace=False)
    return problem


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; every test works on a copy of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    database = Database(Settings(database_url=f"sqlite+aiosqlite:///{path}"))

    async def migrate() -> None:
        try:
            await upgrade_database(database)
        finally:
            await database.dispose()

    asyncio.run(migrate())
    return path


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "signing-key.pem"
    load_or_create_signing_key(path, create=True)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        problem = request.getfixturevalue("postgres_ready")
        if problem:
            pytest.skip(problem)
    elif request.node.get_closest_marker("postgresql"):
        pytest.skip("runs only against PostgreSQL")
    return str(request.param)


async def _empty_postgres() -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as connection:
            names = ", ".join(table.name for table in Base.metadata.sorted_tables)
            await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
async def database_url(backend: str, tmp_path: Path, sqlite_template: Path) -> str:
    batch_type_store.clear_cache()
    if backend == "sqlite":
        path = tmp_path / "docbatch.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    await _empty_postgres()
    return POSTGRES_URL


@pytest.fixture
def settings(database_url: str, tmp_path: Path, signing_key_file: Path) -> Settings:
    return Settings(
        database_url=database_url,
        storage_url=f"file://{tmp_path}/blobs",
        signing_key_file=signing_key_file,
        worker_poll_seconds=0.05,
        job_lease_seconds=5,
        job_heartbeat_seconds=1,
        job_backoff_base_seconds=0.1,
        chunk_size=50,
        records_per_transaction=20,
        log_format="console",
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[object]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: object) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app)  # type: ignore[arg-type]
    async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
        yield http


@pytest.fixture
def tokens(signing_key_file: Path, settings: Settings) -> TokenFactory:
    return TokenFactory(load_or_create_signing_key(signing_key_file, create=False), settings)


@pytest.fixture
async def tenant(settings: Settings) -> uuid.UUID:
    return await _add_tenant(settings, "tenant-a")


@pytest.fixture
async def other_tenant(settings: Settings) -> uuid.UUID:
    return await _add_tenant(settings, "tenant-b")


async def _add_tenant(settings: Settings, name: str) -> uuid.UUID:
    database = Database(settings)
    guid = uuid.uuid4()
    try:
        async with database.transaction() as session:
            await tenant_store.insert_tenant(session, guid, name)
    finally:
        await database.dispose()
    return guid


@pytest.fixture
def api(client: AsyncClient, tokens: TokenFactory, tenant: uuid.UUID) -> Api:
    """A client of one tenant holding every role."""
    return Api(client, tenant, tokens.for_tenant(tenant))


@pytest.fixture
def examples_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "examples"

"""Apply the Alembic migration history to the configured database."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

from docbatch.store.database import Database


def _migrations_folder() -> Path:
    # A wheel carries the history inside the package; a source checkout has it at the top.
    packaged = Path(str(resources.files("docbatch"))) / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    return Path(__file__).resolve().parents[3] / "migrations"


def alembic_config() -> Config:
    folder = _migrations_folder()
    config = Config()
    config.set_main_option("script_location", str(folder))
    return config


def _upgrade_on(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade_database(database: Database) -> None:
    """Bring the database schema to the newest revision; a current schema is left as it is."""
    async with database.engine.begin() as connection:
        await connection.run_sync(_upgrade_on)

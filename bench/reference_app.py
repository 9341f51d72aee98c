"""The reference for GetBatch: a raw ASGI app that serves `GET /batch?batchGuid=` with one
unique-key SELECT on batches, through the same stack the service uses (SQLAlchemy async engine,
asyncpg, the same pool options), run by uvicorn with the service's options.

It has no authentication, no routing framework and no response model, so the throughput ratio
of GetBatch against it is the share the service keeps after its own per-request work.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from typing import Any
from urllib.parse import parse_qs

import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from docbatch.core.settings import Settings

_settings = Settings()
# The options of the main engine of docbatch.store.database.Database on PostgreSQL. So each read
# runs in a transaction, while GetBatch reads in autocommit mode (docs/benchmarks.md). Every
# uvicorn worker process imports this module and so has its own engine.
engine = create_async_engine(
    _settings.database_url,
    pool_recycle=1800,
    pool_size=_settings.db_pool_size,
    max_overflow=_settings.db_max_overflow,
)
SELECT_BATCH = text("SELECT * FROM batches WHERE guid = :guid")


async def _respond(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await engine.dispose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    try:
        guid = uuid.UUID(query["batchGuid"][0])
    except (KeyError, ValueError):
        await _respond(send, 400, b'{"error": "batchGuid is missing or not a GUID"}')
        return
    async with engine.connect() as connection:
        row = (await connection.execute(SELECT_BATCH, {"guid": guid})).mappings().first()
    if row is None:
        await _respond(send, 404, b'{"error": "batch not found"}')
        return
    await _respond(send, 200, json.dumps(dict(row), default=str).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the GetBatch reference app.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    parser.add_argument(
        "--workers", type=int, default=1, help="number of server processes (default: 1)"
    )
    arguments = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The options `docbatch serve` passes to uvicorn.run. Several workers need the app as an
    # import string, as `docbatch serve --workers` passes it.
    uvicorn.run(
        "bench.reference_app:app" if arguments.workers > 1 else app,
        workers=arguments.workers,
        host="127.0.0.1",
        port=arguments.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=15,
    )


if __name__ == "__main__":
    main()

"""Send requests to the service or the reference app in process, through ASGI calls.

There is no server and no socket, so `valgrind --tool=callgrind` around this program counts the
instructions of the request path and the database driver alone. `python -m bench instructions`
runs it; the settings come from the DOCBATCH_* environment and the token from
DOCBATCH_BENCH_TOKEN.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.postgres import batch_guid

WARM_UP_REQUESTS = 64

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class RequestFailedError(Exception):
    """A request returned a status other than 200."""


async def _call(app: ASGIApp, method: str, path: str, query: str, token: str) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)
    status = messages[0]["status"]
    if status != 200:
        body = b"".join(message.get("body", b"") for message in messages[1:])
        raise RequestFailedError(f"{method} {path}?{query} returned {status}: {body[:500]!r}")


async def _drive(arguments: argparse.Namespace) -> None:
    token = os.environ.get("DOCBATCH_BENCH_TOKEN", "")
    if arguments.target == "reference":
        from bench import reference_app

        app: ASGIApp = reference_app.app
        method, path = "GET", "/batch"
    else:
        from docbatch.app import create_app
        from docbatch.core.logging import configure_logging
        from docbatch.core.settings import Settings

        settings = Settings()
        configure_logging(settings)
        service = create_app(settings)
        app = service
        if arguments.action == "get-batch":
            method, path = "GET", "/api/DocBatch/GetBatch"
        else:
            method, path = "PUT", "/api/DocBatch/MarkBatchUploadComplete"
    tenant = f"tenantGuid={arguments.tenant}&" if arguments.target == "service" else ""
    total = WARM_UP_REQUESTS + arguments.requests
    # A close changes its batch, so each close takes the next batch id; reads cycle over them.
    if arguments.action == "mark-complete":
        ids = [arguments.first_id + n for n in range(total)]
    else:
        ids = [arguments.first_id + n % arguments.batches for n in range(total)]
    queries = [f"{tenant}batchGuid={batch_guid(batch_id)}" for batch_id in ids]

    async def send_all(part: list[str]) -> None:
        for query in part:
            await _call(app, method, path, query, token)

    async def run() -> None:
        for start, end in ((0, WARM_UP_REQUESTS), (WARM_UP_REQUESTS, total)):
            parts = [
                queries[start:end][n :: arguments.concurrency] for n in range(arguments.concurrency)
            ]
            await asyncio.gather(*(send_all(part) for part in parts))

    if arguments.target == "reference":
        try:
            await run()
        finally:
            await reference_app.engine.dispose()
        return
    async with service.router.lifespan_context(service):
        await run()


def main() -> None:
    parser = argparse.ArgumentParser(description="Send requests to DocBatch in process.")
    parser.add_argument("--target", choices=("service", "reference"), required=True)
    parser.add_argument("--action", choices=("get-batch", "mark-complete"), required=True)
    parser.add_argument("--requests", type=int, required=True, help="requests after the warm-up")
    parser.add_argument("--first-id", type=int, required=True, help="first seeded batch id")
    parser.add_argument("--batches", type=int, default=1, help="seeded batches that reads use")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--tenant", required=True, help="tenant GUID of the seeded batches")
    arguments = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_drive(arguments))
    except RequestFailedError as error:
        print(f"bench: {error}", file=sys.stderr)
        raise SystemExit(1) from error


if __name__ == "__main__":
    main()

"""The `docbatch` command-line tool."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import structlog

from docbatch.auth.clients import UnknownTenantsError, register_client
from docbatch.auth.keys import load_or_create_signing_key
from docbatch.auth.principal import Role
from docbatch.auth.tokens import TokenIssuer
from docbatch.core.logging import configure_logging
from docbatch.core.settings import Settings, UnsafeSettingsError
from docbatch.core.timefmt import format_timestamp, utcnow
from docbatch.queue import jobs
from docbatch.storage.blobs import open_blob_store
from docbatch.store import tenants as tenant_store
from docbatch.store.database import Database
from docbatch.store.migrate import upgrade_database
from docbatch.store.models import JobStatus

logger = structlog.get_logger("docbatch.cli")


# The length of the columns that keep tenant and client names.
MAX_NAME_LENGTH = 200


class CommandError(Exception):
    """A command that cannot run; the message is printed and the exit status is 1."""


def _guid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{value}' is not a GUID") from None


def _role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(role.value for role in Role)
        raise argparse.ArgumentTypeError(f"'{value}' is not a role; use one of {names}") from None


async def _with_database(settings: Settings, action: str) -> Database:
    database = Database(settings)
    await upgrade_database(database)
    logger.debug("cli.database_ready", action=action)
    return database


def _check_signing_key(settings: Settings) -> None:
    if settings.uses_external_identity_provider:
        return
    path = settings.effective_signing_key_file()
    try:
        load_or_create_signing_key(path, create=settings.is_embedded)
    except (OSError, ValueError, TypeError) as error:
        raise CommandError(f"the signing key file {path} cannot be used: {error}") from error


def _serve(arguments: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from docbatch.app import create_app

    try:
        settings.check_safe_for_serving()
    except UnsafeSettingsError as error:
        raise CommandError(str(error)) from error
    _check_signing_key(settings)
    run_worker = not arguments.no_worker
    if arguments.workers < 1:
        raise CommandError("--workers must be at least 1")
    if arguments.workers > 1 and settings.is_sqlite:
        raise CommandError("the embedded SQLite default serves from one process; use --workers 1")
    if arguments.workers > 1 and run_worker:
        raise CommandError(
            "--workers above 1 needs --no-worker; run `docbatch worker` processes instead"
        )
    if settings.is_sqlite or arguments.migrate:
        asyncio.run(_upgrade(settings))
    options: dict[str, Any] = {
        "host": arguments.host,
        "port": arguments.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "timeout_graceful_shutdown": 15,
    }
    if arguments.workers > 1:
        # Each API process builds its own application from the same DOCBATCH_* environment.
        uvicorn.run(
            "docbatch.app:create_api_app", factory=True, workers=arguments.workers, **options
        )
    else:
        uvicorn.run(create_app(settings, run_worker=run_worker), **options)


async def _upgrade(settings: Settings) -> None:
    database = Database(settings)
    try:
        await upgrade_database(database)
    finally:
        await database.dispose()
    logger.info("database.upgraded", database=database.url.get_backend_name())


async def _run_worker(settings: Settings) -> None:
    from docbatch.worker.runner import Worker

    database = Database(settings)
    worker = Worker(settings, database, open_blob_store(settings.storage_url))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await worker.start()
    try:
        await stop.wait()
    finally:
        await worker.stop()
        await database.dispose()


def _check_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise CommandError(
            f"--name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are stored"
        )


async def _add_tenant(settings: Settings, name: str, guid: uuid.UUID | None) -> uuid.UUID:
    _check_name(name)
    database = await _with_database(settings, "tenant add")
    try:
        if len(name) > MAX_NAME_LENGTH:
            raise CommandError(
                f"--name is {len(name)} characters long; at most {MAX_NAME_LENGTH} fit"
            )
        tenant_guid = guid or uuid.uuid4()
        async with database.transaction() as session:
            if await tenant_store.get_tenant(session, tenant_guid) is not None:
                raise CommandError(f"tenant {tenant_guid} already exists")
            await tenant_store.insert_tenant(session, tenant_guid, name)
        return tenant_guid
    finally:
        await database.dispose()


async def _add_client(
    settings: Settings, name: str, tenants: list[uuid.UUID], roles: list[Role]
) -> tuple[str, str]:
    _check_name(name)
    database = await _with_database(settings, "client add")
    try:
        async with database.transaction() as session:
            client = await register_client(session, name, tenants, roles)
        return client.client_id, client.client_secret
    except UnknownTenantsError as error:
        raise CommandError(str(error)) from error
    finally:
        await database.dispose()


def _issue_token(
    settings: Settings, tenants: list[uuid.UUID], roles: list[Role], subject: str
) -> str:
    if settings.uses_external_identity_provider:
        raise CommandError(
            "tokens come from the external identity provider (DOCBATCH_OIDC_JWKS_URL is set)"
        )
    _check_signing_key(settings)
    key = load_or_create_signing_key(
        settings.effective_signing_key_file(), create=settings.is_embedded
    )
    issuer = TokenIssuer(
        key,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        ttl_seconds=settings.token_ttl_seconds,
        roles_claim=settings.roles_claim,
        tenants_claim=settings.tenants_claim,
    )
    return issuer.issue(
        subject, sorted({role.value for role in roles}), sorted({str(guid) for guid in tenants})
    )


async def _list_jobs(settings: Settings, status: str | None, limit: int) -> list[dict[str, object]]:
    database = await _with_database(settings, "job list")
    try:
        async with database.read() as session:
            rows = await jobs.list_jobs(session, JobStatus(status) if status else None, limit)
        return [
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "batchId": job.batch_id,
                "attempts": job.attempts,
                "maxAttempts": job.max_attempts,
                "runAfter": format_timestamp(job.run_after),
                "lastError": job.last_error,
            }
            for job in rows
        ]
    finally:
        await database.dispose()


async def _retry_job(settings: Settings, job_id: int) -> None:
    database = await _with_database(settings, "job retry")
    try:
        async with database.transaction() as session:
            if not await jobs.retry_failed(session, job_id, utcnow()):
                raise CommandError(
                    f"job {job_id} does not exist or has not failed; "
                    "only failed jobs can be retried"
                )
    finally:
        await database.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="docbatch",
        description="DocBatch batch document service. Settings come from DOCBATCH_* environment "
        "variables; the default is a SQLite database and blob folder under ./var.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve the API (and, by default, run a worker in the same process)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=8000, help="TCP port to listen on (default: 8000)"
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="serve the API only; run `docbatch worker` processes for the jobs",
    )
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="apply database migrations before serving (always done on SQLite)",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="number of API processes (default: 1)"
    )

    commands.add_parser(
        "worker", help="run a worker process that validates and settles queued batches"
    )

    database = commands.add_parser("db", help="database maintenance")
    database_commands = database.add_subparsers(
        dest="db_command", required=True, metavar="DB_COMMAND"
    )
    database_commands.add_parser(
        "upgrade", help="apply every pending migration to DOCBATCH_DATABASE_URL"
    )

    tenant = commands.add_parser("tenant", help="manage tenants")
    tenant_commands = tenant.add_subparsers(
        dest="tenant_command", required=True, metavar="TENANT_COMMAND"
    )
    tenant_add = tenant_commands.add_parser("add", help="register a tenant and print its GUID")
    tenant_add.add_argument("--name", required=True, help="display name of the tenant")
    tenant_add.add_argument(
        "--tenant-guid", type=_guid, help="GUID to register (default: a new random GUID)"
    )

    client = commands.add_parser("client", help="manage API clients")
    client_commands = client.add_subparsers(
        dest="client_command", required=True, metavar="CLIENT_COMMAND"
    )
    client_add = client_commands.add_parser(
        "add", help="register a client; prints its id and a secret shown only once"
    )
    client_add.add_argument("--name", required=True, help="display name of the client")
    client_add.add_argument(
        "--tenant",
        type=_guid,
        nargs="+",
        required=True,
        metavar="GUID",
        help="tenant GUIDs the client may act on",
    )
    client_add.add_argument(
        "--role",
        type=_role,
        nargs="+",
        required=True,
        metavar="ROLE",
        help="roles granted: BatchCreator, BatchViewer, BatchAdmin",
    )
    client_add.add_argument(
        "--json",
        action="store_true",
        help='print {"clientId": ..., "clientSecret": ...} instead of two lines',
    )

    token = commands.add_parser(
        "token", help="print a bearer token signed with the service's key, for local use"
    )
    token.add_argument(
        "--tenant",
        type=_guid,
        nargs="+",
        required=True,
        metavar="GUID",
        help="tenant GUIDs the token grants",
    )
    token.add_argument(
        "--role",
        type=_role,
        nargs="+",
        required=True,
        metavar="ROLE",
        help="roles the token grants",
    )
    token.add_argument(
        "--subject", default="docbatch-cli", help="the token's sub claim (default: docbatch-cli)"
    )

    job = commands.add_parser("job", help="inspect and retry background jobs")
    job_commands = job.add_subparsers(dest="job_command", required=True, metavar="JOB_COMMAND")
    job_list = job_commands.add_parser("list", help="print jobs as JSON lines, newest first")
    job_list.add_argument(
        "--status", choices=[status.value for status in JobStatus], help="only jobs in this status"
    )
    job_list.add_argument(
        "--limit", type=int, default=50, help="number of jobs to print (default: 50)"
    )
    job_retry = job_commands.add_parser(
        "retry", help="queue a failed job again with a fresh attempt budget"
    )
    job_retry.add_argument("job_id", type=int, help="id of the failed job")
    return parser


def run(arguments: argparse.Namespace, settings: Settings) -> None:
    command = arguments.command
    if command == "serve":
        _serve(arguments, settings)
    elif command == "worker":
        asyncio.run(_run_worker(settings))
    elif command == "db":
        asyncio.run(_upgrade(settings))
    elif command == "tenant":
        print(asyncio.run(_add_tenant(settings, arguments.name, arguments.tenant_guid)))
    elif command == "client":
        client_id, secret = asyncio.run(
            _add_client(settings, arguments.name, arguments.tenant, arguments.role)
        )
        if arguments.json:
            print(json.dumps({"clientId": client_id, "clientSecret": secret}))
        else:
            print(
                f"client id:     {client_id}\nclient secret: {secret}\n"
                "The secret is shown only this once."
            )
    elif command == "token":
        print(_issue_token(settings, arguments.tenant, arguments.role, arguments.subject))
    elif command == "job" and arguments.job_command == "list":
        for row in asyncio.run(_list_jobs(settings, arguments.status, arguments.limit)):
            print(json.dumps(row))
    elif command == "job":
        asyncio.run(_retry_job(settings, arguments.job_id))
        print(f"job {arguments.job_id} queued again")


def main(argv: Sequence[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValueError as error:
        print(f"docbatch: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    configure_logging(settings)
    try:
        run(arguments, settings)
    except CommandError as error:
        print(f"docbatch: {error}", file=sys.stderr)
        raise SystemExit(1) from error

"""Queries on batches. Every state transition is a compare-and-set on `status`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.queue import jobs
from docbatch.store.database import DriverStatement, Executor, fetch_row
from docbatch.store.models import Batch, BatchRecord, BatchStatus, BatchType


@dataclass(frozen=True, slots=True)
class BatchView:
    """The columns of a batch row that the API returns and the close path reads."""

    id: int
    guid: uuid.UUID
    tenant_guid: uuid.UUID
    batch_type_id: int
    batch_reference: str | None
    status: str
    has_creation_completed: bool
    total_records: int
    completed_records: int
    error_records: int
    validated_records: int
    failed_validated_records: int
    has_data: bool
    has_log_data: bool
    has_document_data: bool
    created_at: datetime
    updated_at: datetime | None
    completed_at: datetime | None
    deleted_at: datetime | None


# The hot paths below run Core statements on the table, built once here. So no ORM bulk-update or
# loading machinery runs, and SQLAlchemy reuses each statement's memoized cache key.
_batches = cast(Table, Batch.__table__)
_VIEW_COLUMNS = [_batches.c[field.name] for field in fields(BatchView)]

_READ_BATCH = select(*_VIEW_COLUMNS).where(
    _batches.c.guid == bindparam("batch_guid"), _batches.c.tenant_guid == bindparam("scope_guid")
)


def _close_upload_statement(*, counted: bool) -> Any:
    conditions = [
        _batches.c.guid == bindparam("batch_guid"),
        _batches.c.tenant_guid == bindparam("scope_guid"),
        _batches.c.status == BatchStatus.CREATING.value,
    ]
    if counted:
        conditions.append(_batches.c.total_records == bindparam("expected_record_count"))
    return (
        update(_batches)
        .where(*conditions)
        .values(
            status=case(
                (_batches.c.requires_approval, BatchStatus.AWAITING_APPROVAL.value),
                else_=BatchStatus.QUEUED.value,
            ),
            has_creation_completed=True,
            updated_at=bindparam("closed_at", type_=_batches.c.updated_at.type),
        )
        .returning(*_VIEW_COLUMNS)
    )


_RESERVE_RECORD_SLOTS = (
    update(_batches)
    .where(
        _batches.c.guid == bindparam("batch_guid"),
        _batches.c.tenant_guid == bindparam("scope_guid"),
        _batches.c.status == BatchStatus.CREATING.value,
    )
    .values(
        total_records=_batches.c.total_records + bindparam("record_count"),
        has_data=True,
        updated_at=bindparam("reserved_at", type_=_batches.c.updated_at.type),
    )
    .returning(_batches.c.id)
)


def _close_and_enqueue_statement(*, counted: bool) -> Any:
    """Build the close as one PostgreSQL statement: the UPDATE of the close, and the insert of
    the processing job when the batch became `Queued`, as data-modifying CTEs."""
    closed = _close_upload_statement(counted=counted).cte("closed")
    queued = jobs.insert_batch_job_for_rows(closed, closed.c.status == BatchStatus.QUEUED.value)
    return select(*closed.c).add_cte(queued.cte("queued_job"))


_CLOSE_UPLOAD = {counted: _close_upload_statement(counted=counted) for counted in (False, True)}
# The close is the hottest write. On PostgreSQL it runs on the driver connection, which took 14 %
# of a close's instructions off (`python -m bench instructions`, docs/architecture.md).
_CLOSE_UPLOAD_AND_ENQUEUE = {
    counted: DriverStatement.compile(_close_and_enqueue_statement(counted=counted))
    for counted in (False, True)
}


def _view(row: Row[Any] | Sequence[Any] | None) -> BatchView | None:
    if row is None:
        return None
    # The statements return `_VIEW_COLUMNS`, which are in the order of BatchView's fields.
    values: Any = row
    return BatchView(*values)


async def insert_batch(
    session: AsyncSession,
    scope: TenantScope,
    batch_type: BatchType,
    reference: str | None,
    now: datetime,
) -> Batch:
    configuration = batch_type.configuration
    batch = Batch(
        guid=uuid.uuid4(),
        tenant_guid=scope.guid,
        batch_type_id=batch_type.id,
        batch_reference=reference,
        status=BatchStatus.CREATING.value,
        requires_approval=not configuration["processRecordsWithoutApproval"],
        ignores_record_errors=configuration["batchCompletionIgnoresRecordsInError"],
        has_creation_completed=False,
        total_records=0,
        completed_records=0,
        error_records=0,
        validated_records=0,
        failed_validated_records=0,
        has_data=False,
        has_log_data=False,
        has_document_data=False,
        pending_chunks=0,
        created_at=now,
        updated_at=now,
    )
    session.add(batch)
    await session.flush()
    return batch


async def read_batch(executor: Executor, scope: TenantScope, guid: uuid.UUID) -> BatchView | None:
    """Read the columns of a batch that the API returns, without loading an ORM object."""
    result = await executor.execute(_READ_BATCH, {"batch_guid": guid, "scope_guid": scope.guid})
    return _view(result.first())


async def close_upload(
    connection: AsyncConnection,
    scope: TenantScope,
    guid: uuid.UUID,
    expected_record_count: int | None,
    now: datetime,
    job: jobs.BatchJob,
) -> BatchView | None:
    """Move an open batch to `Queued` or `AwaitingApproval`, and enqueue `job` for it when it
    became `Queued`. Return the batch, or None if it was not `Creating` (or its record count
    differs from `expected_record_count`).

    `connection` comes from `Database.single_statements(write=True)`. On PostgreSQL both writes
    are one statement, so they commit together in its autocommit mode. On SQLite they are two
    statements in the transaction that `single_statements` opens there. Records stored as
    `Creating` are not rewritten: in a closed batch they count as ready.
    """
    # UPDATE reserves bind names equal to column names, so these differ from the columns.
    parameters: dict[str, Any] = {"batch_guid": guid, "scope_guid": scope.guid, "closed_at": now}
    counted = expected_record_count is not None
    if counted:
        parameters["expected_record_count"] = expected_record_count
    if connection.dialect.name == "postgresql":
        parameters.update(jobs.batch_job_parameters(job, now))
        return _view(await fetch_row(connection, _CLOSE_UPLOAD_AND_ENQUEUE[counted], parameters))
    closed = _view((await connection.execute(_CLOSE_UPLOAD[counted], parameters)).first())
    if closed is not None and closed.status == BatchStatus.QUEUED:
        await jobs.enqueue_batch_job(connection, job, closed.id, closed.tenant_guid, now)
    return closed


async def transition(
    session: AsyncSession,
    batch_id: int,
    expected: BatchStatus,
    new: BatchStatus,
    now: datetime,
) -> Batch | None:
    """Compare-and-set a batch's status by id; return the updated batch or None."""
    statement = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == expected.value)
        .values(status=new.value, updated_at=now)
        .returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return await session.scalar(statement)


async def approve(
    session: AsyncSession, scope: TenantScope, guid: uuid.UUID, now: datetime
) -> Batch | None:
    statement = (
        update(Batch)
        .where(
            Batch.guid == guid,
            Batch.tenant_guid == scope.guid,
            Batch.status == BatchStatus.AWAITING_APPROVAL.value,
        )
        .values(status=BatchStatus.QUEUED.value, updated_at=now)
        .returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return await session.scalar(statement)


async def reserve_record_slots(
    session: AsyncSession, scope: TenantScope, guid: uuid.UUID, count: int, now: datetime
) -> int | None:
    """Count `count` new records into an open batch and return its id, or None if it is not
    open. The row lock this update takes orders it against `close_upload`."""
    result = await session.execute(
        _RESERVE_RECORD_SLOTS,
        {"batch_guid": guid, "scope_guid": scope.guid, "record_count": count, "reserved_at": now},
    )
    batch_id: int | None = result.scalar()
    return batch_id


async def add_validation_outcomes(
    session: AsyncSession,
    batch_id: int,
    *,
    validated: int,
    failed: int,
    completed: int,
    errors: int,
    logged: bool,
    now: datetime,
) -> None:
    """Add to the counters in the transaction that moved the records they count."""
    if not (validated or failed or completed or errors or logged):
        return
    values: dict[str, object] = {
        "validated_records": _batches.c.validated_records + validated,
        "failed_validated_records": _batches.c.failed_validated_records + failed,
        "completed_records": _batches.c.completed_records + completed,
        "error_records": _batches.c.error_records + errors,
        "updated_at": now,
    }
    if logged:
        values["has_log_data"] = True
    # A Core statement, so the session does not evaluate the update against loaded batches.
    await session.execute(update(_batches).where(_batches.c.id == batch_id).values(**values))


async def get_batch_by_id(session: AsyncSession, batch_id: int) -> Batch | None:
    return await session.get(Batch, batch_id, populate_existing=True)


async def start_chunks(
    session: AsyncSession, batch_id: int, chunk_count: int, now: datetime
) -> None:
    await session.execute(
        update(Batch).where(Batch.id == batch_id).values(pending_chunks=chunk_count, updated_at=now)
    )


async def finish_chunk(session: AsyncSession, batch_id: int) -> int:
    """Count one chunk as done and return how many remain."""
    remaining = await session.scalar(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(pending_chunks=Batch.pending_chunks - 1)
        .returning(Batch.pending_chunks)
    )
    return int(remaining or 0)


async def settle(session: AsyncSession, batch_id: int, now: datetime) -> Batch | None:
    """Move a `Processing` batch to `Completed` or `Error` from its counters."""
    failures = Batch.failed_validated_records + Batch.error_records
    statement = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.PROCESSING.value)
        .values(
            status=case(
                ((failures > 0) & ~Batch.ignores_record_errors, BatchStatus.ERROR.value),
                else_=BatchStatus.COMPLETED.value,
            ),
            completed_at=now,
            updated_at=now,
        )
        .returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return await session.scalar(statement)


async def chunk_boundaries(session: AsyncSession, batch_id: int, chunk_size: int) -> list[int]:
    """Return the first record id of every chunk of `chunk_size` records, in id order."""
    numbered = (
        select(
            BatchRecord.id.label("id"),
            func.row_number().over(order_by=BatchRecord.id).label("position"),
        )
        .where(BatchRecord.batch_id == batch_id)
        .subquery()
    )
    result = await session.scalars(
        select(numbered.c.id)
        .where((numbered.c.position - 1) % chunk_size == 0)
        .order_by(numbered.c.id)
    )
    return list(result)

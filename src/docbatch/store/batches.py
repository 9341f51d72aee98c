"""Queries on batches. Every state transition is a compare-and-set on `status`."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.store.models import Batch, BatchRecord, BatchStatus, BatchType


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


async def get_batch(session: AsyncSession, scope: TenantScope, guid: uuid.UUID) -> Batch | None:
    return await session.scalar(
        select(Batch).where(Batch.guid == guid, Batch.tenant_guid == scope.guid)
    )


async def close_upload(
    session: AsyncSession,
    scope: TenantScope,
    guid: uuid.UUID,
    expected_record_count: int | None,
    now: datetime,
) -> Batch | None:
    """Move an open batch to `Queued` or `AwaitingApproval`; return it, or None if it was not
    `Creating` (or its record count differs from `expected_record_count`).

    Records stored as `Creating` are not rewritten: in a closed batch they count as ready.
    """
    conditions = [
        Batch.guid == guid,
        Batch.tenant_guid == scope.guid,
        Batch.status == BatchStatus.CREATING.value,
    ]
    if expected_record_count is not None:
        conditions.append(Batch.total_records == expected_record_count)
    statement = (
        update(Batch)
        .where(*conditions)
        .values(
            status=case(
                (Batch.requires_approval, BatchStatus.AWAITING_APPROVAL.value),
                else_=BatchStatus.QUEUED.value,
            ),
            has_creation_completed=True,
            updated_at=now,
        )
        .returning(Batch)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return await session.scalar(statement)


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
    statement = (
        update(Batch)
        .where(
            Batch.guid == guid,
            Batch.tenant_guid == scope.guid,
            Batch.status == BatchStatus.CREATING.value,
        )
        .values(total_records=Batch.total_records + count, has_data=True, updated_at=now)
        .returning(Batch.id)
    )
    return await session.scalar(statement)


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
        "validated_records": Batch.validated_records + validated,
        "failed_validated_records": Batch.failed_validated_records + failed,
        "completed_records": Batch.completed_records + completed,
        "error_records": Batch.error_records + errors,
        "updated_at": now,
    }
    if logged:
        values["has_log_data"] = True
    await session.execute(update(Batch).where(Batch.id == batch_id).values(**values))


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

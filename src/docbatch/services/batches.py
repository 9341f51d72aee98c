"""The batch state machine: create, close the upload, approve, read."""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.core.errors import ConflictError, NotFoundError
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.store import batch_types as batch_type_store
from docbatch.store import batches as store
from docbatch.store.batches import BatchView
from docbatch.store.database import Executor
from docbatch.store.models import Batch, BatchStatus, BatchType

logger = structlog.get_logger(__name__)

MAX_BATCH_REFERENCE_LENGTH = 200
# Statuses in which a batch's upload is complete and MarkBatchUploadComplete changes nothing.
_CLOSED_STATUSES = {
    BatchStatus.AWAITING_APPROVAL,
    BatchStatus.QUEUED,
    BatchStatus.PROCESSING,
    BatchStatus.COMPLETED,
    BatchStatus.ERROR,
}


def process_batch_job(settings: Settings) -> jobs.BatchJob:
    """Return the job that processes a `Queued` batch."""
    return jobs.BatchJob(
        jobs.JobKind.PROCESS_BATCH, "process-batch:", max_attempts=settings.job_max_attempts
    )


async def create_batch(
    session: AsyncSession,
    scope: TenantScope,
    batch_type_guid: uuid.UUID,
    reference: str | None,
) -> Batch:
    """Open a new batch in `Creating` for a batch type of the tenant.

    Raises `NotFoundError` when the batch type does not exist in the tenant.
    """
    batch_type = await batch_type_store.get_batch_type(session, scope, batch_type_guid)
    if batch_type is None:
        raise NotFoundError(f"Batch type {batch_type_guid} was not found in tenant {scope.guid}.")
    batch = await store.insert_batch(session, scope, batch_type, reference, utcnow())
    logger.info(
        "batch.created",
        batch_guid=str(batch.guid),
        batch_type_guid=str(batch_type_guid),
        tenant=str(scope.guid),
    )
    return batch


async def _read(executor: Executor, scope: TenantScope, guid: uuid.UUID) -> BatchView:
    batch = await store.read_batch(executor, scope, guid)
    if batch is None:
        raise NotFoundError(f"Batch {guid} was not found in tenant {scope.guid}.")
    return batch


async def get_batch(
    executor: Executor, scope: TenantScope, guid: uuid.UUID
) -> tuple[BatchView, BatchType]:
    """Return the batch and its batch type; raise `NotFoundError` if the tenant lacks it."""
    batch = await _read(executor, scope, guid)
    return batch, await batch_type_store.get_batch_type_by_id(executor, batch.batch_type_id)


async def mark_upload_complete(
    connection: AsyncConnection,
    scope: TenantScope,
    guid: uuid.UUID,
    expected_record_count: int | None,
    settings: Settings,
) -> tuple[BatchView, BatchType]:
    """Close a batch to new records.

    `Creating` becomes `AwaitingApproval` when the batch type requires approval, otherwise
    `Queued` with its processing job, which commits with the status change: in one statement on
    PostgreSQL, in the caller's transaction on SQLite. One conditional update decides, so
    concurrent calls make one transition and one job, and the cost does not depend on the number
    of records. A batch already closed is returned unchanged.

    Raises `NotFoundError`, and `ConflictError` for a cancelled or purged batch or when
    `expected_record_count` differs from the records accepted.
    """
    closed = await store.close_upload(
        connection, scope, guid, expected_record_count, utcnow(), process_batch_job(settings)
    )
    if closed is not None:
        logger.info(
            "batch.upload_completed",
            batch_guid=str(guid),
            tenant=str(scope.guid),
            status=closed.status,
            records=closed.total_records,
        )
        return closed, await batch_type_store.get_batch_type_by_id(connection, closed.batch_type_id)

    batch = await _read(connection, scope, guid)
    status = BatchStatus(batch.status)
    if status == BatchStatus.CREATING:
        raise ConflictError(
            f"Batch {guid} has {batch.total_records} records but expectedRecordCount is "
            f"{expected_record_count}; nothing was changed. Upload the missing records or "
            "correct expectedRecordCount."
        )
    if status not in _CLOSED_STATUSES:
        raise ConflictError(
            f"Batch {guid} is {status.value}; a {status.value.lower()} batch cannot be completed."
        )
    return batch, await batch_type_store.get_batch_type_by_id(connection, batch.batch_type_id)


async def approve_batch(
    session: AsyncSession, scope: TenantScope, guid: uuid.UUID, settings: Settings
) -> tuple[Batch | BatchView, BatchType]:
    """Move `AwaitingApproval` to `Queued` and enqueue its processing job, atomically.

    A batch already past approval is returned unchanged with no new job. Raises
    `NotFoundError`, and `ConflictError` while the upload is open or after cancellation.
    """
    now = utcnow()
    approved = await store.approve(session, scope, guid, now)
    if approved is not None:
        await jobs.enqueue_batch_job(
            session, process_batch_job(settings), approved.id, approved.tenant_guid, now
        )
        logger.info("batch.approved", batch_guid=str(guid), tenant=str(scope.guid))
        return approved, await batch_type_store.get_batch_type_by_id(
            session, approved.batch_type_id
        )

    batch = await _read(session, scope, guid)
    if batch.status == BatchStatus.CREATING:
        raise ConflictError(
            f"Batch {guid} is still Creating; call MarkBatchUploadComplete before ApproveBatch."
        )
    if batch.status == BatchStatus.CANCELLED:
        raise ConflictError(f"Batch {guid} is Cancelled; a cancelled batch cannot be approved.")
    return batch, await batch_type_store.get_batch_type_by_id(session, batch.batch_type_id)

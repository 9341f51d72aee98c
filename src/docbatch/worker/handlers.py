"""Job handlers: start processing a batch, validate chunks of its records, settle it.

Each handler finishes its job inside its last transaction, so the job's completion commits with
the writes it describes. Every transaction first checks that the attempt still owns the job's lease
(attempt fencing) and moves records with compare-and-set updates, so a page redone after a crash
or a takeover counts each record once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.core.settings import Settings
from docbatch.core.text import storable
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.queue.jobs import ClaimedJob, JobKind
from docbatch.storage.blobs import BlobStore
from docbatch.store import batch_types as batch_type_store
from docbatch.store import batches as batch_store
from docbatch.store import records as record_store
from docbatch.store.database import Database
from docbatch.store.models import BatchStatus, RecordStatus
from docbatch.store.records import LogLine
from docbatch.validation.records import RecordCheck
from docbatch.worker.validation import PendingRecord, ValidatorCache, check_records

logger = structlog.get_logger(__name__)

_AWAITING_VALIDATION = (RecordStatus.CREATING, RecordStatus.READY_FOR_VALIDATION)
VALIDATION_STAGE = "Validation"


@dataclass(slots=True)
class _Outcomes:
    validated: int = 0
    failed: int = 0
    completed: int = 0
    logged: bool = False
    # Records whose validation another job committed first; this one counted nothing for them.
    moved_elsewhere: list[int] = field(default_factory=list)


async def _record_outcomes(
    session: AsyncSession,
    pending: list[PendingRecord],
    checks: list[RecordCheck],
    complete_valid: bool,
    now: datetime,
) -> _Outcomes:
    """Move the validated records to their outcomes with one compare-and-set per outcome; count
    only the records this call moved."""
    # Records are inserted without a reference, so only the ones found in a payload are written.
    references = {
        record.id: check.reference
        for record, check in zip(pending, checks, strict=True)
        if check.reference is not None
    }
    failed_ids = [record.id for record, check in zip(pending, checks, strict=True) if check.issues]
    valid_ids = [
        record.id for record, check in zip(pending, checks, strict=True) if not check.issues
    ]
    moved_failed = await record_store.move_records(
        session,
        failed_ids,
        _AWAITING_VALIDATION,
        RecordStatus.VALIDATION_FAILED,
        now,
        has_log_data=True,
        completed=True,
        references=references,
    )
    moved_valid = await record_store.move_records(
        session,
        valid_ids,
        _AWAITING_VALIDATION,
        RecordStatus.COMPLETED if complete_valid else RecordStatus.VALIDATED,
        now,
        completed=complete_valid,
        references=references,
    )
    moved = moved_failed | moved_valid
    await record_store.add_log_entries(
        session,
        {
            record.id: [
                LogLine("Error", VALIDATION_STAGE, storable(issue)) for issue in check.issues
            ]
            for record, check in zip(pending, checks, strict=True)
            if record.id in moved_failed
        },
        now,
    )
    return _Outcomes(
        validated=len(moved_valid),
        failed=len(moved_failed),
        completed=len(moved_valid) if complete_valid else 0,
        logged=bool(moved_failed),
        moved_elsewhere=[record.id for record in pending if record.id not in moved],
    )


async def _complete_validated(session: AsyncSession, record_ids: list[int], now: datetime) -> int:
    """Move `Validated` records to `Completed`; return how many this call moved."""
    moved = await record_store.move_records(
        session, record_ids, (RecordStatus.VALIDATED,), RecordStatus.COMPLETED, now, completed=True
    )
    return len(moved)


class JobHandlers:
    def __init__(self, settings: Settings, database: Database, blobs: BlobStore) -> None:
        self._settings = settings
        self._database = database
        self._blobs = blobs
        self._validators = ValidatorCache(settings)

    def for_kind(self, kind: str) -> Callable[[ClaimedJob], Awaitable[None]] | None:
        return {
            JobKind.PROCESS_BATCH.value: self.process_batch,
            JobKind.VALIDATE_CHUNK.value: self.validate_chunk,
            JobKind.VALIDATE_READY.value: self.validate_ready,
        }.get(kind)

    async def process_batch(self, job: ClaimedJob) -> None:
        """`Queued` → `Processing`, then split the records into chunk jobs; an empty batch
        settles at once."""
        batch_id = int(job.payload["batch_id"])
        now = utcnow()
        async with self._database.transaction() as session:
            await jobs.check_held(session, job)
            batch = await batch_store.transition(
                session, batch_id, BatchStatus.QUEUED, BatchStatus.PROCESSING, now
            )
            if batch is None:
                current = await batch_store.get_batch_by_id(session, batch_id)
                logger.info(
                    "batch.processing_skipped",
                    batch_id=batch_id,
                    status=current.status if current else None,
                )
                await jobs.mark_succeeded(session, job, now)
                return
            boundaries = await batch_store.chunk_boundaries(
                session, batch_id, self._settings.chunk_size
            )
            for index, first_id in enumerate(boundaries):
                last_id = boundaries[index + 1] - 1 if index + 1 < len(boundaries) else None
                await jobs.enqueue(
                    session,
                    JobKind.VALIDATE_CHUNK,
                    {"batch_id": batch_id, "first_id": first_id, "last_id": last_id},
                    now=now,
                    max_attempts=self._settings.job_max_attempts,
                    tenant_guid=batch.tenant_guid,
                    batch_id=batch_id,
                )
            await batch_store.start_chunks(session, batch_id, len(boundaries), now)
            settled = await batch_store.settle(session, batch_id, now) if not boundaries else None
            await jobs.mark_succeeded(session, job, now)
        logger.info(
            "batch.processing_started",
            batch_guid=str(batch.guid),
            records=batch.total_records,
            chunks=len(boundaries),
        )
        if settled is not None:
            logger.info(
                "batch.settled", batch_guid=str(settled.guid), status=settled.status, records=0
            )

    async def validate_chunk(self, job: ClaimedJob) -> None:
        """Validate a range of a `Processing` batch's records and complete the valid ones; the
        last chunk to finish settles the batch."""
        batch_id = int(job.payload["batch_id"])
        first_id = int(job.payload["first_id"])
        last_id = job.payload.get("last_id")
        await self._validate_pages(
            job,
            batch_id,
            statuses=(*_AWAITING_VALIDATION, RecordStatus.VALIDATED),
            after_id=first_id - 1,
            last_id=int(last_id) if last_id is not None else None,
            finish=True,
            active_statuses={BatchStatus.PROCESSING},
        )
        now = utcnow()
        async with self._database.transaction() as session:
            await jobs.check_held(session, job)
            batch = await batch_store.get_batch_by_id(session, batch_id)
            settled = None
            if batch is not None and batch.status == BatchStatus.PROCESSING:
                remaining = await batch_store.finish_chunk(session, batch_id)
                if remaining <= 0:
                    settled = await batch_store.settle(session, batch_id, now)
            await jobs.mark_succeeded(session, job, now)
        if settled is not None:
            logger.info(
                "batch.settled",
                batch_guid=str(settled.guid),
                status=settled.status,
                validated=settled.validated_records,
                failed_validation=settled.failed_validated_records,
                completed=settled.completed_records,
            )

    async def validate_ready(self, job: ClaimedJob) -> None:
        """Validate records marked ready while their batch is still open."""
        batch_id = int(job.payload["batch_id"])
        await self._validate_pages(
            job,
            batch_id,
            statuses=(RecordStatus.READY_FOR_VALIDATION,),
            after_id=0,
            last_id=None,
            finish=False,
            active_statuses={
                BatchStatus.CREATING,
                BatchStatus.AWAITING_APPROVAL,
                BatchStatus.QUEUED,
                BatchStatus.PROCESSING,
            },
        )
        async with self._database.transaction() as session:
            await jobs.mark_succeeded(session, job, utcnow())

    async def _validate_pages(
        self,
        job: ClaimedJob,
        batch_id: int,
        *,
        statuses: Sequence[RecordStatus],
        after_id: int,
        last_id: int | None,
        finish: bool,
        active_statuses: set[BatchStatus],
    ) -> None:
        cursor = after_id
        while True:
            async with self._database.read() as session:
                batch = await batch_store.get_batch_by_id(session, batch_id)
                if batch is None or batch.status not in active_statuses:
                    logger.info(
                        "batch.validation_stopped",
                        batch_id=batch_id,
                        status=batch.status if batch else None,
                    )
                    return
                batch_type = await batch_type_store.get_batch_type_by_id(
                    session, batch.batch_type_id
                )
                page = await record_store.list_records_to_process(
                    session,
                    batch_id,
                    statuses,
                    cursor,
                    last_id,
                    self._settings.records_per_transaction,
                )
            if not page:
                return
            # NOTE: generation from templates is not built yet, so a valid record is complete.
            complete_valid = finish and batch_type.configuration.get("templateGuid") is None
            pending = [
                PendingRecord(record.id, record.blob_key, record.payload)
                for record in page
                if record.status in _AWAITING_VALIDATION
            ]
            validated_earlier = [
                record.id for record in page if record.status == RecordStatus.VALIDATED
            ]
            checks: list[RecordCheck] = []
            if pending:
                validator = await self._validators.get(batch_type)
                checks = await check_records(validator, self._blobs, pending)
            now = utcnow()
            async with self._database.transaction() as session:
                await jobs.check_held(session, job)
                outcomes = await _record_outcomes(session, pending, checks, complete_valid, now)
                if complete_valid:
                    # Records another job validated first (a validation of records marked ready
                    # racing this chunk) are completed here too.
                    to_complete = validated_earlier + outcomes.moved_elsewhere
                    outcomes.completed += await _complete_validated(session, to_complete, now)
                await batch_store.add_validation_outcomes(
                    session,
                    batch_id,
                    validated=outcomes.validated,
                    failed=outcomes.failed,
                    completed=outcomes.completed,
                    errors=0,
                    logged=outcomes.logged,
                    now=now,
                )
            logger.debug(
                "records.validated",
                batch_id=batch_id,
                valid=outcomes.validated,
                failed=outcomes.failed,
            )
            cursor = page[-1].id

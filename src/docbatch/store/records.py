"""Queries on batch records and their log entries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.store.models import BatchRecord, RecordLogEntry, RecordStatus


@dataclass(frozen=True, slots=True)
class NewRecord:
    blob_key: str
    payload_bytes: int
    file_name: str | None
    meta_data: str | None


@dataclass(frozen=True, slots=True)
class LogLine:
    level: str
    stage: str
    message: str


async def insert_records(
    session: AsyncSession,
    scope: TenantScope,
    batch_id: int,
    records: Sequence[NewRecord],
    status: RecordStatus,
    now: datetime,
) -> list[int]:
    """Insert records and return their ids in the order given."""
    rows = [
        {
            "batch_id": batch_id,
            "tenant_guid": scope.guid,
            "reference": None,
            "status": status.value,
            "blob_key": record.blob_key,
            "payload_bytes": record.payload_bytes,
            "file_name": record.file_name,
            "meta_data": record.meta_data,
            "has_log_data": False,
            "has_document_data": False,
            "is_retrieved": False,
            "created_at": now,
            "updated_at": now,
        }
        for record in records
    ]
    result = await session.scalars(
        insert(BatchRecord).returning(BatchRecord.id, sort_by_parameter_order=True), rows
    )
    return list(result)


async def get_record(
    session: AsyncSession, scope: TenantScope, batch_id: int, record_id: int
) -> BatchRecord | None:
    return await session.scalar(
        select(BatchRecord).where(
            BatchRecord.id == record_id,
            BatchRecord.batch_id == batch_id,
            BatchRecord.tenant_guid == scope.guid,
        )
    )


async def existing_record_ids(
    session: AsyncSession, scope: TenantScope, batch_id: int, record_ids: Sequence[int]
) -> set[int]:
    result = await session.scalars(
        select(BatchRecord.id).where(
            BatchRecord.batch_id == batch_id,
            BatchRecord.tenant_guid == scope.guid,
            BatchRecord.id.in_(record_ids),
        )
    )
    return set(result)


async def mark_ready(
    session: AsyncSession, batch_id: int, record_ids: Sequence[int], now: datetime
) -> int:
    """Move `Creating` records to `ReadyForValidation`; return how many moved."""
    result = await session.scalars(
        update(BatchRecord)
        .where(
            BatchRecord.batch_id == batch_id,
            BatchRecord.id.in_(record_ids),
            BatchRecord.status == RecordStatus.CREATING.value,
        )
        .values(status=RecordStatus.READY_FOR_VALIDATION.value, updated_at=now)
        .returning(BatchRecord.id)
    )
    return len(list(result))


async def list_records_to_process(
    session: AsyncSession,
    batch_id: int,
    statuses: Sequence[RecordStatus],
    after_id: int,
    last_id: int | None,
    limit: int,
) -> list[BatchRecord]:
    """Return the next page of records in the given statuses, in id order."""
    conditions = [
        BatchRecord.batch_id == batch_id,
        BatchRecord.status.in_([status.value for status in statuses]),
        BatchRecord.id > after_id,
    ]
    if last_id is not None:
        conditions.append(BatchRecord.id <= last_id)
    result = await session.scalars(
        select(BatchRecord).where(*conditions).order_by(BatchRecord.id).limit(limit)
    )
    return list(result)


async def move_record(
    session: AsyncSession,
    record_id: int,
    expected: Sequence[RecordStatus],
    new: RecordStatus,
    now: datetime,
    *,
    reference: str | None = None,
    set_reference: bool = False,
    has_log_data: bool = False,
    completed: bool = False,
) -> bool:
    """Compare-and-set one record's status; return whether this call moved it."""
    values: dict[str, object] = {"status": new.value, "updated_at": now}
    if set_reference:
        values["reference"] = reference
    if has_log_data:
        values["has_log_data"] = True
    if completed:
        values["completed_at"] = now
    moved = await session.scalar(
        update(BatchRecord)
        .where(
            BatchRecord.id == record_id,
            BatchRecord.status.in_([status.value for status in expected]),
        )
        .values(**values)
        .returning(BatchRecord.id)
    )
    return moved is not None


async def add_log_entries(
    session: AsyncSession, record_id: int, lines: Sequence[LogLine], now: datetime
) -> None:
    if not lines:
        return
    await session.execute(
        insert(RecordLogEntry),
        [
            {
                "record_id": record_id,
                "created_at": now,
                "level": line.level,
                "stage": line.stage,
                "message": line.message,
            }
            for line in lines
        ],
    )


async def list_log_entries(session: AsyncSession, record_id: int) -> list[RecordLogEntry]:
    result = await session.scalars(
        select(RecordLogEntry)
        .where(RecordLogEntry.record_id == record_id)
        .order_by(RecordLogEntry.created_at, RecordLogEntry.id)
    )
    return list(result)

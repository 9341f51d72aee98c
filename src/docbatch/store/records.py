"""Queries on batch records and their log entries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import JSON, String, Table, bindparam, func, insert, literal, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from docbatch.auth.principal import TenantScope
from docbatch.store.database import dialect_name
from docbatch.store.models import BatchRecord, RecordLogEntry, RecordStatus

# Worker queries run as Core statements on the tables, which skip the ORM's per-statement work.
_records = cast(Table, BatchRecord.__table__)
_log_entries = cast(Table, RecordLogEntry.__table__)


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to insert. Its payload is either stored in the row or in the blob store."""

    blob_key: str | None
    payload: bytes | None
    payload_bytes: int
    file_name: str | None
    meta_data: str | None


@dataclass(frozen=True, slots=True)
class RecordToProcess:
    """A record of a worker's page, with its payload when the row stores it."""

    id: int
    status: str
    blob_key: str | None
    payload: bytes | None


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
            "payload": record.payload,
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
    result = await session.execute(
        insert(_records).returning(_records.c.id, sort_by_parameter_order=True), rows
    )
    return list(result.scalars())


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
) -> list[RecordToProcess]:
    """Return the next page of records in the given statuses, in id order."""
    conditions = [
        _records.c.batch_id == batch_id,
        _records.c.status.in_([status.value for status in statuses]),
        _records.c.id > after_id,
    ]
    if last_id is not None:
        conditions.append(_records.c.id <= last_id)
    result = await session.execute(
        select(_records.c.id, _records.c.status, _records.c.blob_key, _records.c.payload)
        .where(*conditions)
        .order_by(_records.c.id)
        .limit(limit)
    )
    return [RecordToProcess(*row) for row in result]


def _reference_by_id(dialect: str, references: Mapping[int, str]) -> ColumnElement[str]:
    """Return an expression that looks up each row's id in `references`, or NULL.

    The references travel as one JSON object bound to one parameter, so the statement has the
    same text for every page. A CASE with a branch per record built hundreds of bound parameters
    per page, and building it took most of the move's time in the worker (py-spy).
    """
    as_json = {str(record_id): reference for record_id, reference in references.items()}
    key = sql_cast(_records.c.id, String)
    if dialect == "postgresql":
        document = bindparam("references_by_id", as_json, type_=JSONB)
        return func.jsonb_extract_path_text(document, key)
    path = literal('$."') + key + literal('"')
    return func.json_extract(bindparam("references_by_id", as_json, type_=JSON), path)


async def move_records(
    session: AsyncSession,
    record_ids: Sequence[int],
    expected: Sequence[RecordStatus],
    new: RecordStatus,
    now: datetime,
    *,
    has_log_data: bool = False,
    completed: bool = False,
    references: Mapping[int, str] | None = None,
) -> set[int]:
    """Compare-and-set the status of many records in one statement; return the ids this call
    moved. Records in another status than `expected` are left as they are.

    `references` maps record ids to the reference read from their payloads. It is written in the
    same statement, so each moved record gets one new row version rather than two, and a record
    that is not moved keeps its reference.
    """
    if not record_ids:
        return set()
    values: dict[str, object] = {"status": new.value, "updated_at": now}
    if has_log_data:
        values["has_log_data"] = True
    if completed:
        values["completed_at"] = now
    if references:
        values["reference"] = func.coalesce(
            _reference_by_id(dialect_name(session), references), _records.c.reference
        )
    result = await session.execute(
        update(_records)
        .where(
            _records.c.id.in_(record_ids),
            _records.c.status.in_([status.value for status in expected]),
        )
        .values(**values)
        .returning(_records.c.id)
    )
    return set(result.scalars())


async def add_log_entries(
    session: AsyncSession, lines_by_record: Mapping[int, Sequence[LogLine]], now: datetime
) -> None:
    """Append log lines to records, all in one statement."""
    rows = [
        {
            "record_id": record_id,
            "created_at": now,
            "level": line.level,
            "stage": line.stage,
            "message": line.message,
        }
        for record_id, lines in lines_by_record.items()
        for line in lines
    ]
    if rows:
        await session.execute(insert(_log_entries), rows)


async def list_log_entries(session: AsyncSession, record_id: int) -> list[RecordLogEntry]:
    result = await session.scalars(
        select(RecordLogEntry)
        .where(RecordLogEntry.record_id == record_id)
        .order_by(RecordLogEntry.created_at, RecordLogEntry.id)
    )
    return list(result)

"""SQLAlchemy models. The Alembic history in `migrations/` creates exactly these tables."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass a UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class BatchStatus(enum.StrEnum):
    CREATING = "Creating"
    AWAITING_APPROVAL = "AwaitingApproval"
    QUEUED = "Queued"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    ERROR = "Error"
    CANCELLED = "Cancelled"
    PURGED = "Purged"


class RecordStatus(enum.StrEnum):
    CREATING = "Creating"
    READY_FOR_VALIDATION = "ReadyForValidation"
    VALIDATED = "Validated"
    VALIDATION_FAILED = "ValidationFailed"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    ERROR = "Error"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012
        datetime: UTCDateTime(),
        uuid.UUID: Uuid(),
        dict[str, Any]: JSON(),
    }


class Tenant(Base):
    __tablename__ = "tenants"

    guid: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class ApiClient(Base):
    """An OAuth client registered by an operator; only a slow hash of its secret is stored."""

    __tablename__ = "api_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[list[str]] = mapped_column(JSON())
    tenant_guids: Mapped[list[str]] = mapped_column(JSON())
    created_at: Mapped[datetime]


class BatchType(Base):
    """A batch type. Rows are never updated, so a batch's reference to one is a copy of its
    configuration."""

    __tablename__ = "batch_types"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    guid: Mapped[uuid.UUID] = mapped_column(unique=True)
    tenant_guid: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.guid"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    configuration: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    guid: Mapped[uuid.UUID] = mapped_column(unique=True)
    tenant_guid: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.guid"), index=True)
    batch_type_id: Mapped[int] = mapped_column(ForeignKey("batch_types.id"), index=True)
    batch_reference: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24))
    # Copies of the batch type's configuration that the state machine reads on its hot paths.
    requires_approval: Mapped[bool] = mapped_column(Boolean)
    ignores_record_errors: Mapped[bool] = mapped_column(Boolean)
    has_creation_completed: Mapped[bool] = mapped_column(Boolean, default=False)
    total_records: Mapped[int] = mapped_column(BigInteger, default=0)
    completed_records: Mapped[int] = mapped_column(BigInteger, default=0)
    error_records: Mapped[int] = mapped_column(BigInteger, default=0)
    validated_records: Mapped[int] = mapped_column(BigInteger, default=0)
    failed_validated_records: Mapped[int] = mapped_column(BigInteger, default=0)
    has_data: Mapped[bool] = mapped_column(Boolean, default=False)
    has_log_data: Mapped[bool] = mapped_column(Boolean, default=False)
    has_document_data: Mapped[bool] = mapped_column(Boolean, default=False)
    # Chunk jobs of the current processing run that have not finished; the last one settles.
    pending_chunks: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]


class BatchRecord(Base):
    """One uploaded record.

    A record stored as `Creating` in a batch whose upload is complete is ready for validation:
    closing a batch does not rewrite its records, so that closing costs the same for any size.
    """

    __tablename__ = "batch_records"
    __table_args__ = (Index("ix_batch_records_batch_id_status_id", "batch_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"))
    tenant_guid: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.guid"))
    reference: Mapped[str | None] = mapped_column(String(400))
    status: Mapped[str] = mapped_column(String(24))
    blob_key: Mapped[str | None] = mapped_column(String(400))
    # A small payload is stored here instead of under `blob_key`. It is loaded only when asked
    # for, so that reading a record's status does not read its payload.
    payload: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    payload_bytes: Mapped[int] = mapped_column(BigInteger)
    file_name: Mapped[str | None] = mapped_column(String(400))
    meta_data: Mapped[str | None] = mapped_column(Text)
    has_log_data: Mapped[bool] = mapped_column(Boolean, default=False)
    has_document_data: Mapped[bool] = mapped_column(Boolean, default=False)
    is_retrieved: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]


class RecordLogEntry(Base):
    __tablename__ = "record_log_entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("batch_records.id"), index=True)
    created_at: Mapped[datetime]
    level: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)


class Job(Base):
    """A unit of background work, claimed under a lease by one worker at a time."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_run_after", "status", "run_after"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]
    tenant_guid: Mapped[uuid.UUID | None]
    batch_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # Set while the job waits, so that at most one waiting job exists per key; cleared on claim.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

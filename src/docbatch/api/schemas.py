"""Wire shapes: the envelope and the three objects, camelCase, fields in contract order."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from docbatch.core.text import unstorable_character
from docbatch.core.timefmt import format_timespan, format_timestamp, parse_timespan
from docbatch.services.records import effective_record_status
from docbatch.store import models
from docbatch.store.batches import BatchView

T = TypeVar("T")

Timestamp = Annotated[datetime | None, PlainSerializer(format_timestamp, return_type=str | None)]


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Envelope(BaseModel, Generic[T]):
    """Every JSON response: `isSuccess`, `error` (one sentence or null), `result`."""

    isSuccess: bool  # camelCase is fixed by the DocFusion-compatible contract
    error: str | None
    result: T | None


class ErrorEnvelope(BaseModel):
    isSuccess: Literal[False] = False
    error: str
    result: None = None


def ok(result: T) -> Envelope[T]:
    return Envelope[T](isSuccess=True, error=None, result=result)


def _canonical_timespan(value: str | None) -> str | None:
    if value is None:
        return None
    return format_timespan(parse_timespan(value))


class BatchTypeConfiguration(WireModel):
    process_records_without_approval: StrictBool = True
    perform_merge: StrictBool = False
    batch_completion_ignores_records_in_error: StrictBool = False
    purge_time_span: str | None = Field(default=None, description="TimeSpan, e.g. 30.00:00:00")
    data_type: Literal["Xml", "Json"]
    data_schema_base64: str | None = None
    reference_data_path: str | None = Field(default=None, max_length=2000)
    template_guid: uuid.UUID | None = None
    template_version: StrictInt | None = None
    chain_guid: uuid.UUID | None = None
    chain_version: StrictInt | None = None
    workflow_process_guid: uuid.UUID | None = None
    workflow_process_version: StrictInt | None = None
    timeout: str | None = Field(default=None, description="TimeSpan, e.g. 00:05:00")
    parameters: dict[str, str] = Field(default_factory=dict)

    @field_validator("purge_time_span", "timeout")
    @classmethod
    def _check_timespan(cls, value: str | None) -> str | None:
        canonical = _canonical_timespan(value)
        if canonical is not None and canonical.startswith("-"):
            raise ValueError(f"'{value}' is negative; durations must be positive")
        return canonical

    @model_validator(mode="after")
    def _check_merge(self) -> BatchTypeConfiguration:
        if self.perform_merge and self.template_guid is None:
            raise ValueError(
                "performMerge needs a templateGuid: without documents there is nothing to merge"
            )
        return self


class BatchTypeIn(WireModel):
    name: str = Field(min_length=1, max_length=200)
    configuration: BatchTypeConfiguration

    @model_validator(mode="before")
    @classmethod
    def _reject_unstorable(cls, data: Any) -> Any:
        found = unstorable_character(data)
        if found:
            raise ValueError(f"the body contains {found}, which cannot be stored; remove it")
        return data


class BatchTypeOut(WireModel):
    batch_type_guid: uuid.UUID
    name: str
    configuration: dict[str, Any]

    @classmethod
    def from_model(cls, batch_type: models.BatchType) -> BatchTypeOut:
        return cls(
            batch_type_guid=batch_type.guid,
            name=batch_type.name,
            configuration=batch_type.configuration,
        )


class BatchOut(WireModel):
    batch_guid: uuid.UUID
    created_date: Timestamp
    has_creation_completed: bool
    total_records: int
    completed_records: int
    error_records: int
    validated_records: int
    failed_validated_records: int
    updated_date: Timestamp
    completed_date: Timestamp
    deleted_date: Timestamp
    status_id: str
    has_data: bool
    has_log_data: bool
    has_document_data: bool
    batch_type: BatchTypeOut
    batch_reference: str | None

    @classmethod
    def from_model(cls, batch: models.Batch | BatchView, batch_type: models.BatchType) -> BatchOut:
        return cls(
            batch_guid=batch.guid,
            created_date=batch.created_at,
            has_creation_completed=batch.has_creation_completed,
            total_records=batch.total_records,
            completed_records=batch.completed_records,
            error_records=batch.error_records,
            validated_records=batch.validated_records,
            failed_validated_records=batch.failed_validated_records,
            updated_date=batch.updated_at,
            completed_date=batch.completed_at,
            deleted_date=batch.deleted_at,
            status_id=batch.status,
            has_data=batch.has_data,
            has_log_data=batch.has_log_data,
            has_document_data=batch.has_document_data,
            batch_type=BatchTypeOut.from_model(batch_type),
            batch_reference=batch.batch_reference,
        )


class BatchRecordOut(WireModel):
    batch_record_id: int
    batch_guid: uuid.UUID
    batch_record_reference: str | None
    created_date: Timestamp
    completed_date: Timestamp
    status_id: str
    updated_date: Timestamp
    has_log_data: bool
    has_document_data: bool
    is_retrieved: bool
    meta_data: str | None

    @classmethod
    def from_model(cls, record: models.BatchRecord, batch: BatchView) -> BatchRecordOut:
        return cls(
            batch_record_id=record.id,
            batch_guid=batch.guid,
            batch_record_reference=record.reference,
            created_date=record.created_at,
            completed_date=record.completed_at,
            status_id=effective_record_status(record, batch),
            updated_date=record.updated_at,
            has_log_data=record.has_log_data,
            has_document_data=record.has_document_data,
            is_retrieved=record.is_retrieved,
            meta_data=record.meta_data,
        )


class RecordLogEntryOut(WireModel):
    timestamp: Timestamp
    level: str
    stage: str
    message: str

    @classmethod
    def from_model(cls, entry: models.RecordLogEntry) -> RecordLogEntryOut:
        return cls(
            timestamp=entry.created_at, level=entry.level, stage=entry.stage, message=entry.message
        )


class TokenResponse(BaseModel):
    access_token: str
    expires_in: int
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105  # a token type, not a secret

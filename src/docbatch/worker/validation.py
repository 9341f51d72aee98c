"""Validation work for one page of records, run outside any database transaction."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import anyio.to_thread

from docbatch.core.errors import InfrastructureError
from docbatch.core.settings import Settings
from docbatch.storage.blobs import BlobStore
from docbatch.store.models import BatchType
from docbatch.validation.records import (
    RecordCheck,
    RecordValidator,
    build_record_validator,
)

_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class PendingRecord:
    id: int
    blob_key: str | None
    payload: bytes | None = None


class ValidatorCache:
    """Compiled validators by batch type id; batch types never change once inserted."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._validators: OrderedDict[int, RecordValidator] = OrderedDict()
        self._build_lock = asyncio.Lock()

    async def get(self, batch_type: BatchType) -> RecordValidator:
        cached = self._validators.get(batch_type.id)
        if cached is not None:
            self._validators.move_to_end(batch_type.id)
            return cached
        # Slots that start on one batch type together wait for one build instead of each
        # compiling the schema.
        async with self._build_lock:
            cached = self._validators.get(batch_type.id)
            if cached is not None:
                return cached
            return await self._build(batch_type)

    async def _build(self, batch_type: BatchType) -> RecordValidator:
        configuration = batch_type.configuration
        validator = await anyio.to_thread.run_sync(
            lambda: build_record_validator(
                configuration["dataType"],
                configuration.get("dataSchemaBase64"),
                configuration.get("referenceDataPath"),
                max_xml_depth=self._settings.max_xml_depth,
                max_schema_bytes=self._settings.max_schema_bytes,
            )
        )
        self._validators[batch_type.id] = validator
        if len(self._validators) > _CACHE_SIZE:
            self._validators.popitem(last=False)
        return validator


def _read_payload(blobs: BlobStore, record: PendingRecord) -> bytes | RecordCheck:
    """Return the record's payload, or the failed check that reports it missing."""
    if record.payload is not None:
        return record.payload
    if record.blob_key is None:
        return RecordCheck(["the record's payload is no longer stored"])
    try:
        with blobs.open_for_reading(record.blob_key) as source:
            return source.read()
    except FileNotFoundError:
        return RecordCheck(["the record's payload is missing from the blob store"])
    except OSError as error:
        raise InfrastructureError(
            f"reading the payload of record {record.id} (blob {record.blob_key}) failed: {error}"
        ) from error


def _check_one(validator: RecordValidator, blobs: BlobStore, record: PendingRecord) -> RecordCheck:
    payload = _read_payload(blobs, record)
    if isinstance(payload, RecordCheck):
        return payload
    try:
        return validator.check(payload)
    except RecursionError:
        return RecordCheck(["the record nests too deeply to be validated"])
    except MemoryError:
        return RecordCheck(["the record is too large to be validated in memory"])


async def check_records(
    validator: RecordValidator, blobs: BlobStore, records: list[PendingRecord]
) -> list[RecordCheck]:
    """Validate payloads in a worker thread. A defective payload gives a failed `RecordCheck`;
    a storage failure raises `InfrastructureError`."""
    return await anyio.to_thread.run_sync(
        lambda: [_check_one(validator, blobs, record) for record in records]
    )

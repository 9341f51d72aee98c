"""Record rules: uploads into open batches, readiness, reads."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.core.errors import ConflictError, InvalidRequestError, NotFoundError
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.storage.blobs import BlobStore, BlobWriter, record_blob_key
from docbatch.store import batches as batch_store
from docbatch.store import records as store
from docbatch.store.batches import BatchView
from docbatch.store.database import Database
from docbatch.store.models import Batch, BatchRecord, BatchStatus, RecordLogEntry, RecordStatus
from docbatch.validation.xml import XmlRejectedError, parse_document

logger = structlog.get_logger(__name__)

# Payloads of one upload published at the same time.
_PARALLEL_PUBLISHES = 16
# Inline payloads of one upload held in memory until its commit. Once an upload has buffered this
# much, its further records go to the blob store whatever their size.
INLINE_BYTES_PER_UPLOAD = 16 * 1024 * 1024


def effective_record_status(record: BatchRecord, batch: Batch | BatchView) -> str:
    """Return the status reported to clients: a record stored as `Creating` in a closed batch is
    ready for validation."""
    if record.status == RecordStatus.CREATING and batch.has_creation_completed:
        return RecordStatus.READY_FOR_VALIDATION.value
    return record.status


def validate_metadata(text: str, description: str) -> None:
    """Raise `InvalidRequestError` unless `text` is JSON or well-formed XML."""
    try:
        json.loads(text)
    except ValueError:
        pass
    else:
        return
    try:
        parse_document(text.encode(), max_depth=256)
    except XmlRejectedError as error:
        raise InvalidRequestError(
            f"{description} must be JSON or well-formed XML text; as XML it fails at {error}."
        ) from error


def _closed_batch_error(batch: BatchView) -> ConflictError:
    return ConflictError(
        f"Batch {batch.guid} is {batch.status} and no longer accepts records; nothing was "
        "stored. Create a new batch for more records."
    )


def validate_ready_job(settings: Settings) -> jobs.BatchJob:
    """Return the job that validates the records of a batch marked ready while it is open."""
    return jobs.BatchJob(
        jobs.JobKind.VALIDATE_READY, "validate-ready:", max_attempts=settings.job_max_attempts
    )


async def _enqueue_validation(
    session: AsyncSession, batch: BatchView | int, scope: TenantScope, settings: Settings
) -> None:
    batch_id = batch if isinstance(batch, int) else batch.id
    await jobs.enqueue_batch_job(
        session, validate_ready_job(settings), batch_id, scope.guid, utcnow()
    )


class InlinePayloadBudget:
    """The memory that all uploads of one process may hold in inline payloads until they commit.

    Only the event loop's thread uses it, so it needs no lock.
    """

    def __init__(self, total_bytes: int) -> None:
        self.available = total_bytes

    def take(self, requested: int) -> int:
        """Reserve `requested` bytes and return that count, or 0 if they are not available."""
        granted = requested if requested <= self.available else 0
        self.available -= granted
        return granted

    def give_back(self, count: int) -> None:
        self.available += count


class RecordPayload:
    """One record's payload as it streams in: held in memory while it fits `inline_limit`, then
    moved into a blob writer that receives the rest."""

    def __init__(self, inline_limit: int, open_blob: Callable[[], BlobWriter]) -> None:
        self.size = 0
        self.inline_limit = inline_limit
        self._open_blob = open_blob
        self._buffer = bytearray()
        self.blob: BlobWriter | None = None

    @property
    def is_inline(self) -> bool:
        return self.blob is None

    def take_inline(self) -> bytes | None:
        """Return the payload bytes when the payload stays in memory, else None. The buffer is
        handed over, so call it once."""
        if self.blob is not None:
            return None
        payload = bytes(self._buffer)
        self._buffer = bytearray()
        return payload

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.blob is None and self.size <= self.inline_limit:
            self._buffer += chunk
            return
        if self.blob is None:
            self.blob = self._open_blob()
            buffered = bytes(self._buffer)
            self._buffer = bytearray()
            if buffered:
                await self.blob.write(buffered)
        await self.blob.write(chunk)


class RecordUpload:
    """One CreateBatchRecord(s) request: payloads stream into memory or into blobs, then one
    transaction counts and inserts them, or nothing is kept.

    Use `begin`, then `new_payload` per record, then `commit` or `abort`.
    """

    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        scope: TenantScope,
        batch: BatchView,
        settings: Settings,
        budget: InlinePayloadBudget,
    ) -> None:
        self._database = database
        self._blobs = blobs
        self._scope = scope
        self._batch = batch
        self._settings = settings
        self._payloads: list[RecordPayload] = []
        self._inline_bytes = 0
        self._budget = budget
        # Bytes of `budget` this upload holds: its inline payloads and the current one's limit.
        self._reserved = 0
        self._file_names: list[str | None] = []
        self._published: list[str] = []

    @classmethod
    async def begin(
        cls,
        database: Database,
        blobs: BlobStore,
        scope: TenantScope,
        batch_guid: uuid.UUID,
        settings: Settings,
        budget: InlinePayloadBudget,
    ) -> RecordUpload:
        """Check that the batch exists and is open before any payload byte is read.

        Raises `NotFoundError` or `ConflictError`; the final check happens again at commit.
        """
        async with database.single_statements() as connection:
            batch = await batch_store.read_batch(connection, scope, batch_guid)
        if batch is None:
            raise NotFoundError(f"Batch {batch_guid} was not found in tenant {scope.guid}.")
        if batch.status != BatchStatus.CREATING:
            raise _closed_batch_error(batch)
        return cls(database, blobs, scope, batch, settings, budget)

    @property
    def record_count(self) -> int:
        return len(self._payloads)

    def new_payload(self, file_name: str | None) -> RecordPayload:
        """Start the next record's payload; call it after the previous payload is complete."""
        if self._payloads:
            self._settle_reservation(self._payloads[-1])
        inline_limit = self._settings.inline_payload_max_bytes
        if self._inline_bytes + inline_limit > INLINE_BYTES_PER_UPLOAD:
            inline_limit = 0
        inline_limit = self._budget.take(inline_limit)
        self._reserved += inline_limit
        payload = RecordPayload(inline_limit, self._new_blob_writer)
        self._payloads.append(payload)
        self._file_names.append(file_name)
        return payload

    def _settle_reservation(self, payload: RecordPayload) -> None:
        """Keep the reservation a complete payload uses and give back the rest of its limit."""
        stored_inline = payload.size if payload.is_inline else 0
        self._inline_bytes += stored_inline
        self._release(payload.inline_limit - stored_inline)

    def _release(self, count: int) -> None:
        self._budget.give_back(count)
        self._reserved -= count

    def _new_blob_writer(self) -> BlobWriter:
        return self._blobs.new_writer(record_blob_key(self._scope.guid, self._batch.guid))

    def _blob_writers(self) -> list[BlobWriter]:
        return [payload.blob for payload in self._payloads if payload.blob is not None]

    async def commit(self, metadata: Sequence[str | None], ready_for_validation: bool) -> list[int]:
        """Publish the payloads and insert the records in one transaction; return their ids.

        Raises `ConflictError` if the batch closed while the payloads were streaming; then, as
        on any error, every payload of this upload is deleted.
        """
        try:
            await self._publish_payloads()
            ids = await self._insert(metadata, ready_for_validation)
        except BaseException:
            await self.abort()
            raise
        finally:
            self._release(self._reserved)
        logger.info(
            "records.created",
            batch_guid=str(self._batch.guid),
            tenant=str(self._scope.guid),
            records=len(ids),
            first_record_id=ids[0] if ids else None,
            payload_bytes=sum(payload.size for payload in self._payloads),
            blob_payloads=len(self._blob_writers()),
        )
        return ids

    async def _publish_payloads(self) -> None:
        # Each publish waits for an fsync; running a group at once lets the disk overlap them.
        writers = self._blob_writers()
        for start in range(0, len(writers), _PARALLEL_PUBLISHES):
            group = writers[start : start + _PARALLEL_PUBLISHES]
            results = await asyncio.gather(
                *(writer.commit() for writer in group), return_exceptions=True
            )
            for writer, result in zip(group, results, strict=True):
                if not isinstance(result, BaseException):
                    self._published.append(writer.key)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _insert(
        self, metadata: Sequence[str | None], ready_for_validation: bool
    ) -> list[int]:
        now = utcnow()
        new_records = [
            store.NewRecord(
                payload.blob.key if payload.blob is not None else None,
                payload.take_inline(),
                payload.size,
                file_name,
                meta,
            )
            for payload, file_name, meta in zip(
                self._payloads, self._file_names, metadata, strict=True
            )
        ]
        status = (
            RecordStatus.READY_FOR_VALIDATION if ready_for_validation else RecordStatus.CREATING
        )
        async with self._database.transaction() as session:
            batch_id = await batch_store.reserve_record_slots(
                session, self._scope, self._batch.guid, len(new_records), now
            )
            if batch_id is None:
                current = await batch_store.read_batch(session, self._scope, self._batch.guid)
                raise _closed_batch_error(current or self._batch)
            ids = await store.insert_records(
                session, self._scope, batch_id, new_records, status, now
            )
            if ready_for_validation:
                await _enqueue_validation(session, batch_id, self._scope, self._settings)
        return ids

    async def abort(self) -> None:
        """Delete every payload file of this upload, published or not, and give back the memory
        its inline payloads reserved."""
        self._release(self._reserved)
        for writer in self._blob_writers():
            try:
                await writer.abort()
                if writer.key in self._published:
                    await self._blobs.delete(writer.key)
            except Exception:
                logger.exception(
                    "records.payload_cleanup_failed",
                    blob_key=writer.key,
                    batch_guid=str(self._batch.guid),
                )


async def _get_batch(session: AsyncSession, scope: TenantScope, batch_guid: uuid.UUID) -> BatchView:
    batch = await batch_store.read_batch(session, scope, batch_guid)
    if batch is None:
        raise NotFoundError(f"Batch {batch_guid} was not found in tenant {scope.guid}.")
    return batch


async def mark_ready_for_validation(
    session: AsyncSession,
    scope: TenantScope,
    batch_guid: uuid.UUID,
    record_ids: Sequence[int],
    settings: Settings,
) -> list[int]:
    """Move the named `Creating` records to `ReadyForValidation` and enqueue their validation.

    Records further along are left as they are. Returns the ids, each once, in request order.
    Raises `NotFoundError` (nothing changes) when any id is not a record of the batch, and
    `ConflictError` for a cancelled or purged batch.
    """
    batch = await _get_batch(session, scope, batch_guid)
    if batch.status in (BatchStatus.CANCELLED, BatchStatus.PURGED):
        raise ConflictError(
            f"Batch {batch_guid} is {batch.status}; its records are no longer validated."
        )
    unique_ids = list(dict.fromkeys(record_ids))
    found = await store.existing_record_ids(session, scope, batch.id, unique_ids)
    missing = [record_id for record_id in unique_ids if record_id not in found]
    if missing:
        listed = ", ".join(str(record_id) for record_id in missing[:20])
        raise NotFoundError(
            f"Records {listed} were not found in batch {batch_guid}; nothing was changed."
        )
    moved = await store.mark_ready(session, batch.id, unique_ids, utcnow())
    if moved:
        await _enqueue_validation(session, batch, scope, settings)
    logger.info(
        "records.marked_ready", batch_guid=str(batch_guid), tenant=str(scope.guid), records=moved
    )
    return unique_ids


async def get_record(
    session: AsyncSession, scope: TenantScope, batch_guid: uuid.UUID, record_id: int
) -> tuple[BatchRecord, BatchView]:
    """Return a record and its batch; raise `NotFoundError` if either is not in the tenant."""
    batch = await _get_batch(session, scope, batch_guid)
    record = await store.get_record(session, scope, batch.id, record_id)
    if record is None:
        raise NotFoundError(f"Record {record_id} was not found in batch {batch_guid}.")
    return record, batch


async def get_record_log(
    session: AsyncSession, scope: TenantScope, batch_guid: uuid.UUID, record_id: int
) -> list[RecordLogEntry]:
    record, _ = await get_record(session, scope, batch_guid, record_id)
    return await store.list_log_entries(session, record.id)

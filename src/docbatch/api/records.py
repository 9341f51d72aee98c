"""Record actions: CreateBatchRecord(s), MarkBatchRecordReadyForValidation, GetBatchRecord,
GetBatchRecordLog."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import Field

from docbatch.api.batches import BatchGuidQuery
from docbatch.api.deps import (
    MAX_INT64,
    CreatorScope,
    State,
    ViewerScope,
    parse_guid,
    reject_unstorable,
)
from docbatch.api.docs import error_responses, success_example
from docbatch.api.multipart import (
    PartData,
    PartEnd,
    PartStart,
    multipart_boundary,
    read_form_events,
)
from docbatch.api.schemas import BatchRecordOut, Envelope, RecordLogEntryOut, ok
from docbatch.api.state import AppState
from docbatch.auth.principal import TenantScope
from docbatch.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from docbatch.services import records as service
from docbatch.services.records import RecordPayload

router = APIRouter(prefix="/api/DocBatch", tags=["Records"])

RECORD_PART = "RecordData"
# The length of the column that keeps a record's file name.
MAX_FILE_NAME_LENGTH = 400
METADATA_PART = "MetaData"
# Room for multipart boundaries and part headers around one record and its metadata.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
# CreateBatchRecords carries one metadata string per record in a single JSON object.
_METADATA_RECORDS_FACTOR = 256

ReadyQuery = Annotated[
    bool,
    Query(
        alias="immediatelyReadyForValidation",
        description="true: the records are ready for validation at once and are validated "
        "while the batch is still open.",
    ),
]
RecordIdQuery = Annotated[int, Query(alias="batchRecordId", ge=1, le=MAX_INT64)]

_UPLOAD_ERRORS = error_responses(
    NotFoundError, ConflictError, PayloadTooLargeError, UnsupportedMediaTypeError
)


class _FormReader:
    """Streams RecordData parts into the upload and keeps the small MetaData part in memory."""

    def __init__(
        self,
        upload: service.RecordUpload,
        settings_max_record: int,
        max_metadata: int,
        max_records: int,
        single: bool,
    ) -> None:
        self.upload = upload
        self.metadata: bytearray | None = None
        self.file_names: list[str | None] = []
        self._max_record = settings_max_record
        self._max_metadata = max_metadata
        self._max_records = max_records
        self._single = single
        self._writer: RecordPayload | None = None
        self._in_metadata = False

    async def consume(self, request: Request, boundary: bytes) -> None:
        async for event in read_form_events(request, boundary):
            if isinstance(event, PartStart):
                self._start(event)
            elif isinstance(event, PartData):
                await self._data(event.data)
            elif isinstance(event, PartEnd):
                self._end()
        if not self.file_names:
            raise InvalidRequestError(
                f"The form has no {RECORD_PART} file part; send the record payload in one."
            )

    def _start(self, part: PartStart) -> None:
        reject_unstorable(part.file_name, f"The file name of a {RECORD_PART} part")
        if part.file_name is not None and len(part.file_name) > MAX_FILE_NAME_LENGTH:
            raise InvalidRequestError(
                f"A {RECORD_PART} file name is {len(part.file_name)} characters long; at most "
                f"{MAX_FILE_NAME_LENGTH} are stored. Shorten it."
            )
        if part.name == RECORD_PART:
            if self._single and self.file_names:
                raise InvalidRequestError(
                    f"CreateBatchRecord takes one {RECORD_PART} part; "
                    "use CreateBatchRecords for several."
                )
            if len(self.file_names) >= self._max_records:
                raise PayloadTooLargeError(
                    f"The request has more than {self._max_records} records; nothing was stored. "
                    "Split the upload into several requests."
                )
            self._writer = self.upload.new_payload(part.file_name)
            self.file_names.append(part.file_name)
        elif part.name == METADATA_PART:
            if self.metadata is not None:
                raise InvalidRequestError(
                    f"The form has more than one {METADATA_PART} part; send one."
                )
            self.metadata = bytearray()
            self._in_metadata = True
        else:
            raise InvalidRequestError(
                f"The form field '{part.name[:100]}' is unknown; "
                f"send only {RECORD_PART} and {METADATA_PART}."
            )

    async def _data(self, data: bytes) -> None:
        if self._writer is not None:
            if self._writer.size + len(data) > self._max_record:
                raise PayloadTooLargeError(
                    f"Record data is over the limit of {self._max_record} bytes; "
                    "nothing was stored."
                )
            await self._writer.write(data)
        elif self._in_metadata and self.metadata is not None:
            self.metadata += data
            if len(self.metadata) > self._max_metadata:
                raise PayloadTooLargeError(
                    f"{METADATA_PART} is over the limit of {self._max_metadata} bytes; "
                    "nothing was stored."
                )

    def _end(self) -> None:
        if self._writer is not None and self._writer.size == 0:
            raise InvalidRequestError(
                f"{RECORD_PART} part {len(self.file_names)} is empty; every record needs a payload."
            )
        self._writer = None
        self._in_metadata = False


def _decode_metadata(raw: bytearray | None) -> str | None:
    if raw is None or not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequestError(f"{METADATA_PART} is not UTF-8 text: {error}.") from error
    reject_unstorable(text, METADATA_PART)
    return text


def _metadata_per_record(
    text: str | None, file_names: list[str | None], max_bytes: int
) -> list[str | None]:
    if text is None:
        return [None] * len(file_names)
    try:
        by_name = json.loads(text)
    except ValueError as error:
        raise InvalidRequestError(
            f"{METADATA_PART} must be a JSON object from file name to metadata text: {error}."
        ) from error
    if not isinstance(by_name, dict) or not all(
        isinstance(value, str) for value in by_name.values()
    ):
        raise InvalidRequestError(
            f"{METADATA_PART} must be a JSON object whose values are metadata strings."
        )
    uses = Counter(file_names)
    repeated = sorted(name for name in by_name if uses[name] > 1)
    if repeated:
        raise InvalidRequestError(
            f"{METADATA_PART} names file '{repeated[0][:200]}', which several {RECORD_PART} "
            "parts share; give each part its own file name."
        )
    unknown = sorted(set(by_name) - set(file_names))
    if unknown:
        raise InvalidRequestError(
            f"{METADATA_PART} names file '{unknown[0][:200]}', which is not the file name "
            f"of any {RECORD_PART} part."
        )
    for name, value in by_name.items():
        if len(value.encode()) > max_bytes:
            raise PayloadTooLargeError(
                f"The metadata of '{name[:200]}' is over the limit of {max_bytes} bytes; "
                "nothing was stored."
            )
        reject_unstorable(value, f"The metadata of '{name[:200]}'")
        service.validate_metadata(value, f"The metadata of '{name[:200]}'")
    return [by_name.get(name) if name is not None else None for name in file_names]


async def _receive_records(
    request: Request,
    state: AppState,
    scope: TenantScope,
    batch_guid: uuid.UUID,
    ready: bool,
    *,
    single: bool,
) -> list[int]:
    settings = state.settings
    boundary = multipart_boundary(request)
    if single:
        declared = request.headers.get("content-length")
        limit = settings.max_record_bytes + settings.max_metadata_bytes + _MULTIPART_OVERHEAD_BYTES
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"The request body is {declared} bytes, over the limit of {limit} bytes for one "
                "record and its metadata; nothing was stored."
            )
    upload = await service.RecordUpload.begin(
        state.database, state.blobs, scope, batch_guid, settings, state.inline_budget
    )
    metadata_limit = settings.max_metadata_bytes * (1 if single else _METADATA_RECORDS_FACTOR)
    reader = _FormReader(
        upload, settings.max_record_bytes, metadata_limit, settings.max_records_per_request, single
    )
    try:
        await reader.consume(request, boundary)
        text = _decode_metadata(reader.metadata)
        if single:
            if text is not None:
                service.validate_metadata(text, METADATA_PART)
            metadata: list[str | None] = [text]
        else:
            metadata = _metadata_per_record(text, reader.file_names, settings.max_metadata_bytes)
    except BaseException:
        await upload.abort()
        raise
    return await upload.commit(metadata, ready)


@router.post(
    "/CreateBatchRecord",
    summary="Upload one record [BatchCreator]",
    description=(
        "multipart/form-data: file part RecordData (required, non-empty) and optional text part "
        "MetaData (XML or JSON, at most 64 KiB, stored verbatim). A payload of at most 64 KiB "
        "is stored in the database, a larger one streams to the blob store. Result: a "
        "one-element list with the new batchRecordId."
    ),
    responses={**_UPLOAD_ERRORS, **success_example([1])},
)
async def create_batch_record(
    request: Request,
    scope: CreatorScope,
    state: State,
    batch_guid: BatchGuidQuery,
    ready: ReadyQuery = False,
) -> Envelope[list[int]]:
    guid = parse_guid(batch_guid, "batchGuid")
    return ok(await _receive_records(request, state, scope, guid, ready, single=True))


@router.post(
    "/CreateBatchRecords",
    summary="Upload several records, all or nothing [BatchCreator]",
    description=(
        "multipart/form-data: repeated RecordData file parts; optional MetaData is a JSON object "
        "from each part's file name to that record's metadata text. One bad part and no record "
        "is kept. Result: the new ids in part order."
    ),
    responses={**_UPLOAD_ERRORS, **success_example([1, 2, 3])},
)
async def create_batch_records(
    request: Request,
    scope: CreatorScope,
    state: State,
    batch_guid: BatchGuidQuery,
    ready: ReadyQuery = False,
) -> Envelope[list[int]]:
    guid = parse_guid(batch_guid, "batchGuid")
    return ok(await _receive_records(request, state, scope, guid, ready, single=False))


@router.put(
    "/MarkBatchRecordReadyForValidation",
    summary="Mark records ready for validation [BatchCreator]",
    description=(
        "batchRecordId may repeat. Creating records become ReadyForValidation and are validated "
        "asynchronously; records further along are left as they are. An unknown id is a 404 "
        "and nothing changes. Result: the ids now ready or further along."
    ),
    responses={**error_responses(NotFoundError, ConflictError), **success_example([1, 2])},
)
async def mark_batch_record_ready_for_validation(
    scope: CreatorScope,
    state: State,
    batch_guid: BatchGuidQuery,
    record_ids: Annotated[
        list[Annotated[int, Field(ge=1, le=MAX_INT64)]],
        Query(alias="batchRecordId", min_length=1, max_length=10_000),
    ],
) -> Envelope[list[int]]:
    guid = parse_guid(batch_guid, "batchGuid")
    async with state.database.transaction() as session:
        ids = await service.mark_ready_for_validation(
            session, scope, guid, record_ids, state.settings
        )
    return ok(ids)


@router.get(
    "/GetBatchRecord",
    summary="Get a record [BatchViewer]",
    responses=error_responses(NotFoundError),
)
async def get_batch_record(
    scope: ViewerScope, state: State, batch_guid: BatchGuidQuery, record_id: RecordIdQuery
) -> Envelope[BatchRecordOut]:
    guid = parse_guid(batch_guid, "batchGuid")
    async with state.database.read() as session:
        record, batch = await service.get_record(session, scope, guid, record_id)
    return ok(BatchRecordOut.from_model(record, batch))


@router.get(
    "/GetBatchRecordLog",
    summary="Get a record's log entries in time order [BatchViewer]",
    description="Every validation error with line and column (Xml) or JSON Pointer (Json).",
    responses=error_responses(NotFoundError),
)
async def get_batch_record_log(
    scope: ViewerScope, state: State, batch_guid: BatchGuidQuery, record_id: RecordIdQuery
) -> Envelope[list[RecordLogEntryOut]]:
    guid = parse_guid(batch_guid, "batchGuid")
    async with state.database.read() as session:
        entries = await service.get_record_log(session, scope, guid, record_id)
    return ok([RecordLogEntryOut.from_model(entry) for entry in entries])

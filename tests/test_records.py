"""CreateBatchRecord(s), MarkBatchRecordReadyForValidation, GetBatchRecord and
GetBatchRecordLog."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import func, select

from docbatch.app import create_app
from docbatch.core.settings import Settings
from docbatch.services import records as record_service
from docbatch.storage.blobs import open_blob_store
from docbatch.store.database import Database
from docbatch.store.models import BatchRecord
from docbatch.worker.runner import Worker
from tests.support import (
    Api,
    TokenFactory,
    api_with_settings,
    assert_envelope_error,
    invalid_order,
    run_worker_until,
    valid_order,
)

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
RECORD_FIELDS = [
    "batchRecordId",
    "batchGuid",
    "batchRecordReference",
    "createdDate",
    "completedDate",
    "statusId",
    "updatedDate",
    "hasLogData",
    "hasDocumentData",
    "isRetrieved",
    "metaData",
]
LOG_FIELDS = ["timestamp", "level", "stage", "message"]
METADATA_LIMIT = 64 * 1024
SMALL_RECORD_LIMIT = 1024
WORKER_TIMEOUT_SECONDS = 15.0
FACTUR_X_REFERENCE = "/rsm:CrossIndustryInvoice/rsm:ExchangedDocument/ram:ID"


# --- helpers ----------------------------------------------------------------------------------


def _database(app: FastAPI) -> Database:
    database: Database = app.state.docbatch.database
    return database


async def _count_records(app: FastAPI) -> int:
    async with _database(app).read() as session:
        return int(await session.scalar(select(func.count()).select_from(BatchRecord)) or 0)


def _blob_files(settings: Settings) -> set[str]:
    """Every file under the blob folder, temporary upload files included."""
    root = Path(settings.storage_url.removeprefix("file://"))
    if not root.exists():
        return set()
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def _record_part(payload: bytes, file_name: str = "record.xml") -> tuple[str, Any]:
    return ("RecordData", (file_name, payload, "application/xml"))


async def _create_record(
    api: Api,
    batch_guid: str,
    payload: bytes,
    *,
    metadata: str | None = None,
    ready: bool = False,
) -> Response:
    return await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid, "immediatelyReadyForValidation": str(ready).lower()},
        files=[_record_part(payload)],
        data={"MetaData": metadata} if metadata is not None else None,
    )


def _ids(response: Response) -> list[int]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["isSuccess"] is True
    assert body["error"] is None
    return list(body["result"])


async def _mark_ready(api: Api, batch_guid: str, record_ids: list[Any]) -> Response:
    return await api.call(
        "PUT",
        "MarkBatchRecordReadyForValidation",
        {"batchGuid": batch_guid, "batchRecordId": record_ids},
    )


async def _log(api: Api, batch_guid: str, record_id: int) -> list[dict[str, Any]]:
    response = await api.call(
        "GET", "GetBatchRecordLog", {"batchGuid": batch_guid, "batchRecordId": record_id}
    )
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["result"]
    return entries


async def _run_worker_until_record(
    api: Api,
    settings: Settings,
    batch_guid: str,
    record_id: int,
    statuses: set[str],
) -> dict[str, Any]:
    """Run an in-process worker until the record reaches one of `statuses`, and return the
    record."""
    database = Database(settings)
    worker = Worker(settings, database, open_blob_store(settings.storage_url))
    await worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + WORKER_TIMEOUT_SECONDS
        while True:
            record = await api.get_record(batch_guid, record_id)
            if record["statusId"] in statuses:
                return record
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"record {record_id} stayed {record['statusId']}: {record}")
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        await database.dispose()


@dataclass
class _Limited:
    """A second app with a 1 KiB record limit and at most 3 records per request, sharing the
    test's database and blob folder."""

    api: Api
    app: FastAPI


@pytest.fixture
async def limited(
    settings: Settings, tokens: TokenFactory, tenant: uuid.UUID
) -> AsyncIterator[_Limited]:
    limited_settings = settings.model_copy(
        update={"max_record_bytes": SMALL_RECORD_LIMIT, "max_records_per_request": 3}
    )
    application = create_app(limited_settings)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            yield _Limited(Api(http, tenant, tokens.for_tenant(tenant)), application)


# --- CreateBatchRecord ------------------------------------------------------------------------


async def _stored_payloads(
    app: FastAPI, record_ids: list[int]
) -> list[tuple[str | None, bytes | None]]:
    """Return each record's blob key and inline payload, in the order of `record_ids`."""
    async with _database(app).read() as session:
        rows = await session.execute(
            select(BatchRecord.id, BatchRecord.blob_key, BatchRecord.payload).where(
                BatchRecord.id.in_(record_ids)
            )
        )
        found = {int(row[0]): (row[1], row[2]) for row in rows}
    return [found[record_id] for record_id in record_ids]


def _large_order(size: int) -> bytes:
    """A valid order of exactly `size` bytes, padded with a comment."""
    head = valid_order(5).replace(b"</order>", b"<!--")
    tail = b"--></order>\n"
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_create_record(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    ids = _ids(await _create_record(api, batch_guid, valid_order(1)))
    assert len(ids) == 1
    assert isinstance(ids[0], int)
    record = await api.get_record(batch_guid, ids[0])
    assert record["statusId"] == "Creating"
    assert record["metaData"] is None
    batch = await api.get_batch(batch_guid)
    assert batch["totalRecords"] == 1
    assert batch["hasData"] is True
    assert await _stored_payloads(app, ids) == [(None, valid_order(1))]
    assert _blob_files(settings) == set()


async def test_create_record_payload_stored(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    payload = _large_order(settings.inline_payload_max_bytes + 1)
    ids = _ids(await _create_record(api, batch_guid, payload))
    root = Path(settings.storage_url.removeprefix("file://"))
    [stored] = _blob_files(settings)
    assert (root / stored).read_bytes() == payload
    assert await _stored_payloads(app, ids) == [(stored, None)]


async def test_inline_limit_boundary(api: Api, app: FastAPI, settings: Settings) -> None:
    limit = 1000
    batch_guid = await api.create_batch(await api.insert_batch_type())
    at_limit, over_limit = _large_order(limit), _large_order(limit + 1)
    async with api_with_settings(settings, api, inline_payload_max_bytes=limit) as (small_api, _):
        ids = await small_api.upload_ok(batch_guid, [at_limit, over_limit])
    stored = await _stored_payloads(app, ids)
    [blob_file] = _blob_files(settings)
    assert stored[0] == (None, at_limit)
    assert stored[1] == (blob_file, None)


async def test_inline_memory_shared_by_uploads(api: Api, settings: Settings) -> None:
    """Inline payloads reserve memory from one budget per process. A payload that finds the
    budget spent goes to the blob store, and every upload gives its reservation back."""
    batch_guid = await api.create_batch(await api.insert_batch_type())
    payloads = [_large_order(400 + number) for number in range(3)]
    overrides = {"inline_payload_max_bytes": 1000, "inline_payload_memory_bytes": 1000}
    async with api_with_settings(settings, api, **overrides) as (small_api, application):
        budget = application.state.docbatch.inline_budget
        ids = await small_api.upload_ok(batch_guid, payloads)
        available_after_upload = budget.available
        rejected = await small_api.upload(batch_guid, [payloads[0], b""])
        available_after_rejection = budget.available
        stored = await _stored_payloads(application, ids)

    assert [payload for _, payload in stored] == [payloads[0], None, None]
    assert len(_blob_files(settings)) == 2
    assert rejected.status_code == 400
    assert available_after_upload == 1000
    assert available_after_rejection == 1000


async def test_inline_bytes_per_upload_capped(
    api: Api, app: FastAPI, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once an upload has buffered the cap in memory, its further payloads go to the blob
    store."""
    monkeypatch.setattr(record_service, "INLINE_BYTES_PER_UPLOAD", 2 * 1000)
    batch_guid = await api.create_batch(await api.insert_batch_type())
    payloads = [_large_order(1000 - number) for number in range(4)]
    async with api_with_settings(settings, api, inline_payload_max_bytes=1000) as (small_api, _):
        ids = await small_api.upload_ok(batch_guid, payloads)
    stored = await _stored_payloads(app, ids)
    inline = [payload for _, payload in stored]
    assert inline[:2] == payloads[:2]
    assert inline[2:] == [None, None]
    assert len(_blob_files(settings)) == 2


@pytest.mark.parametrize(
    "metadata",
    ['{ "source" : "unit test",\n  "n": 1 }\n', "<meta>\n  <source>unit</source>\n</meta>"],
    ids=["json", "xml"],
)
async def test_create_record_metadata(api: Api, metadata: str) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = _ids(await _create_record(api, batch_guid, valid_order(1), metadata=metadata))
    record = await api.get_record(batch_guid, record_id)
    assert record["metaData"] == metadata


async def test_create_record_metadata_at_limit(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    metadata = json.dumps("x" * (METADATA_LIMIT - 2))
    assert len(metadata.encode()) == METADATA_LIMIT
    [record_id] = _ids(await _create_record(api, batch_guid, valid_order(1), metadata=metadata))
    assert (await api.get_record(batch_guid, record_id))["metaData"] == metadata


async def _assert_nothing_stored(
    api: Api, app: FastAPI, settings: Settings, batch_guid: str, blobs_before: set[str]
) -> None:
    batch = await api.get_batch(batch_guid)
    assert batch["totalRecords"] == 0
    assert batch["hasData"] is False
    assert await _count_records(app) == 0
    assert _blob_files(settings) == blobs_before


async def test_create_record_metadata_invalid(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await _create_record(api, batch_guid, valid_order(1), metadata="source: unit")
    assert_envelope_error(response, 400, "MetaData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_metadata_too_large(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    metadata = json.dumps("x" * (METADATA_LIMIT - 1))
    response = await _create_record(api, batch_guid, valid_order(1), metadata=metadata)
    assert_envelope_error(response, 413, "MetaData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_empty_payload(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await _create_record(api, batch_guid, b"")
    assert_envelope_error(response, 400, "RecordData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_missing_payload(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        files=[("MetaData", (None, b'{"a": 1}'))],
    )
    assert_envelope_error(response, 400, "RecordData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_two_payloads(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        files=[_record_part(valid_order(1), "a.xml"), _record_part(valid_order(2), "b.xml")],
    )
    assert_envelope_error(response, 400, "CreateBatchRecords")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_unknown_field(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        files=[_record_part(valid_order(1))],
        data={"Priority": "high"},
    )
    assert_envelope_error(response, 400, "Priority")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_json_body(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        json={"RecordData": base64.b64encode(valid_order(1)).decode()},
    )
    assert_envelope_error(response, 415, "multipart/form-data")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_truncated_body(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    body = (
        b'--boundary\r\nContent-Disposition: form-data; name="RecordData"; filename="r.xml"\r\n'
        b"\r\n<order><id>1</id>"
    )
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=boundary"},
    )
    assert_envelope_error(response, 400)
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_ready_flag_invalid(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid, "immediatelyReadyForValidation": "maybe"},
        files=[_record_part(valid_order(1))],
    )
    assert_envelope_error(response, 400, "immediatelyReadyForValidation")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_over_limit(limited: _Limited, settings: Settings) -> None:
    api = limited.api
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await _create_record(api, batch_guid, b"x" * (SMALL_RECORD_LIMIT + 1))
    assert_envelope_error(response, 413, str(SMALL_RECORD_LIMIT))
    await _assert_nothing_stored(api, limited.app, settings, batch_guid, set())


async def test_create_record_body_over_limit(limited: _Limited, settings: Settings) -> None:
    api = limited.api
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await _create_record(api, batch_guid, b"x" * (400 * 1024))
    assert_envelope_error(response, 413)
    await _assert_nothing_stored(api, limited.app, settings, batch_guid, set())


async def test_create_record_at_limit(limited: _Limited) -> None:
    api = limited.api
    batch_guid = await api.create_batch(await api.insert_batch_type())
    _ids(await _create_record(api, batch_guid, b"x" * SMALL_RECORD_LIMIT))


async def test_create_records_over_limit(limited: _Limited, settings: Settings) -> None:
    api = limited.api
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(1), b"x" * (SMALL_RECORD_LIMIT + 1)])
    assert_envelope_error(response, 413, str(SMALL_RECORD_LIMIT))
    await _assert_nothing_stored(api, limited.app, settings, batch_guid, set())


async def test_create_records_too_many(limited: _Limited, settings: Settings) -> None:
    api = limited.api
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(number) for number in range(4)])
    assert_envelope_error(response, 413, "3")
    await _assert_nothing_stored(api, limited.app, settings, batch_guid, set())


async def test_create_record_metadata_not_utf8(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch_guid},
        files=[_record_part(valid_order(1)), ("MetaData", (None, b'{"name": "\xff"}'))],
    )
    assert_envelope_error(response, 400, "UTF-8")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_closed_batch(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    closed = await api.complete(batch_guid)
    assert closed.status_code == 200, closed.text
    response = await _create_record(api, batch_guid, valid_order(1))
    assert_envelope_error(response, 409, batch_guid)
    batch = await api.get_batch(batch_guid)
    assert batch == closed.json()["result"]
    assert await _count_records(app) == 0
    assert _blob_files(settings) == set()


async def test_create_records_closed_batch(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1)])
    closed = await api.complete(batch_guid)
    blobs_before = _blob_files(settings)
    response = await api.upload(batch_guid, [valid_order(2), valid_order(3)])
    assert_envelope_error(response, 409, batch_guid)
    assert await api.get_batch(batch_guid) == closed.json()["result"]
    assert await _count_records(app) == 1
    assert _blob_files(settings) == blobs_before


async def test_create_record_unknown_batch(api: Api, app: FastAPI, settings: Settings) -> None:
    missing = str(uuid.uuid4())
    response = await _create_record(api, missing, valid_order(1))
    assert_envelope_error(response, 404, missing)
    assert await _count_records(app) == 0
    assert _blob_files(settings) == set()


async def test_create_record_malformed_batch_guid(api: Api) -> None:
    response = await _create_record(api, "batch", valid_order(1))
    assert_envelope_error(response, 400, "batchGuid")


async def test_create_record_ready_validated_while_open(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = _ids(await _create_record(api, batch_guid, valid_order(4), ready=True))
    assert (await api.get_record(batch_guid, record_id))["statusId"] == "ReadyForValidation"
    record = await _run_worker_until_record(
        api, settings, batch_guid, record_id, {"Validated", "ValidationFailed"}
    )
    assert record["statusId"] == "Validated"
    assert record["batchRecordReference"] == "ORD-4"
    batch = await api.get_batch(batch_guid)
    assert batch["statusId"] == "Creating"
    assert batch["validatedRecords"] == 1
    assert batch["failedValidatedRecords"] == 0


async def test_create_record_ready_invalid_fails(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = _ids(await _create_record(api, batch_guid, invalid_order(6), ready=True))
    record = await _run_worker_until_record(
        api, settings, batch_guid, record_id, {"Validated", "ValidationFailed"}
    )
    assert record["statusId"] == "ValidationFailed"
    assert record["hasLogData"] is True
    batch = await api.get_batch(batch_guid)
    assert batch["statusId"] == "Creating"
    assert batch["failedValidatedRecords"] == 1
    assert batch["hasLogData"] is True


async def test_ready_record_counted_once(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [early] = _ids(await _create_record(api, batch_guid, valid_order(1), ready=True))
    await _run_worker_until_record(api, settings, batch_guid, early, {"Validated"})
    await api.upload_ok(batch_guid, [valid_order(2)])
    completed = await api.complete(batch_guid)
    assert completed.status_code == 200, completed.text
    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == "Completed"
    assert batch["totalRecords"] == 2
    assert batch["validatedRecords"] == 2
    assert batch["completedRecords"] == 2
    assert (await api.get_record(batch_guid, early))["statusId"] == "Completed"


# --- CreateBatchRecords -----------------------------------------------------------------------


async def test_create_records(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    metadata = {"record-0.xml": '{"row": 0}', "record-2.xml": "<row>2</row>"}
    ids = _ids(
        await api.upload(
            batch_guid, [valid_order(1), valid_order(2), valid_order(3)], metadata=metadata
        )
    )
    assert len(ids) == 3
    assert ids == sorted(ids)
    records = [await api.get_record(batch_guid, record_id) for record_id in ids]
    assert [record["metaData"] for record in records] == ['{"row": 0}', None, "<row>2</row>"]
    assert [record["statusId"] for record in records] == ["Creating"] * 3
    assert (await api.get_batch(batch_guid))["totalRecords"] == 3


async def test_create_records_ready(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    ids = _ids(await api.upload(batch_guid, [valid_order(1), valid_order(2)], ready=True))
    statuses = [(await api.get_record(batch_guid, record_id))["statusId"] for record_id in ids]
    assert statuses == ["ReadyForValidation", "ReadyForValidation"]


async def test_create_records_empty_part(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(1), b"", valid_order(3)])
    assert_envelope_error(response, 400, "RecordData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_empty_last_part(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(1), valid_order(2), b""])
    assert_envelope_error(response, 400, "RecordData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_unknown_file_in_metadata(
    api: Api, app: FastAPI, settings: Settings
) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(1)], metadata={"missing.xml": '{"a": 1}'})
    assert_envelope_error(response, 400, "missing.xml")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_metadata_not_object(
    api: Api, app: FastAPI, settings: Settings
) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecords",
        {"batchGuid": batch_guid},
        files=[_record_part(valid_order(1), "record-0.xml")],
        data={"MetaData": '["record-0.xml"]'},
    )
    assert_envelope_error(response, 400, "MetaData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_metadata_value_invalid(
    api: Api, app: FastAPI, settings: Settings
) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.upload(batch_guid, [valid_order(1)], metadata={"record-0.xml": "a: b"})
    assert_envelope_error(response, 400, "record-0.xml")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_metadata_value_too_large(
    api: Api, app: FastAPI, settings: Settings
) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    large = json.dumps("x" * METADATA_LIMIT)
    response = await api.upload(batch_guid, [valid_order(1)], metadata={"record-0.xml": large})
    assert_envelope_error(response, 413, "record-0.xml")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_no_parts(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "POST",
        "CreateBatchRecords",
        {"batchGuid": batch_guid},
        files=[("MetaData", (None, b"{}"))],
    )
    assert_envelope_error(response, 400, "RecordData")
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_records_nul_file_name(api: Api, app: FastAPI, settings: Settings) -> None:
    # PostgreSQL text columns cannot store NUL, so both backends must reject it alike.
    batch_guid = await api.create_batch(await api.insert_batch_type())
    body = (
        b"--part\r\n"
        b'Content-Disposition: form-data; name="RecordData"; filename="order\x001.xml"\r\n'
        b"\r\n" + valid_order(1) + b"\r\n--part--\r\n"
    )
    response = await api.call(
        "POST",
        "CreateBatchRecords",
        {"batchGuid": batch_guid},
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=part"},
    )
    assert_envelope_error(response, 400)
    await _assert_nothing_stored(api, app, settings, batch_guid, set())


async def test_create_record_blob_store_down(
    api: Api, settings: Settings, tokens: TokenFactory, tenant: uuid.UUID, tmp_path: Path
) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the blob folder should be")
    broken = settings.model_copy(update={"storage_url": f"file://{blocker}/blobs"})
    application = create_app(broken)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            broken_api = Api(http, tenant, tokens.for_tenant(tenant))
            payload = _large_order(settings.inline_payload_max_bytes + 1)
            response = await _create_record(broken_api, batch_guid, payload)
    assert_envelope_error(response, 503)
    assert response.headers["retry-after"]
    batch = await api.get_batch(batch_guid)
    assert batch["totalRecords"] == 0
    assert batch["hasData"] is False


async def test_create_records_unknown_batch(api: Api, app: FastAPI) -> None:
    missing = str(uuid.uuid4())
    response = await api.upload(missing, [valid_order(1)])
    assert_envelope_error(response, 404, missing)
    assert await _count_records(app) == 0


# --- MarkBatchRecordReadyForValidation --------------------------------------------------------


async def test_mark_ready_repeated_ids(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    first, second, third = await api.upload_ok(
        batch_guid, [valid_order(1), valid_order(2), valid_order(3)]
    )
    response = await _mark_ready(api, batch_guid, [third, first, third, first])
    assert _ids(response) == [third, first]
    statuses = [
        (await api.get_record(batch_guid, record_id))["statusId"]
        for record_id in (first, second, third)
    ]
    assert statuses == ["ReadyForValidation", "Creating", "ReadyForValidation"]


async def test_mark_ready_unknown_id(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    first, second = await api.upload_ok(batch_guid, [valid_order(1), valid_order(2)])
    before = [await api.get_record(batch_guid, record_id) for record_id in (first, second)]
    unknown = second + 1000
    response = await _mark_ready(api, batch_guid, [first, unknown, second])
    assert_envelope_error(response, 404, str(unknown))
    after = [await api.get_record(batch_guid, record_id) for record_id in (first, second)]
    assert after == before


async def test_mark_ready_other_batch_id(api: Api) -> None:
    batch_type = await api.insert_batch_type()
    batch_guid = await api.create_batch(batch_type)
    other_batch = await api.create_batch(batch_type)
    [own] = await api.upload_ok(batch_guid, [valid_order(1)])
    [foreign] = await api.upload_ok(other_batch, [valid_order(2)])
    response = await _mark_ready(api, batch_guid, [own, foreign])
    assert_envelope_error(response, 404, str(foreign))
    assert (await api.get_record(batch_guid, own))["statusId"] == "Creating"
    assert (await api.get_record(other_batch, foreign))["statusId"] == "Creating"


async def test_mark_ready_further_along(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [validated] = _ids(await _create_record(api, batch_guid, valid_order(1), ready=True))
    await _run_worker_until_record(api, settings, batch_guid, validated, {"Validated"})
    [fresh] = await api.upload_ok(batch_guid, [valid_order(2)])
    before = await api.get_record(batch_guid, validated)
    response = await _mark_ready(api, batch_guid, [validated, fresh])
    assert _ids(response) == [validated, fresh]
    assert await api.get_record(batch_guid, validated) == before
    assert (await api.get_record(batch_guid, fresh))["statusId"] == "ReadyForValidation"
    assert (await api.get_batch(batch_guid))["validatedRecords"] == 1


async def test_mark_ready_validated_by_worker(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = await api.upload_ok(batch_guid, [invalid_order(1)])
    _ids(await _mark_ready(api, batch_guid, [record_id]))
    record = await _run_worker_until_record(
        api, settings, batch_guid, record_id, {"Validated", "ValidationFailed"}
    )
    assert record["statusId"] == "ValidationFailed"
    assert (await api.get_batch(batch_guid))["statusId"] == "Creating"


@pytest.mark.parametrize("record_id", ["abc", "1.5", "0", "-3"])
async def test_mark_ready_invalid_id(api: Api, record_id: str) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [existing] = await api.upload_ok(batch_guid, [valid_order(1)])
    response = await _mark_ready(api, batch_guid, [existing, record_id])
    assert_envelope_error(response, 400, "batchRecordId")
    assert (await api.get_record(batch_guid, existing))["statusId"] == "Creating"


async def test_mark_ready_id_too_large(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [existing] = await api.upload_ok(batch_guid, [valid_order(1)])
    response = await _mark_ready(api, batch_guid, [existing, 2**63])
    assert_envelope_error(response, 400, "batchRecordId")
    assert (await api.get_record(batch_guid, existing))["statusId"] == "Creating"


async def test_mark_ready_missing_id(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call("PUT", "MarkBatchRecordReadyForValidation", {"batchGuid": batch_guid})
    assert_envelope_error(response, 400, "batchRecordId")


async def test_mark_ready_unknown_batch(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await _mark_ready(api, missing, [1])
    assert_envelope_error(response, 404, missing)


# --- GetBatchRecord ---------------------------------------------------------------------------


async def test_get_record_shape(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = _ids(await _create_record(api, batch_guid, valid_order(1), metadata="{}"))
    response = await api.call(
        "GET", "GetBatchRecord", {"batchGuid": batch_guid, "batchRecordId": record_id}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["isSuccess", "error", "result"]
    record = body["result"]
    assert list(record) == RECORD_FIELDS
    assert record["batchRecordId"] == record_id
    assert record["batchGuid"] == batch_guid
    assert record["batchRecordReference"] is None
    assert TIMESTAMP.match(record["createdDate"])
    assert record["completedDate"] is None
    assert record["statusId"] == "Creating"
    assert TIMESTAMP.match(record["updatedDate"])
    assert record["hasLogData"] is False
    assert record["hasDocumentData"] is False
    assert record["isRetrieved"] is False
    assert record["metaData"] == "{}"


async def test_get_record_after_processing(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = await api.upload_ok(batch_guid, [valid_order(8)])
    await api.complete(batch_guid)
    await run_worker_until(api, settings, batch_guid)
    record = await api.get_record(batch_guid, record_id)
    assert record["statusId"] == "Completed"
    assert record["batchRecordReference"] == "ORD-8"
    assert TIMESTAMP.match(record["completedDate"])


async def test_get_record_other_batch(api: Api) -> None:
    batch_type = await api.insert_batch_type()
    batch_guid = await api.create_batch(batch_type)
    other_batch = await api.create_batch(batch_type)
    [foreign] = await api.upload_ok(other_batch, [valid_order(1)])
    response = await api.call(
        "GET", "GetBatchRecord", {"batchGuid": batch_guid, "batchRecordId": foreign}
    )
    assert_envelope_error(response, 404, str(foreign))


async def test_get_record_unknown_batch(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await api.call("GET", "GetBatchRecord", {"batchGuid": missing, "batchRecordId": 1})
    assert_envelope_error(response, 404, missing)


@pytest.mark.parametrize("record_id", ["abc", "0"])
async def test_get_record_invalid_id(api: Api, record_id: str) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "GET", "GetBatchRecord", {"batchGuid": batch_guid, "batchRecordId": record_id}
    )
    assert_envelope_error(response, 400, "batchRecordId")


async def test_get_record_id_too_large(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "GET", "GetBatchRecord", {"batchGuid": batch_guid, "batchRecordId": 2**63}
    )
    assert_envelope_error(response, 400, "batchRecordId")


# --- GetBatchRecordLog ------------------------------------------------------------------------


async def test_log_of_invalid_record(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    valid_id, invalid_id = await api.upload_ok(batch_guid, [valid_order(1), invalid_order(2)])
    await api.complete(batch_guid)
    await run_worker_until(api, settings, batch_guid)
    entries = await _log(api, batch_guid, invalid_id)
    assert entries
    assert all(list(entry) == LOG_FIELDS for entry in entries)
    assert all(TIMESTAMP.match(entry["timestamp"]) for entry in entries)
    assert {entry["level"] for entry in entries} == {"Error"}
    assert {entry["stage"] for entry in entries} == {"Validation"}
    assert any("line 3" in entry["message"] for entry in entries), entries
    assert any("lots" in entry["message"] for entry in entries), entries
    assert await _log(api, batch_guid, valid_id) == []


async def test_log_time_order(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    payload = b"<order>\n  <amount>x</amount>\n  <id>1</id>\n  <extra/>\n</order>\n"
    [record_id] = await api.upload_ok(batch_guid, [payload])
    await api.complete(batch_guid)
    await run_worker_until(api, settings, batch_guid)
    entries = await _log(api, batch_guid, record_id)
    timestamps = [entry["timestamp"] for entry in entries]
    assert timestamps == sorted(timestamps)


async def test_log_doctype_rejected(api: Api, settings: Settings) -> None:
    payload = (
        b'<?xml version="1.0"?>\n<!DOCTYPE order [<!ENTITY secret SYSTEM "file:///etc/hostname">]>\n'
        b"<order><id>&secret;</id><amount>1</amount></order>\n"
    )
    batch_guid = await api.create_batch(await api.insert_batch_type())
    [record_id] = await api.upload_ok(batch_guid, [payload])
    await api.complete(batch_guid)
    await run_worker_until(api, settings, batch_guid)
    record = await api.get_record(batch_guid, record_id)
    assert record["statusId"] == "ValidationFailed"
    assert record["batchRecordReference"] is None
    messages = [entry["message"] for entry in await _log(api, batch_guid, record_id)]
    assert any("DOCTYPE" in message for message in messages), messages


async def test_log_unknown_record(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call(
        "GET", "GetBatchRecordLog", {"batchGuid": batch_guid, "batchRecordId": 999}
    )
    assert_envelope_error(response, 404, "999")


# Line and message fragment of each invalid example, as listed in examples/README.md.
FACTUR_X_INVALID = {
    "missing-required-element.xml": ("line 14,", "IssueDateTime"),
    "wrong-data-type.xml": ("line 193,", "'982,37' is not a valid value of the atomic type"),
    "unknown-element.xml": ("line 123,", "OrderReference"),
    "malformed-xml.xml": ("line 135, column 42", "xmlParseEntityRef: no name"),
}
FACTUR_X_VALID = {
    "invoice-FA-2024-00117.xml": "FA-2024-00117",
    "invoice-FA-2024-00118.xml": "FA-2024-00118",
    "invoice-FA-2024-00131.xml": "FA-2024-00131",
    "creditnote-AV-2024-0009.xml": "AV-2024-0009",
    "invoice-RE-2024-3381.xml": "RE-2024-3381",
    "invoice-NE-2024-051877.xml": "NE-2024-051877",
}


async def test_factur_x_examples(
    api: Api, settings: Settings, examples_dir: Path, subtests: pytest.Subtests
) -> None:
    folder = examples_dir / "xml"
    batch_type = await api.insert_batch_type(
        "factur-x",
        dataSchemaBase64=base64.b64encode((folder / "schema.zip").read_bytes()).decode(),
        referenceDataPath=FACTUR_X_REFERENCE,
        batchCompletionIgnoresRecordsInError=True,
    )
    batch_guid = await api.create_batch(batch_type)
    names = [*FACTUR_X_INVALID, *FACTUR_X_VALID]
    payloads = [
        (folder / "records" / ("invalid" if name in FACTUR_X_INVALID else "valid") / name)
        for name in names
    ]
    ids = await api.upload_ok(batch_guid, [path.read_bytes() for path in payloads])
    await api.complete(batch_guid)

    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == "Completed"
    assert batch["failedValidatedRecords"] == len(FACTUR_X_INVALID)
    assert batch["validatedRecords"] == len(FACTUR_X_VALID)

    record_ids = dict(zip(names, ids, strict=True))
    for name, (line, fragment) in FACTUR_X_INVALID.items():
        with subtests.test(file=name):
            record = await api.get_record(batch_guid, record_ids[name])
            assert record["statusId"] == "ValidationFailed"
            messages = [entry["message"] for entry in await _log(api, batch_guid, record_ids[name])]
            assert any(message.startswith(line) for message in messages), messages
            assert any(fragment in message for message in messages), messages
    for name, reference in FACTUR_X_VALID.items():
        with subtests.test(file=name):
            record = await api.get_record(batch_guid, record_ids[name])
            assert record["statusId"] == "Completed"
            assert record["batchRecordReference"] == reference


# JSON Pointer and message fragment of each invalid example, as listed in examples/README.md.
CFF_INVALID = {
    "missing-required-property.json": ("at /:", "'message' is a required property"),
    "wrong-data-type.json": ("at /authors:", "is not of type 'array'"),
    "unknown-property.json": ("at /:", "('licence' was unexpected)"),
}


async def test_citation_examples(
    api: Api, settings: Settings, examples_dir: Path, subtests: pytest.Subtests
) -> None:
    folder = examples_dir / "json"
    batch_type = await api.insert_batch_type(
        "citations",
        dataType="Json",
        dataSchemaBase64=base64.b64encode((folder / "schema.json").read_bytes()).decode(),
        referenceDataPath="/doi",
    )
    batch_guid = await api.create_batch(batch_type)
    valid_paths = sorted((folder / "records" / "valid").glob("*.json"))
    names = [*CFF_INVALID, *(path.name for path in valid_paths)]
    contents = [(folder / "records" / "invalid" / name).read_bytes() for name in CFF_INVALID]
    contents += [path.read_bytes() for path in valid_paths]
    ids = await api.upload_ok(batch_guid, contents)
    await api.complete(batch_guid)
    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == "Error"
    assert batch["validatedRecords"] == len(valid_paths)
    record_ids = dict(zip(names, ids, strict=True))
    for name, (pointer, fragment) in CFF_INVALID.items():
        with subtests.test(file=name):
            messages = [entry["message"] for entry in await _log(api, batch_guid, record_ids[name])]
            assert any(
                message.startswith(pointer) and fragment in message for message in messages
            ), messages
    for path in valid_paths:
        with subtests.test(file=path.name):
            record = await api.get_record(batch_guid, record_ids[path.name])
            assert record["statusId"] == "Completed"
            assert record["batchRecordReference"] == json.loads(path.read_bytes())["doi"]

"""CreateBatch, GetBatch, MarkBatchUploadComplete and ApproveBatch."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import Response
from sqlalchemy import func, select

from docbatch.core.settings import Settings
from docbatch.queue.jobs import JobKind
from docbatch.store.database import Database
from docbatch.store.models import Batch, BatchRecord, Job
from tests.support import Api, assert_envelope_error, invalid_order, run_worker_until, valid_order

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
BATCH_FIELDS = [
    "batchGuid",
    "createdDate",
    "hasCreationCompleted",
    "totalRecords",
    "completedRecords",
    "errorRecords",
    "validatedRecords",
    "failedValidatedRecords",
    "updatedDate",
    "completedDate",
    "deletedDate",
    "statusId",
    "hasData",
    "hasLogData",
    "hasDocumentData",
    "batchType",
    "batchReference",
]


def _database(app: FastAPI) -> Database:
    database: Database = app.state.docbatch.database
    return database


async def _count_batches(app: FastAPI) -> int:
    async with _database(app).read() as session:
        return int(await session.scalar(select(func.count()).select_from(Batch)) or 0)


async def _count_records(app: FastAPI, batch_guid: str) -> int:
    statement = (
        select(func.count())
        .select_from(BatchRecord)
        .join(Batch, Batch.id == BatchRecord.batch_id)
        .where(Batch.guid == uuid.UUID(batch_guid))
    )
    async with _database(app).read() as session:
        return int(await session.scalar(statement) or 0)


async def _count_processing_jobs(app: FastAPI, batch_guid: str) -> int:
    """Count the process-batch jobs ever enqueued for the batch, finished ones included."""
    statement = (
        select(func.count())
        .select_from(Job)
        .join(Batch, Batch.id == Job.batch_id)
        .where(Batch.guid == uuid.UUID(batch_guid), Job.kind == JobKind.PROCESS_BATCH.value)
    )
    async with _database(app).read() as session:
        return int(await session.scalar(statement) or 0)


def _result(response: Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["isSuccess"] is True
    assert body["error"] is None
    return body["result"]


# --- CreateBatch ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_create_batch(api: Api, method: str) -> None:
    batch_type = await api.insert_batch_type()
    response = await api.call(
        method, "CreateBatch", {"batchTypeGuid": batch_type, "batchReference": "march-run"}
    )
    guid = _result(response)
    assert isinstance(guid, str)
    assert GUID.match(guid)
    batch = await api.get_batch(guid)
    assert batch["batchGuid"] == guid
    assert batch["statusId"] == "Creating"
    assert batch["batchReference"] == "march-run"
    assert batch["hasCreationCompleted"] is False
    assert batch["totalRecords"] == 0


async def test_create_without_reference(api: Api) -> None:
    batch = await api.get_batch(await api.create_batch(await api.insert_batch_type()))
    assert batch["batchReference"] is None


async def test_create_reference_at_limit(api: Api) -> None:
    reference = "r" * 200
    batch_guid = await api.create_batch(await api.insert_batch_type(), reference)
    assert (await api.get_batch(batch_guid))["batchReference"] == reference


async def test_create_reference_too_long(api: Api, app: FastAPI) -> None:
    batch_type = await api.insert_batch_type()
    response = await api.call(
        "POST", "CreateBatch", {"batchTypeGuid": batch_type, "batchReference": "r" * 201}
    )
    assert_envelope_error(response, 400, "batchReference", "201")
    assert await _count_batches(app) == 0


async def test_create_reference_unicode(api: Api) -> None:
    reference = "é" * 199 + "😀"
    batch_guid = await api.create_batch(await api.insert_batch_type(), reference)
    assert (await api.get_batch(batch_guid))["batchReference"] == reference


async def test_create_reference_with_nul(api: Api, app: FastAPI) -> None:
    # PostgreSQL text columns cannot store NUL, so both backends must reject it alike.
    batch_type = await api.insert_batch_type()
    response = await api.call(
        "POST", "CreateBatch", {"batchTypeGuid": batch_type, "batchReference": "run\x001"}
    )
    assert_envelope_error(response, 400, "batchReference")
    assert await _count_batches(app) == 0


async def test_create_unknown_type(api: Api, app: FastAPI) -> None:
    missing = str(uuid.uuid4())
    response = await api.call("POST", "CreateBatch", {"batchTypeGuid": missing})
    assert_envelope_error(response, 404, missing)
    assert await _count_batches(app) == 0


async def test_create_malformed_type_guid(api: Api, app: FastAPI) -> None:
    response = await api.call("POST", "CreateBatch", {"batchTypeGuid": "orders"})
    assert_envelope_error(response, 400, "batchTypeGuid")
    assert await _count_batches(app) == 0


async def test_create_missing_type_guid(api: Api, app: FastAPI) -> None:
    response = await api.call("POST", "CreateBatch")
    assert_envelope_error(response, 400, "batchTypeGuid")
    assert await _count_batches(app) == 0


async def test_create_upper_case_type_guid(api: Api) -> None:
    batch_type = await api.insert_batch_type()
    response = await api.call("POST", "CreateBatch", {"batchTypeGuid": batch_type.upper()})
    guid = _result(response)
    batch = await api.get_batch(guid)
    assert batch["batchType"]["batchTypeGuid"] == batch_type


# --- GetBatch ---------------------------------------------------------------------------------


async def test_get_batch_shape(api: Api) -> None:
    batch_type = await api.insert_batch_type()
    batch_guid = await api.create_batch(batch_type, "shape")
    response = await api.call("GET", "GetBatch", {"batchGuid": batch_guid})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["isSuccess", "error", "result"]
    batch = body["result"]
    assert list(batch) == BATCH_FIELDS
    assert batch["batchGuid"] == batch_guid
    assert TIMESTAMP.match(batch["createdDate"])
    assert TIMESTAMP.match(batch["updatedDate"])
    assert batch["completedDate"] is None
    assert batch["deletedDate"] is None
    assert batch["hasCreationCompleted"] is False
    counters = [
        "totalRecords",
        "completedRecords",
        "errorRecords",
        "validatedRecords",
        "failedValidatedRecords",
    ]
    assert {name: batch[name] for name in counters} == dict.fromkeys(counters, 0)
    assert batch["statusId"] == "Creating"
    assert batch["hasData"] is False
    assert batch["hasLogData"] is False
    assert batch["hasDocumentData"] is False
    assert batch["batchReference"] == "shape"
    batch_type_response = await api.call("GET", "GetBatchType", {"batchTypeGuid": batch_type})
    assert batch["batchType"] == batch_type_response.json()["result"]


async def test_get_batch_has_data(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1), valid_order(2)])
    batch = await api.get_batch(batch_guid)
    assert batch["totalRecords"] == 2
    assert batch["hasData"] is True


async def test_get_batch_upper_case(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    response = await api.call("GET", "GetBatch", {"batchGuid": batch_guid.upper()})
    batch = _result(response)
    assert batch["batchGuid"] == batch_guid


async def test_get_batch_unknown(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await api.call("GET", "GetBatch", {"batchGuid": missing})
    assert_envelope_error(response, 404, missing)


async def test_get_batch_malformed_guid(api: Api) -> None:
    response = await api.call("GET", "GetBatch", {"batchGuid": "not-a-guid"})
    assert_envelope_error(response, 400, "batchGuid")


async def test_get_batch_missing_guid(api: Api) -> None:
    response = await api.call("GET", "GetBatch")
    assert_envelope_error(response, 400, "batchGuid")


# --- MarkBatchUploadComplete ------------------------------------------------------------------


async def test_complete_queues(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1)])
    before = await api.get_batch(batch_guid)
    batch = _result(await api.complete(batch_guid))
    assert list(batch) == BATCH_FIELDS
    assert batch["statusId"] == "Queued"
    assert batch["hasCreationCompleted"] is True
    assert batch["totalRecords"] == 1
    assert batch["updatedDate"] >= before["updatedDate"]
    assert await api.get_batch(batch_guid) == batch
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_complete_repeat_unchanged(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    first = _result(await api.complete(batch_guid))
    second = _result(await api.complete(batch_guid))
    assert second == first
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_complete_upper_case_guid(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    batch = _result(await api.complete(batch_guid.upper()))
    assert batch["batchGuid"] == batch_guid
    assert batch["statusId"] == "Queued"


async def test_complete_awaits_approval(api: Api, app: FastAPI) -> None:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch_guid = await api.create_batch(batch_type)
    batch = _result(await api.complete(batch_guid))
    assert batch["statusId"] == "AwaitingApproval"
    assert batch["hasCreationCompleted"] is True
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_complete_awaiting_repeat_unchanged(api: Api, app: FastAPI) -> None:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch_guid = await api.create_batch(batch_type)
    first = _result(await api.complete(batch_guid))
    second = _result(await api.complete(batch_guid))
    assert second == first
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_complete_count_mismatch(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1), valid_order(2)])
    before = await api.get_batch(batch_guid)
    response = await api.complete(batch_guid, expectedRecordCount=7)
    message = assert_envelope_error(response, 409)
    assert re.search(r"\b2\b", message), message
    assert re.search(r"\b7\b", message), message
    assert await api.get_batch(batch_guid) == before
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_complete_count_match_after_mismatch(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1)])
    mismatch = await api.complete(batch_guid, expectedRecordCount=2)
    assert_envelope_error(mismatch, 409)
    await api.upload_ok(batch_guid, [valid_order(2)])
    batch = _result(await api.complete(batch_guid, expectedRecordCount=2))
    assert batch["statusId"] == "Queued"
    assert batch["totalRecords"] == 2
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_complete_count_zero(api: Api) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    batch = _result(await api.complete(batch_guid, expectedRecordCount=0))
    assert batch["statusId"] == "Queued"


@pytest.mark.parametrize("count", ["-1", "two", "1.5", ""])
async def test_complete_count_invalid(api: Api, app: FastAPI, count: str) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    before = await api.get_batch(batch_guid)
    response = await api.complete(batch_guid, expectedRecordCount=count)
    assert_envelope_error(response, 400, "expectedRecordCount")
    assert await api.get_batch(batch_guid) == before
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_complete_count_too_large(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    before = await api.get_batch(batch_guid)
    response = await api.complete(batch_guid, expectedRecordCount=2**63)
    assert_envelope_error(response, 400, "expectedRecordCount")
    assert await api.get_batch(batch_guid) == before
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_complete_unknown(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await api.complete(missing)
    assert_envelope_error(response, 404, missing)


async def test_complete_malformed_guid(api: Api) -> None:
    response = await api.complete("batch-1")
    assert_envelope_error(response, 400, "batchGuid")


async def test_complete_marks_records_ready(api: Api) -> None:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch_guid = await api.create_batch(batch_type)
    ids = await api.upload_ok(batch_guid, [valid_order(1), valid_order(2)])
    assert (await api.get_record(batch_guid, ids[0]))["statusId"] == "Creating"
    _result(await api.complete(batch_guid))
    statuses = [(await api.get_record(batch_guid, record))["statusId"] for record in ids]
    assert statuses == ["ReadyForValidation", "ReadyForValidation"]


async def test_complete_empty_batch_settles(api: Api, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    _result(await api.complete(batch_guid))
    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == "Completed"
    assert TIMESTAMP.match(batch["completedDate"])
    assert batch["totalRecords"] == 0


async def test_complete_after_settled_unchanged(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1)])
    _result(await api.complete(batch_guid))
    settled = await run_worker_until(api, settings, batch_guid)
    assert settled["statusId"] == "Completed"
    again = _result(await api.complete(batch_guid))
    assert again == settled
    assert await _count_processing_jobs(app, batch_guid) == 1


@pytest.mark.parametrize(("ignores_errors", "status"), [(True, "Completed"), (False, "Error")])
async def test_settle_with_invalid_record(
    api: Api, settings: Settings, ignores_errors: bool, status: str
) -> None:
    batch_type = await api.insert_batch_type(batchCompletionIgnoresRecordsInError=ignores_errors)
    batch_guid = await api.create_batch(batch_type)
    await api.upload_ok(batch_guid, [valid_order(1), invalid_order(2)])
    _result(await api.complete(batch_guid))
    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == status
    assert batch["totalRecords"] == 2
    assert batch["validatedRecords"] == 1
    assert batch["failedValidatedRecords"] == 1
    assert batch["completedRecords"] == 1
    assert batch["errorRecords"] == 0
    assert batch["hasLogData"] is True
    assert TIMESTAMP.match(batch["completedDate"])


# --- ApproveBatch -----------------------------------------------------------------------------


async def _awaiting_batch(api: Api) -> str:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch_guid = await api.create_batch(batch_type)
    await api.upload_ok(batch_guid, [valid_order(1)])
    _result(await api.complete(batch_guid))
    return batch_guid


async def _approve(api: Api, batch_guid: str) -> Response:
    return await api.call("PUT", "ApproveBatch", {"batchGuid": batch_guid})


async def test_approve_queues(api: Api, app: FastAPI) -> None:
    batch_guid = await _awaiting_batch(api)
    batch = _result(await _approve(api, batch_guid))
    assert list(batch) == BATCH_FIELDS
    assert batch["statusId"] == "Queued"
    assert batch["hasCreationCompleted"] is True
    assert await api.get_batch(batch_guid) == batch
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_approve_repeat_unchanged(api: Api, app: FastAPI) -> None:
    batch_guid = await _awaiting_batch(api)
    first = _result(await _approve(api, batch_guid))
    second = _result(await _approve(api, batch_guid))
    assert second == first
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_approve_creating_conflict(api: Api, app: FastAPI) -> None:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch_guid = await api.create_batch(batch_type)
    before = await api.get_batch(batch_guid)
    response = await _approve(api, batch_guid)
    assert_envelope_error(response, 409, batch_guid, "MarkBatchUploadComplete")
    assert await api.get_batch(batch_guid) == before
    assert await _count_processing_jobs(app, batch_guid) == 0


async def test_approve_unknown(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await _approve(api, missing)
    assert_envelope_error(response, 404, missing)


async def test_approve_queued_unchanged(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    queued = _result(await api.complete(batch_guid))
    again = _result(await _approve(api, batch_guid))
    assert again == queued
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_approve_malformed_guid(api: Api) -> None:
    response = await _approve(api, "{batch}")
    assert_envelope_error(response, 400, "batchGuid")


async def test_approve_then_settles(api: Api, app: FastAPI, settings: Settings) -> None:
    batch_guid = await _awaiting_batch(api)
    _result(await _approve(api, batch_guid))
    batch = await run_worker_until(api, settings, batch_guid)
    assert batch["statusId"] == "Completed"
    assert batch["completedRecords"] == 1
    again = _result(await _approve(api, batch_guid))
    assert again == batch
    assert await _count_processing_jobs(app, batch_guid) == 1


# --- concurrency ------------------------------------------------------------------------------


async def test_complete_concurrent_one_job(api: Api, app: FastAPI) -> None:
    batch_guid = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch_guid, [valid_order(1)])
    responses = await asyncio.gather(*(api.complete(batch_guid) for _ in range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    results = [response.json()["result"] for response in responses]
    assert all(result == results[0] for result in results)
    assert results[0]["statusId"] == "Queued"
    assert await _count_processing_jobs(app, batch_guid) == 1


async def test_upload_racing_close(api: Api, app: FastAPI, subtests: pytest.Subtests) -> None:
    batch_type = await api.insert_batch_type()
    for attempt in range(5):
        with subtests.test(attempt=attempt):
            batch_guid = await api.create_batch(batch_type)
            upload, close = await asyncio.gather(
                api.upload(batch_guid, [valid_order(1), valid_order(2)]), api.complete(batch_guid)
            )
            assert close.status_code == 200, close.text
            assert upload.status_code in (200, 409), upload.text
            accepted = 2 if upload.status_code == 200 else 0
            batch = await api.get_batch(batch_guid)
            assert batch["hasCreationCompleted"] is True
            assert batch["totalRecords"] == accepted
            assert await _count_records(app, batch_guid) == accepted

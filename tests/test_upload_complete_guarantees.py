"""The guarantees of MarkBatchUploadComplete under real concurrency.

Requests go through the ASGI client with `asyncio.gather`, so their transactions interleave at
the database: row locks on PostgreSQL, the single writer lock on SQLite.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text, update
from sqlalchemy.exc import OperationalError

from docbatch.auth.principal import Principal, TenantScope, grant_tenant
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.storage.blobs import FileBlobStore, open_blob_store
from docbatch.store.database import Database
from docbatch.store.models import Batch, BatchRecord, Job, RecordStatus
from docbatch.store.records import NewRecord, insert_records
from tests.support import (
    Api,
    api_with_settings,
    assert_envelope_error,
    run_worker_until,
    valid_order,
)

CONCURRENT_CALLS = 50


def _scope_of(tenant: uuid.UUID) -> TenantScope:
    scope = grant_tenant(Principal("seed", frozenset(), frozenset({tenant})), tenant)
    assert scope is not None
    return scope


async def _batch_id(settings: Settings, batch_guid: str) -> int:
    database = Database(settings)
    try:
        async with database.read() as session:
            batch_id = await session.scalar(
                select(Batch.id).where(Batch.guid == uuid.UUID(batch_guid))
            )
    finally:
        await database.dispose()
    assert batch_id is not None, f"batch {batch_guid} is not in the database"
    return int(batch_id)


async def _jobs_of(settings: Settings, batch_guid: str) -> list[Job]:
    batch_id = await _batch_id(settings, batch_guid)
    database = Database(settings)
    try:
        async with database.read() as session:
            rows = await session.scalars(select(Job).where(Job.batch_id == batch_id))
            return list(rows)
    finally:
        await database.dispose()


async def _record_ids_of(settings: Settings, batch_guid: str) -> set[int]:
    batch_id = await _batch_id(settings, batch_guid)
    database = Database(settings)
    try:
        async with database.read() as session:
            rows = await session.scalars(
                select(BatchRecord.id).where(BatchRecord.batch_id == batch_id)
            )
            return set(rows)
    finally:
        await database.dispose()


async def _inline_payload_count(settings: Settings, batch_guid: str) -> int:
    batch_id = await _batch_id(settings, batch_guid)
    database = Database(settings)
    try:
        async with database.read() as session:
            count = await session.scalar(
                select(func.count()).where(
                    BatchRecord.batch_id == batch_id, BatchRecord.payload.is_not(None)
                )
            )
            return int(count or 0)
    finally:
        await database.dispose()


def _blob_files(settings: Settings, tenant: uuid.UUID, batch_guid: str) -> list[Path]:
    store = open_blob_store(settings.storage_url)
    assert isinstance(store, FileBlobStore)
    folder = store.root / "records" / str(tenant) / batch_guid
    return [path for path in folder.rglob("*") if path.is_file()]


def _incoming_files(settings: Settings) -> list[Path]:
    store = open_blob_store(settings.storage_url)
    assert isinstance(store, FileBlobStore)
    return [path for path in (store.root / ".incoming").rglob("*") if path.is_file()]


async def _approve(api: Api, batch_guid: str) -> Any:
    return await api.call("PUT", "ApproveBatch", {"batchGuid": batch_guid})


async def test_concurrent_close_makes_one_job(api: Api, settings: Settings) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    record_ids = await api.upload_ok(batch, [valid_order(1), valid_order(2)])

    responses = await asyncio.gather(*(api.complete(batch) for _ in range(CONCURRENT_CALLS)))

    assert [response.status_code for response in responses] == [200] * CONCURRENT_CALLS
    results = [response.json()["result"] for response in responses]
    assert all(result["hasCreationCompleted"] is True for result in results)
    assert {result["statusId"] for result in results} == {"Queued"}
    assert {result["totalRecords"] for result in results} == {2}
    process_jobs = [job for job in await _jobs_of(settings, batch) if job.kind == "process_batch"]
    assert len(process_jobs) == 1
    assert len(await _jobs_of(settings, batch)) == 1
    for record_id in record_ids:
        assert (await api.get_record(batch, record_id))["statusId"] == "ReadyForValidation"


async def test_concurrent_approve_makes_one_job(api: Api, settings: Settings) -> None:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    batch = await api.create_batch(batch_type)
    await api.upload_ok(batch, [valid_order(1)])

    closes = await asyncio.gather(*(api.complete(batch) for _ in range(CONCURRENT_CALLS)))

    assert [response.status_code for response in closes] == [200] * CONCURRENT_CALLS
    close_results = [response.json()["result"] for response in closes]
    assert all(result["hasCreationCompleted"] is True for result in close_results)
    assert {result["statusId"] for result in close_results} == {"AwaitingApproval"}
    assert await _jobs_of(settings, batch) == []

    approvals = await asyncio.gather(*(_approve(api, batch) for _ in range(CONCURRENT_CALLS)))

    assert [response.status_code for response in approvals] == [200] * CONCURRENT_CALLS
    approval_results = [response.json()["result"] for response in approvals]
    assert {result["statusId"] for result in approval_results} == {"Queued"}
    created_jobs = await _jobs_of(settings, batch)
    assert [job.kind for job in created_jobs] == ["process_batch"]


# Rounds of uploads and a close, until the close lands while uploads are still in flight.
_RACE_ROUNDS = 5


@pytest.mark.parametrize("inline_limit", [65_536, 0], ids=["inline", "blob-files"])
async def test_close_racing_uploads(api: Api, settings: Settings, inline_limit: int) -> None:
    """Every upload either counts in the closed batch or is rejected with nothing stored, with
    payloads in the record rows or in blob files.

    The close waits for a pooled connection like the uploads do, so in one round it may come
    after all of them. Rounds repeat until one rejects an upload, and every round is checked.
    """
    raced = False
    for _ in range(_RACE_ROUNDS):
        batch = await api.create_batch(await api.insert_batch_type())
        async with api_with_settings(settings, api, inline_payload_max_bytes=inline_limit) as (
            uploader,
            _,
        ):
            uploads = [
                asyncio.create_task(
                    uploader.upload(batch, [valid_order(upload * 100 + n) for n in range(20)])
                )
                for upload in range(60)
            ]
            # Close while most uploads are still streaming or committing.
            await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)
            close = await uploader.complete(batch)
            responses = await asyncio.gather(*uploads)

        assert close.status_code == 200, close.text
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 409}, statuses
        accepted_ids = {
            record_id
            for response in responses
            if response.status_code == 200
            for record_id in response.json()["result"]
        }
        for response in responses:
            if response.status_code == 409:
                assert_envelope_error(response, 409, "no longer accepts records")
        closed_total = close.json()["result"]["totalRecords"]
        assert closed_total == len(accepted_ids)
        assert await _record_ids_of(settings, batch) == accepted_ids
        expected_files = 0 if inline_limit else len(accepted_ids)
        assert len(_blob_files(settings, api.tenant, batch)) == expected_files
        assert await _inline_payload_count(settings, batch) == len(accepted_ids) - expected_files
        assert _incoming_files(settings) == []
        if 409 in statuses:
            raced = True
            break

    assert raced, f"in {_RACE_ROUNDS} rounds every upload committed before the close"

    final = await run_worker_until(api, settings, batch)

    assert final["totalRecords"] == closed_total
    assert final["statusId"] == "Completed"
    assert final["validatedRecords"] + final["failedValidatedRecords"] == closed_total
    assert final["validatedRecords"] == closed_total
    assert final["completedRecords"] == closed_total


async def test_expected_count_waits_for_uploads(api: Api, settings: Settings) -> None:
    """Closes that expect 20 records succeed only once all 20 one-record uploads counted."""
    batch = await api.create_batch(await api.insert_batch_type())
    expected = 20
    uploads = [api.upload(batch, [valid_order(number)]) for number in range(expected)]
    closes = [api.complete(batch, expectedRecordCount=expected) for _ in range(2 * expected)]
    interleaved = [call for pair in zip(uploads, closes[:expected], strict=True) for call in pair]

    responses = await asyncio.gather(*interleaved, *closes[expected:])
    final_close = await api.complete(batch, expectedRecordCount=expected)

    upload_responses = responses[0 : 2 * expected : 2]
    close_responses = responses[1 : 2 * expected : 2] + responses[2 * expected :]
    assert [response.status_code for response in upload_responses] == [200] * expected
    for response in close_responses:
        assert response.status_code in {200, 409}, response.text
        if response.status_code == 200:
            assert response.json()["result"]["totalRecords"] == expected
        else:
            message = assert_envelope_error(response, 409).replace(batch, "")
            stated_numbers = {int(number) for number in re.findall(r"\d+", message)}
            assert expected in stated_numbers, message
            assert any(number < expected for number in stated_numbers), message
    assert final_close.status_code == 200, final_close.text
    assert final_close.json()["result"]["totalRecords"] == expected
    assert len(await _record_ids_of(settings, batch)) == expected
    assert len(await _jobs_of(settings, batch)) == 1


async def test_expected_count_race_never_miscounts(api: Api, settings: Settings) -> None:
    """Closes expecting every count from 0 to 20 race 21 uploads. The batch closes only with
    the record count that the closing call expected."""
    batch = await api.create_batch(await api.insert_batch_type())
    upload_count = 20
    calls: list[Any] = []
    expected_counts: list[int] = []
    for number in range(upload_count + 1):
        calls.append(api.upload(batch, [valid_order(number)]))
        calls.append(api.complete(batch, expectedRecordCount=number))
        expected_counts.append(number)

    responses = await asyncio.gather(*calls)

    upload_responses = responses[0::2]
    close_responses = responses[1::2]
    accepted_ids = {
        record_id
        for response in upload_responses
        if response.status_code == 200
        for record_id in response.json()["result"]
    }
    assert {response.status_code for response in upload_responses} <= {200, 409}
    assert {response.status_code for response in close_responses} <= {200, 409}
    batch_now = await api.get_batch(batch)
    assert batch_now["totalRecords"] == len(accepted_ids)
    assert await _record_ids_of(settings, batch) == accepted_ids
    successful_expectations = {
        expected
        for expected, response in zip(expected_counts, close_responses, strict=True)
        if response.status_code == 200
    }
    if batch_now["hasCreationCompleted"]:
        # The call that closed the batch expected exactly the records it contains. Later calls
        # only return the closed batch, whatever count they expected.
        assert batch_now["totalRecords"] in successful_expectations
        assert len(await _jobs_of(settings, batch)) == 1
    else:
        assert successful_expectations == set()
        assert await _jobs_of(settings, batch) == []
    for response in close_responses:
        if response.status_code == 200:
            assert response.json()["result"]["totalRecords"] == batch_now["totalRecords"]


async def _close_statement_count(api: Api, app: Any, batch_guid: str) -> tuple[int, Any]:
    engine = app.state.docbatch.database.engine.sync_engine
    statements: list[str] = []

    def record_statement(*arguments: Any) -> None:
        statements.append(arguments[2])

    event.listen(engine, "before_cursor_execute", record_statement)
    try:
        response = await api.complete(batch_guid)
    finally:
        event.remove(engine, "before_cursor_execute", record_statement)
    return len(statements), response


async def _add_stored_records(settings: Settings, api: Api, batch_guid: str, count: int) -> None:
    """Insert `count` records in one transaction, as many uploads would have."""
    batch_id = await _batch_id(settings, batch_guid)
    database = Database(settings)
    now = utcnow()
    records = [
        NewRecord(f"records/{api.tenant}/{batch_guid}/bulk-{n}", None, 100, None, None)
        for n in range(count)
    ]
    try:
        async with database.transaction() as session:
            await insert_records(
                session, _scope_of(api.tenant), batch_id, records, RecordStatus.CREATING, now
            )
            await session.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(total_records=Batch.total_records + count, has_data=True)
            )
    finally:
        await database.dispose()


async def _record_row_versions(settings: Settings, batch_guid: str) -> list[str]:
    """Return the PostgreSQL row version (xmin) of each record of a batch, in id order."""
    versions = text(
        "SELECT r.xmin::text FROM batch_records r JOIN batches b ON b.id = r.batch_id "
        "WHERE b.guid = :guid ORDER BY r.id"
    )
    database = Database(settings)
    try:
        async with database.read() as session:
            result = await session.execute(versions, {"guid": uuid.UUID(batch_guid)})
            return list(result.scalars())
    finally:
        await database.dispose()


async def test_close_cost_independent_of_size(
    api: Api, app: Any, settings: Settings, backend: str
) -> None:
    """The close runs the same statements for 1 record and for 2,000 and rewrites no record.

    SQLite runs the close on the main engine, where the statements are counted. PostgreSQL runs
    it on the driver connection, unseen by SQLAlchemy's events, so there the records' row
    versions show that none of them was written.
    """
    batch_type = await api.insert_batch_type()
    warm_up = await api.create_batch(batch_type)
    small = await api.create_batch(batch_type)
    large = await api.create_batch(batch_type)
    await _add_stored_records(settings, api, warm_up, 1)
    await _add_stored_records(settings, api, small, 1)
    await _add_stored_records(settings, api, large, 2000)
    # The first close caches the batch type; the measured closes both find it cached.
    await _close_statement_count(api, app, warm_up)

    versions_before = await _record_row_versions(settings, large) if backend == "postgresql" else []
    small_count, small_response = await _close_statement_count(api, app, small)
    large_count, large_response = await _close_statement_count(api, app, large)

    assert small_response.status_code == 200, small_response.text
    assert large_response.status_code == 200, large_response.text
    assert large_response.json()["result"]["totalRecords"] == 2000
    assert large_response.json()["result"]["statusId"] == "Queued"
    assert large_count == small_count
    if backend == "postgresql":
        assert len(versions_before) == 2000
        assert await _record_row_versions(settings, large) == versions_before
    else:
        assert small_count > 0
    database = Database(settings)
    try:
        async with database.read() as session:
            stored = await session.scalar(
                select(func.count())
                .select_from(BatchRecord)
                .where(BatchRecord.batch_id == await _batch_id(settings, large))
            )
    finally:
        await database.dispose()
    assert stored == 2000


def _simulated_outage() -> OperationalError:
    return OperationalError("INSERT INTO jobs", {}, ConnectionResetError("connection lost"))


@pytest.mark.parametrize(
    ("failure", "status"),
    [(lambda: RuntimeError("simulated crash"), 500), (_simulated_outage, 503)],
    ids=["crash", "outage"],
)
@pytest.mark.parametrize("job_inserted", [False, True], ids=["before_insert", "after_insert"])
async def test_failed_enqueue_leaves_batch_open(
    api: Api,
    settings: Settings,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[], Exception],
    status: int,
    job_inserted: bool,
) -> None:
    """A failure after the status update rolls the transaction back: never closed without a job."""
    if backend == "postgresql":
        pytest.skip("on PostgreSQL the close is one statement, with no step between its writes")
    batch = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch, [valid_order(1)])
    real_enqueue = jobs.enqueue

    async def failing_enqueue(*arguments: Any, **keywords: Any) -> None:
        if job_inserted:
            await real_enqueue(*arguments, **keywords)
        raise failure()

    monkeypatch.setattr(jobs, "enqueue", failing_enqueue)

    response = await api.complete(batch)

    assert_envelope_error(response, status)
    if status == 503:
        assert response.headers.get("Retry-After")
    after_failure = await api.get_batch(batch)
    assert after_failure["statusId"] == "Creating"
    assert after_failure["hasCreationCompleted"] is False
    assert await _jobs_of(settings, batch) == []

    monkeypatch.undo()
    retried = await api.complete(batch)

    assert retried.status_code == 200, retried.text
    assert retried.json()["result"]["statusId"] == "Queued"
    assert len(await _jobs_of(settings, batch)) == 1


_REJECT_JOBS_TRIGGER = {
    "sqlite": [
        "CREATE TRIGGER reject_jobs BEFORE INSERT ON jobs "
        "BEGIN SELECT RAISE(ABORT, 'job rejected by the test'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION reject_job() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'job rejected by the test'; END $$",
        "CREATE TRIGGER reject_jobs BEFORE INSERT ON jobs "
        "FOR EACH ROW EXECUTE FUNCTION reject_job()",
    ],
}
_DROP_REJECT_JOBS_TRIGGER = {
    "sqlite": ["DROP TRIGGER reject_jobs"],
    "postgresql": ["DROP TRIGGER reject_jobs ON jobs", "DROP FUNCTION reject_job()"],
}


async def _run_sql(settings: Settings, statements: list[str]) -> None:
    database = Database(settings)
    try:
        async with database.transaction() as session:
            for statement in statements:
                await session.execute(text(statement))
    finally:
        await database.dispose()


async def test_rejected_job_insert_leaves_batch_open(
    api: Api, settings: Settings, backend: str
) -> None:
    """The database rejects the job row, so the status change that goes with it is undone too."""
    batch = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch, [valid_order(1)])
    await _run_sql(settings, _REJECT_JOBS_TRIGGER[backend])
    try:
        response = await api.complete(batch)

        assert_envelope_error(response, 500)
        after_failure = await api.get_batch(batch)
        assert after_failure["statusId"] == "Creating"
        assert after_failure["hasCreationCompleted"] is False
        assert await _jobs_of(settings, batch) == []
    finally:
        await _run_sql(settings, _DROP_REJECT_JOBS_TRIGGER[backend])

    retried = await api.complete(batch)

    assert retried.status_code == 200, retried.text
    assert retried.json()["result"]["statusId"] == "Queued"
    assert len(await _jobs_of(settings, batch)) == 1


async def _terminate_other_sessions(settings: Settings) -> int:
    """End every other session on the test database, as a server restart would."""
    database = Database(settings)
    try:
        async with database.transaction() as session:
            result = await session.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            return int(result.scalar_one())
    finally:
        await database.dispose()


@pytest.mark.postgresql
async def test_close_after_lost_connection(api: Api, settings: Settings) -> None:
    """A close whose pooled connection was cut returns 503 and writes nothing. The dead
    connection is discarded, so the retry gets a new one and closes the batch with one job."""
    batch_type = await api.insert_batch_type()
    warm_up = await api.create_batch(batch_type)
    batch = await api.create_batch(batch_type)
    await api.upload_ok(batch, [valid_order(1)])
    # The warm-up close leaves an open connection in the pool of single writes.
    assert (await api.complete(warm_up)).status_code == 200
    assert await _terminate_other_sessions(settings) >= 1

    response = await api.complete(batch)

    assert_envelope_error(response, 503, "Retry the request later")
    assert response.headers.get("Retry-After")
    assert await _jobs_of(settings, batch) == []
    retried = await api.complete(batch)
    assert retried.status_code == 200, retried.text
    assert retried.json()["result"]["statusId"] == "Queued"
    assert len(await _jobs_of(settings, batch)) == 1

"""The worker and the job queue: leases, takeover, fencing, retries, chunks and deduplication."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.queue.jobs import ClaimedJob, JobKind, LeaseLostError
from docbatch.storage.blobs import FileBlobStore, open_blob_store
from docbatch.store import records as record_store
from docbatch.store.database import Database
from docbatch.store.models import (
    Batch,
    BatchRecord,
    BatchType,
    Job,
    JobStatus,
    RecordLogEntry,
    RecordStatus,
)
from docbatch.worker import validation as worker_validation
from docbatch.worker.runner import Worker
from docbatch.worker.validation import PendingRecord, ValidatorCache, check_records
from tests.support import Api, configuration, invalid_order, run_worker_until, valid_order

WAIT_SECONDS = 30.0
POLL_SECONDS = 0.02
PARALLEL_PAGES = 8
RECORDS_PER_PAGE = 500


def _copy_settings(settings: Settings, **overrides: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **overrides})


@asynccontextmanager
async def _running_worker(settings: Settings) -> AsyncIterator[Worker]:
    database = Database(settings)
    worker = Worker(settings, database, open_blob_store(settings.storage_url))
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        await database.dispose()


async def _wait_for_batch(
    api: Api,
    batch_guid: str,
    condition: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        batch = await api.get_batch(batch_guid)
        if condition(batch):
            return batch
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"batch {batch_guid} did not reach the condition: {batch}")
        await asyncio.sleep(POLL_SECONDS)


async def _wait_for_jobs(
    settings: Settings, batch_guid: str, kind: JobKind, status: JobStatus, *, count: int
) -> list[Job]:
    """Wait until the batch has `count` jobs of `kind` and all of them are in `status`."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        found = await _jobs_of(settings, batch_guid, kind)
        if len(found) == count and {job.status for job in found} == {status.value}:
            return found
        if asyncio.get_running_loop().time() > deadline:
            states = [(job.id, job.status) for job in found]
            raise AssertionError(f"expected {count} {kind} jobs {status}, found {states}")
        await asyncio.sleep(POLL_SECONDS)


def _is_final(batch: dict[str, Any]) -> bool:
    return batch["statusId"] in {"Completed", "Error"}


async def _batch_id(database: Database, batch_guid: str) -> int:
    async with database.read() as session:
        batch_id = await session.scalar(select(Batch.id).where(Batch.guid == uuid.UUID(batch_guid)))
    assert batch_id is not None, f"batch {batch_guid} is not in the database"
    return int(batch_id)


async def _jobs_of(settings: Settings, batch_guid: str, kind: JobKind | None = None) -> list[Job]:
    database = Database(settings)
    try:
        batch_id = await _batch_id(database, batch_guid)
        statement = select(Job).where(Job.batch_id == batch_id).order_by(Job.id)
        if kind is not None:
            statement = statement.where(Job.kind == kind.value)
        async with database.read() as session:
            return list(await session.scalars(statement))
    finally:
        await database.dispose()


async def _record_status_counts(settings: Settings, batch_guid: str) -> dict[str, int]:
    database = Database(settings)
    try:
        batch_id = await _batch_id(database, batch_guid)
        async with database.read() as session:
            rows = await session.execute(
                select(BatchRecord.status, func.count())
                .where(BatchRecord.batch_id == batch_id)
                .group_by(BatchRecord.status)
            )
            return {str(row[0]): int(row[1]) for row in rows}
    finally:
        await database.dispose()


def _orders(count: int, *, invalid_every: int = 10) -> list[bytes]:
    """`count` orders in which every `invalid_every`-th one fails the schema."""
    return [
        invalid_order(number) if number % invalid_every == 0 else valid_order(number)
        for number in range(1, count + 1)
    ]


async def _upload_in_parts(
    api: Api, batch_guid: str, payloads: list[bytes], part: int = 200
) -> list[int]:
    ids: list[int] = []
    for start in range(0, len(payloads), part):
        ids += await api.upload_ok(batch_guid, payloads[start : start + part])
    return ids


def _assert_settled_counters(batch: dict[str, Any], total: int, invalid: int) -> None:
    assert batch["totalRecords"] == total
    assert batch["failedValidatedRecords"] == invalid
    assert batch["validatedRecords"] == total - invalid
    assert batch["validatedRecords"] + batch["failedValidatedRecords"] == batch["totalRecords"]
    assert batch["completedRecords"] == batch["validatedRecords"]
    assert batch["errorRecords"] == 0


def _cli_environment(settings: Settings, **variables: str) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("DOCBATCH_")
    }
    environment.update(
        DOCBATCH_DATABASE_URL=settings.database_url,
        DOCBATCH_STORAGE_URL=settings.storage_url,
        DOCBATCH_SIGNING_KEY_FILE=str(settings.signing_key_file),
        DOCBATCH_LOG_FORMAT="json",
    )
    environment.update(variables)
    return environment


async def _run_cli(settings: Settings, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "docbatch",
        *arguments,
        env=_cli_environment(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=WAIT_SECONDS)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


# --- takeover after a worker dies ---------------------------------------------------------


async def _kill_worker_mid_batch(
    api: Api, settings: Settings, log_path: Path, record_count: int
) -> tuple[str, dict[str, Any]] | None:
    """Start a `docbatch worker` process on a new batch and SIGKILL it while the batch is partly
    validated. Return the batch and its counters after the kill, or None when the process
    finished the batch before it could be killed."""
    batch = await api.create_batch(await api.insert_batch_type())
    await _upload_in_parts(api, batch, _orders(record_count))
    environment = _cli_environment(
        settings,
        DOCBATCH_JOB_LEASE_SECONDS="2",
        DOCBATCH_JOB_HEARTBEAT_SECONDS="0.5",
        DOCBATCH_CHUNK_SIZE="1000000",
        DOCBATCH_RECORDS_PER_TRANSACTION="5",
        DOCBATCH_WORKER_POLL_SECONDS="0.05",
    )
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "docbatch", "worker", env=environment, stderr=log
        )
    try:
        response = await api.complete(batch)
        assert response.status_code == 200, response.text

        def started(counters: dict[str, Any]) -> bool:
            return counters["validatedRecords"] + counters["failedValidatedRecords"] > 0

        await _wait_for_batch(api, batch, started)
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), timeout=WAIT_SECONDS)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    after_kill = await api.get_batch(batch)
    if after_kill["validatedRecords"] + after_kill["failedValidatedRecords"] >= record_count:
        return None
    return batch, after_kill


async def test_takeover_after_worker_killed(api: Api, settings: Settings, tmp_path: Path) -> None:
    killed = None
    for record_count in (600, 2400, 6000):
        killed = await _kill_worker_mid_batch(api, settings, tmp_path / "worker.log", record_count)
        if killed is not None:
            break
    assert killed is not None, "the worker process finished every batch before it was killed"
    batch, after_kill = killed
    total = after_kill["totalRecords"]
    assert after_kill["statusId"] == "Processing"
    assert 0 < after_kill["validatedRecords"] + after_kill["failedValidatedRecords"] < total
    [chunk_job] = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert chunk_job.status == JobStatus.RUNNING.value
    assert chunk_job.attempts == 1

    final = await run_worker_until(api, settings, batch)

    _assert_settled_counters(final, total, total // 10)
    assert final["statusId"] == "Error"
    [chunk_job] = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert chunk_job.attempts >= 2
    assert chunk_job.status == JobStatus.SUCCEEDED.value
    rows = await _record_status_counts(settings, batch)
    assert rows == {"Completed": total - total // 10, "ValidationFailed": total // 10}


# --- attempt fencing and exhausted leases ---------------------------------------------------


async def _enqueue_job(database: Database, *, max_attempts: int = 5) -> None:
    async with database.transaction() as session:
        await jobs.enqueue(
            session,
            JobKind.VALIDATE_READY,
            {"batch_id": 0},
            now=utcnow(),
            max_attempts=max_attempts,
        )


async def _claim(database: Database, owner: str, now: datetime, lease_seconds: float) -> ClaimedJob:
    async with database.transaction() as session:
        claimed = await jobs.claim(session, owner, now, timedelta(seconds=lease_seconds))
    assert claimed is not None, f"{owner} found no job to claim"
    return claimed


async def _get_job(database: Database, job_id: int) -> Job:
    async with database.read() as session:
        job = await session.get(Job, job_id)
    assert job is not None
    return job


@pytest.mark.parametrize("owner_b", ["owner-b", "owner-a"], ids=["other_owner", "same_owner"])
async def test_fencing_rejects_stale_attempt(settings: Settings, owner_b: str) -> None:
    """After a takeover, only the newest attempt may renew, check or finish the job, even when
    the new attempt runs under the same owner name."""
    database = Database(settings)
    try:
        await _enqueue_job(database)
        start = utcnow()
        stale = await _claim(database, "owner-a", start, lease_seconds=1)
        later = start + timedelta(seconds=2)
        async with database.transaction() as session:
            assert await jobs.claim(session, "owner-c", start, timedelta(seconds=1)) is None
        current = await _claim(database, owner_b, later, lease_seconds=30)

        assert current.id == stale.id
        assert stale.attempt == 1
        assert current.attempt == 2
        async with database.transaction() as session:
            assert await jobs.extend_lease(session, stale, later, timedelta(seconds=30)) is False
        with pytest.raises(LeaseLostError):
            async with database.transaction() as session:
                await jobs.check_held(session, stale)
        with pytest.raises(LeaseLostError):
            async with database.transaction() as session:
                await jobs.mark_succeeded(session, stale, later)
        async with database.transaction() as session:
            assert await jobs.mark_failed_attempt(session, stale, "late", later, None) is False

        async with database.transaction() as session:
            assert await jobs.extend_lease(session, current, later, timedelta(seconds=30)) is True
        async with database.transaction() as session:
            await jobs.check_held(session, current)
            await jobs.mark_succeeded(session, current, later)
        with pytest.raises(LeaseLostError):
            async with database.transaction() as session:
                await jobs.mark_succeeded(session, stale, later)
        job = await _get_job(database, current.id)
    finally:
        await database.dispose()
    assert job.status == JobStatus.SUCCEEDED.value
    assert job.attempts == 2
    assert job.lease_owner is None
    assert job.last_error is None


async def test_exhausted_lease_fails_job(settings: Settings) -> None:
    database = Database(settings)
    try:
        await _enqueue_job(database, max_attempts=1)
        await _enqueue_job(database, max_attempts=2)
        start = utcnow()
        last_attempt = await _claim(database, "owner-a", start, lease_seconds=1)
        with_attempts_left = await _claim(database, "owner-a", start, lease_seconds=1)
        async with database.transaction() as session:
            assert await jobs.fail_exhausted_leases(session, start) == []
        later = start + timedelta(seconds=2)

        async with database.transaction() as session:
            failed_ids = await jobs.fail_exhausted_leases(session, later)

        assert failed_ids == [last_attempt.id]
        failed = await _get_job(database, last_attempt.id)
        assert failed.status == JobStatus.FAILED.value
        assert failed.last_error
        assert failed.lease_owner is None
        assert failed.finished_at is not None
        still_running = await _get_job(database, with_attempts_left.id)
        assert still_running.status == JobStatus.RUNNING.value
        retried = await _claim(database, "owner-b", later, lease_seconds=1)
        assert retried.id == with_attempts_left.id
        assert retried.attempt == 2
    finally:
        await database.dispose()


# --- infrastructure errors: backoff, exhaustion, operator retry -----------------------------


async def test_infrastructure_error_retries_then_fails(api: Api, settings: Settings) -> None:
    worker_settings = _copy_settings(settings, job_max_attempts=3, job_backoff_base_seconds=0.4)
    batch = await api.create_batch(await api.insert_batch_type())
    ids = await api.upload_ok(batch, [valid_order(number) for number in range(1, 31)])
    broken_id = ids[24]
    store = open_blob_store(settings.storage_url)
    assert isinstance(store, FileBlobStore)
    blob_key = f"records/broken-{broken_id}"
    blob_path = store.root / blob_key
    # A directory where the payload file should be: every read fails with IsADirectoryError.
    blob_path.mkdir(parents=True)
    database = Database(settings)
    try:
        async with database.transaction() as session:
            await session.execute(
                update(BatchRecord)
                .where(BatchRecord.id == broken_id)
                .values(blob_key=blob_key, payload=None)
            )
    finally:
        await database.dispose()
    assert (await api.complete(batch)).status_code == 200

    snapshots: list[tuple[str, int, datetime, datetime]] = []
    async with _running_worker(worker_settings):
        deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
        while True:
            chunk_jobs = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
            snapshots += [
                (job.status, job.attempts, job.run_after, job.updated_at) for job in chunk_jobs
            ]
            if chunk_jobs and chunk_jobs[0].status == JobStatus.FAILED.value:
                break
            assert asyncio.get_running_loop().time() < deadline, snapshots[-1:]
            await asyncio.sleep(POLL_SECONDS)

    waiting_retries = [
        (attempts, run_after - updated_at)
        for status, attempts, run_after, updated_at in snapshots
        if status == JobStatus.QUEUED.value and attempts > 0
    ]
    assert {attempts for attempts, _ in waiting_retries} == {1, 2}
    assert all(delay > timedelta(0) for _, delay in waiting_retries)
    [failed] = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert failed.status == JobStatus.FAILED.value
    assert failed.attempts == 3
    assert failed.max_attempts == 3
    assert failed.last_error is not None
    assert str(blob_key) in failed.last_error
    assert failed.finished_at is not None
    stuck = await api.get_batch(batch)
    assert stuck["statusId"] == "Processing"
    rows = await _record_status_counts(settings, batch)
    assert stuck["validatedRecords"] == rows.get("Completed", 0)
    assert stuck["validatedRecords"] < 30

    code, listed, errors = await _run_cli(settings, "job", "list", "--status", "failed")
    assert code == 0, errors
    assert failed.id in [json.loads(line)["id"] for line in listed.splitlines()]
    shutil.rmtree(blob_path)
    blob_path.write_bytes(valid_order(25))
    code, output, errors = await _run_cli(settings, "job", "retry", str(failed.id))
    assert code == 0, errors
    assert f"job {failed.id}" in output
    [requeued] = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert requeued.status == JobStatus.QUEUED.value
    assert requeued.attempts == 0

    final = await run_worker_until(api, settings, batch)

    _assert_settled_counters(final, 30, 0)
    assert final["statusId"] == "Completed"


async def test_cli_retry_rejects_unfailed_job(api: Api, settings: Settings) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    await api.upload_ok(batch, [valid_order(1)])
    assert (await api.complete(batch)).status_code == 200
    [queued] = await _jobs_of(settings, batch)

    code, _, errors = await _run_cli(settings, "job", "retry", str(queued.id))

    assert code == 1
    assert f"job {queued.id}" in errors
    [unchanged] = await _jobs_of(settings, batch)
    assert unchanged.status == JobStatus.QUEUED.value


# --- validation while the batch is open ------------------------------------------------------


async def test_ready_records_validated_while_open(api: Api, settings: Settings) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    ready_valid = await api.upload_ok(batch, [valid_order(n) for n in range(1, 6)], ready=True)
    ready_invalid = await api.upload_ok(batch, [invalid_order(6), invalid_order(7)], ready=True)
    not_ready = await api.upload_ok(batch, [valid_order(8), invalid_order(9)])

    async with _running_worker(settings):
        open_batch = await _wait_for_batch(
            api, batch, lambda b: b["validatedRecords"] + b["failedValidatedRecords"] == 7
        )
        open_statuses = {
            record_id: (await api.get_record(batch, record_id))["statusId"]
            for record_id in ready_valid + ready_invalid + not_ready
        }
        assert (await api.complete(batch)).status_code == 200
        final = await _wait_for_batch(api, batch, _is_final)

    assert open_batch["statusId"] == "Creating"
    assert open_batch["validatedRecords"] == 5
    assert open_batch["failedValidatedRecords"] == 2
    assert open_batch["completedRecords"] == 0
    assert [open_statuses[record_id] for record_id in ready_valid] == ["Validated"] * 5
    assert [open_statuses[record_id] for record_id in ready_invalid] == ["ValidationFailed"] * 2
    assert [open_statuses[record_id] for record_id in not_ready] == ["Creating"] * 2
    _assert_settled_counters(final, 9, 3)
    assert final["statusId"] == "Error"
    assert await _record_status_counts(settings, batch) == {"Completed": 6, "ValidationFailed": 3}
    for record_id in ready_invalid:
        response = await api.call(
            "GET", "GetBatchRecordLog", {"batchGuid": batch, "batchRecordId": record_id}
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["result"]) == 1


# --- chunks and concurrent workers -----------------------------------------------------------


async def test_multi_chunk_batch_settles(api: Api, settings: Settings) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    await _upload_in_parts(api, batch, _orders(230), part=115)
    assert (await api.complete(batch)).status_code == 200

    final = await run_worker_until(api, settings, batch)

    _assert_settled_counters(final, 230, 23)
    assert final["statusId"] == "Error"
    chunk_jobs = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert len(chunk_jobs) == 5
    assert {job.status for job in chunk_jobs} == {JobStatus.SUCCEEDED.value}
    assert await _record_status_counts(settings, batch) == {
        "Completed": 207,
        "ValidationFailed": 23,
    }


async def test_two_workers_share_batch(api: Api, settings: Settings) -> None:
    worker_settings = _copy_settings(settings, records_per_transaction=5)
    batch = await api.create_batch(await api.insert_batch_type())
    await _upload_in_parts(api, batch, _orders(230), part=115)
    assert (await api.complete(batch)).status_code == 200

    async with (
        _running_worker(worker_settings) as first,
        _running_worker(worker_settings) as second,
    ):
        final = await _wait_for_batch(api, batch, _is_final)

    assert first.owner != second.owner
    _assert_settled_counters(final, 230, 23)
    assert await _record_status_counts(settings, batch) == {
        "Completed": 207,
        "ValidationFailed": 23,
    }
    chunk_jobs = await _jobs_of(settings, batch, JobKind.VALIDATE_CHUNK)
    assert {job.status for job in chunk_jobs} == {JobStatus.SUCCEEDED.value}


async def test_page_moves_count_only_moved(api: Api, settings: Settings) -> None:
    """A page's bulk moves change only records still awaiting validation and report exactly
    those, so a record another job moved first is neither counted nor logged twice."""
    batch = await api.create_batch(await api.insert_batch_type())
    ids = await api.upload_ok(batch, [valid_order(n) for n in range(1, 5)])
    awaiting = (RecordStatus.CREATING, RecordStatus.READY_FOR_VALIDATION)
    now = utcnow()
    database = Database(settings)
    try:
        async with database.transaction() as session:
            moved_first = await record_store.move_records(
                session, ids[:1], awaiting, RecordStatus.VALIDATED, now
            )
        async with database.transaction() as session:
            # ids[0] is no longer awaiting validation, so its reference is not written either.
            failed = await record_store.move_records(
                session,
                ids[:2],
                awaiting,
                RecordStatus.VALIDATION_FAILED,
                now,
                completed=True,
                references={ids[0]: "ORD-1"},
            )
            valid = await record_store.move_records(
                session,
                ids[2:],
                awaiting,
                RecordStatus.COMPLETED,
                now,
                completed=True,
                references={ids[2]: "ORD-3", ids[3]: "ORD-4", ids[1]: "ORD-2"},
            )
            line = record_store.LogLine("Error", "Validation", "bad")
            await record_store.add_log_entries(session, {ids[1]: [line, line]}, now)
            nothing = await record_store.move_records(
                session, [], awaiting, RecordStatus.COMPLETED, now
            )
        async with database.read() as session:
            rows = {
                row.id: row
                for row in await session.scalars(select(BatchRecord).where(BatchRecord.id.in_(ids)))
            }
            log_rows = await session.execute(
                select(RecordLogEntry.record_id, func.count()).group_by(RecordLogEntry.record_id)
            )
            log_counts = {int(row[0]): int(row[1]) for row in log_rows}
    finally:
        await database.dispose()

    assert moved_first == {ids[0]}
    assert failed == {ids[1]}
    assert valid == {ids[2], ids[3]}
    assert nothing == set()
    assert [rows[record_id].status for record_id in ids] == [
        "Validated",
        "ValidationFailed",
        "Completed",
        "Completed",
    ]
    assert rows[ids[0]].completed_at is None
    assert rows[ids[1]].completed_at is not None
    assert [rows[record_id].reference for record_id in ids] == [None, None, "ORD-3", "ORD-4"]
    assert log_counts == {ids[1]: 2}


def _invalid_order_with_extras(number: int) -> bytes:
    """An invalid order followed by 500 unexpected elements, so that it validates slowly."""
    extras = b"".join(b"<extra%d/>" % index for index in range(500))
    return invalid_order(number).replace(b"</order>", extras + b"</order>")


async def test_shared_validator_parallel_verdicts(tmp_path: Path) -> None:
    """One cached validator checks pages in several threads at once, as the worker's slots do,
    and every record gets its own verdict. No database is involved, so this runs once."""
    validator = await ValidatorCache(Settings()).get(
        BatchType(id=1, configuration=configuration(), name="orders")
    )
    store = FileBlobStore(tmp_path / "parallel-blobs")
    store.root.mkdir(parents=True)
    pages: list[list[PendingRecord]] = []
    invalid_ids: set[int] = set()
    for page_number in range(PARALLEL_PAGES):
        page = []
        for offset in range(RECORDS_PER_PAGE):
            record_id = page_number * 1000 + offset
            invalid = (page_number + offset) % 2 == 0
            payload = _invalid_order_with_extras(record_id) if invalid else valid_order(record_id)
            (store.root / f"record-{record_id}").write_bytes(payload)
            page.append(PendingRecord(record_id, f"record-{record_id}"))
            if invalid:
                invalid_ids.add(record_id)
        pages.append(page)

    results = await asyncio.gather(*(check_records(validator, store, page) for page in pages))

    verdicts = {
        record.id: bool(check.issues)
        for page, checks in zip(pages, results, strict=True)
        for record, check in zip(page, checks, strict=True)
    }
    reported_valid = sorted(record_id for record_id in invalid_ids if not verdicts[record_id])
    reported_invalid = sorted(
        record_id
        for record_id, failed in verdicts.items()
        if failed and record_id not in invalid_ids
    )
    assert reported_valid == [], f"{len(reported_valid)} invalid records passed validation"
    assert reported_invalid == []


# --- deduplication of validate_ready jobs ----------------------------------------------------


async def test_validate_ready_dedupe(api: Api, settings: Settings) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    ids = await api.upload_ok(batch, [valid_order(number) for number in range(1, 11)])

    def mark_ready(record_ids: list[int]) -> Any:
        return api.call(
            "PUT",
            "MarkBatchRecordReadyForValidation",
            {"batchGuid": batch, "batchRecordId": record_ids},
        )

    responses = await asyncio.gather(
        *(mark_ready([ids[index % 10]]) for index in range(30)),
        *(mark_ready(ids) for _ in range(5)),
        *(api.upload(batch, [valid_order(100 + index)], ready=True) for index in range(5)),
    )

    assert {response.status_code for response in responses} == {200}
    ready_jobs = await _jobs_of(settings, batch, JobKind.VALIDATE_READY)
    assert len(ready_jobs) == 1
    assert ready_jobs[0].status == JobStatus.QUEUED.value

    async with _running_worker(settings):
        validated = await _wait_for_batch(api, batch, lambda b: b["validatedRecords"] == 15)
        # Once claimed, the job no longer blocks a new one for records marked ready later.
        later = await api.upload_ok(batch, [valid_order(200)], ready=True)
        after_later = await _wait_for_batch(api, batch, lambda b: b["validatedRecords"] == 16)
        ready_jobs = await _wait_for_jobs(
            settings, batch, JobKind.VALIDATE_READY, JobStatus.SUCCEEDED, count=2
        )

    assert validated["statusId"] == "Creating"
    assert after_later["totalRecords"] == 16
    assert (await api.get_record(batch, later[0]))["statusId"] == "Validated"
    assert len(ready_jobs) == 2


async def test_idle_slot_wakes_on_pulse(settings: Settings) -> None:
    """An idle slot looks for work as soon as another slot claims or finishes a job, rather than
    after the poll interval."""
    database = Database(settings)
    worker = Worker(
        _copy_settings(settings, worker_poll_seconds=600),
        database,
        open_blob_store(settings.storage_url),
    )
    try:
        idle = asyncio.create_task(worker._idle(600))
        await asyncio.sleep(0.05)
        assert not idle.done()
        worker._wake_idle_slots()
        await asyncio.wait_for(idle, timeout=WAIT_SECONDS)
    finally:
        await database.dispose()


async def test_validator_cache_builds_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots that ask for one batch type's validator at the same time share one build."""
    builds: list[str] = []
    real_build = worker_validation.build_record_validator

    def counting_build(*args: Any, **kwargs: Any) -> Any:
        builds.append(args[0])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(worker_validation, "build_record_validator", counting_build)
    cache = ValidatorCache(Settings())
    batch_type = BatchType(id=7, configuration=configuration(), name="orders")

    validators = await asyncio.gather(*(cache.get(batch_type) for _ in range(8)))

    assert builds == ["Xml"]
    assert all(validator is validators[0] for validator in validators)

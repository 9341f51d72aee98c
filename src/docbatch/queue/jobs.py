"""The job queue: rows in the service's own database, claimed under leases.

A job is enqueued in the caller's transaction, so it exists exactly when the state change that
created it committed. Claiming increments `attempts`, and that number is the fencing token that
every later write of the attempt checks. So a worker whose lease expired and was taken over
cannot overwrite the result of the attempt that replaced it.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CTE,
    ColumnElement,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import Insert as PostgresqlInsert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.store.database import Executor, dialect_name
from docbatch.store.models import Job, JobStatus


class JobKind(enum.StrEnum):
    PROCESS_BATCH = "process_batch"
    VALIDATE_CHUNK = "validate_chunk"
    VALIDATE_READY = "validate_ready"


class LeaseLostError(Exception):
    """The attempt no longer holds the job: its lease expired and another worker took it."""


# Core inserts on the table, built once per dialect, because request transactions enqueue with a
# dedupe key and an ORM statement rebuilt per call adds CPU work to each of those requests.
_jobs = cast(Table, Job.__table__)
_INSERT_JOB = insert(_jobs)
_INSERT_JOB_UNLESS_WAITING = {
    "postgresql": postgresql_insert(_jobs).on_conflict_do_nothing(index_elements=["dedupe_key"]),
    "sqlite": sqlite_insert(_jobs).on_conflict_do_nothing(index_elements=["dedupe_key"]),
}


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A job about one batch, with the payload `{"batch_id": id}` and the dedupe key
    `dedupe_prefix` followed by the batch id, so one such job waits per batch at a time."""

    kind: JobKind
    dedupe_prefix: str
    max_attempts: int

    def dedupe_key(self, batch_id: int) -> str:
        return f"{self.dedupe_prefix}{batch_id}"


async def enqueue_batch_job(
    executor: Executor, job: BatchJob, batch_id: int, tenant_guid: uuid.UUID, now: datetime
) -> None:
    """Insert `job` for a batch in the caller's transaction, unless one already waits."""
    await enqueue(
        executor,
        job.kind,
        {"batch_id": batch_id},
        now=now,
        max_attempts=job.max_attempts,
        tenant_guid=tenant_guid,
        batch_id=batch_id,
        dedupe_key=job.dedupe_key(batch_id),
    )


def insert_batch_job_for_rows(batches: CTE, where: ColumnElement[bool]) -> PostgresqlInsert:
    """Build a PostgreSQL INSERT ... SELECT that enqueues a batch job for each row of `batches`
    (which has the columns `id` and `tenant_guid`) that matches `where`, unless one waits.

    It is meant as a data-modifying CTE of the statement that changes those batches, so the
    change and its jobs commit as one statement. `batch_job_parameters` gives its parameters.
    """
    enqueued_at = bindparam("job_enqueued_at", type_=_jobs.c.run_after.type)
    columns = {
        "kind": bindparam("job_kind", type_=_jobs.c.kind.type),
        "payload": func.json_build_object("batch_id", batches.c.id),
        "tenant_guid": batches.c.tenant_guid,
        "batch_id": batches.c.id,
        "status": literal(JobStatus.QUEUED.value),
        "priority": literal(0),
        "run_after": enqueued_at,
        "attempts": literal(0),
        "max_attempts": bindparam("job_max_attempts", type_=_jobs.c.max_attempts.type),
        "dedupe_key": bindparam("job_dedupe_prefix", type_=_jobs.c.dedupe_key.type)
        + sql_cast(batches.c.id, String),
        "created_at": enqueued_at,
        "updated_at": enqueued_at,
    }
    rows = select(*columns.values()).where(where)
    return (
        postgresql_insert(_jobs)
        .from_select(list(columns), rows)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
    )


def batch_job_parameters(job: BatchJob, now: datetime) -> dict[str, Any]:
    """Return the bind parameters of a statement built with `insert_batch_job_for_rows`."""
    return {
        "job_kind": job.kind.value,
        "job_dedupe_prefix": job.dedupe_prefix,
        "job_max_attempts": job.max_attempts,
        "job_enqueued_at": now,
    }


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    kind: str
    payload: dict[str, Any]
    tenant_guid: uuid.UUID | None
    batch_id: int | None
    attempt: int
    max_attempts: int
    lease_owner: str


async def enqueue(
    executor: Executor,
    kind: JobKind,
    payload: dict[str, Any],
    *,
    now: datetime,
    max_attempts: int,
    tenant_guid: uuid.UUID | None = None,
    batch_id: int | None = None,
    dedupe_key: str | None = None,
    priority: int = 0,
) -> None:
    """Insert a job in the caller's transaction. With `dedupe_key`, nothing is inserted while a
    job with the same key still waits to be claimed."""
    values = {
        "kind": kind.value,
        "payload": payload,
        "tenant_guid": tenant_guid,
        "batch_id": batch_id,
        "status": JobStatus.QUEUED.value,
        "priority": priority,
        "run_after": now,
        "attempts": 0,
        "max_attempts": max_attempts,
        "dedupe_key": dedupe_key,
        "created_at": now,
        "updated_at": now,
    }
    if dedupe_key is None:
        await executor.execute(_INSERT_JOB, values)
        return
    dialect = "postgresql" if dialect_name(executor) == "postgresql" else "sqlite"
    await executor.execute(_INSERT_JOB_UNLESS_WAITING[dialect], values)


async def claim(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta
) -> ClaimedJob | None:
    """Take the next runnable job: a waiting one that is due, or a running one whose lease
    expired. On PostgreSQL concurrent claimers skip each other's locked rows; on SQLite the
    caller's write transaction serializes them."""
    candidate = (
        select(Job.id)
        .where(
            or_(
                and_(Job.status == JobStatus.QUEUED.value, Job.run_after <= now),
                and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now),
            )
        )
        .order_by(Job.priority.desc(), Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    job = await session.scalar(
        update(Job)
        .where(Job.id == candidate)
        .values(
            status=JobStatus.RUNNING.value,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + lease,
            dedupe_key=None,
            updated_at=now,
        )
        .returning(Job)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    if job is None:
        return None
    return ClaimedJob(
        id=job.id,
        kind=job.kind,
        payload=job.payload,
        tenant_guid=job.tenant_guid,
        batch_id=job.batch_id,
        attempt=job.attempts,
        max_attempts=job.max_attempts,
        lease_owner=owner,
    )


def _held_by(job: ClaimedJob) -> Any:
    return and_(
        Job.id == job.id,
        Job.attempts == job.attempt,
        Job.lease_owner == job.lease_owner,
        Job.status == JobStatus.RUNNING.value,
    )


async def extend_lease(
    session: AsyncSession, job: ClaimedJob, now: datetime, lease: timedelta
) -> bool:
    """Renew the lease; return False when this attempt no longer holds the job."""
    renewed = await session.scalar(
        update(Job)
        .where(_held_by(job))
        .values(lease_expires_at=now + lease, updated_at=now)
        .returning(Job.id)
    )
    return renewed is not None


async def check_held(session: AsyncSession, job: ClaimedJob) -> None:
    """Raise `LeaseLostError` unless this attempt still holds the job; locks the job row."""
    held = await session.scalar(select(Job.id).where(_held_by(job)).with_for_update())
    if held is None:
        raise LeaseLostError(f"job {job.id} attempt {job.attempt} lost its lease")


async def mark_succeeded(session: AsyncSession, job: ClaimedJob, now: datetime) -> None:
    """Finish the job in the caller's transaction; raise `LeaseLostError` if it was taken over."""
    finished = await session.scalar(
        update(Job)
        .where(_held_by(job))
        .values(
            status=JobStatus.SUCCEEDED.value,
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .returning(Job.id)
    )
    if finished is None:
        raise LeaseLostError(f"job {job.id} attempt {job.attempt} lost its lease")


async def mark_failed_attempt(
    session: AsyncSession, job: ClaimedJob, error: str, now: datetime, retry_in: timedelta | None
) -> bool:
    """Record a failed attempt: wait `retry_in` and run again, or (None) give up for good.
    Return False when the attempt had already lost the job."""
    values: dict[str, Any] = {
        "lease_owner": None,
        "lease_expires_at": None,
        "last_error": error[:4000],
        "updated_at": now,
    }
    if retry_in is None:
        values.update(status=JobStatus.FAILED.value, finished_at=now)
    else:
        values.update(status=JobStatus.QUEUED.value, run_after=now + retry_in)
    updated = await session.scalar(
        update(Job).where(_held_by(job)).values(**values).returning(Job.id)
    )
    return updated is not None


async def fail_exhausted_leases(session: AsyncSession, now: datetime) -> list[int]:
    """Give up on running jobs whose lease expired on their last allowed attempt."""
    result = await session.scalars(
        update(Job)
        .where(
            Job.status == JobStatus.RUNNING.value,
            Job.lease_expires_at < now,
            Job.attempts >= Job.max_attempts,
        )
        .values(
            status=JobStatus.FAILED.value,
            lease_owner=None,
            lease_expires_at=None,
            last_error="the worker stopped responding and the job has no attempts left",
            finished_at=now,
            updated_at=now,
        )
        .returning(Job.id)
    )
    return list(result)


async def list_jobs(session: AsyncSession, status: JobStatus | None, limit: int) -> list[Job]:
    statement = select(Job).order_by(Job.id.desc()).limit(limit)
    if status is not None:
        statement = statement.where(Job.status == status.value)
    return list(await session.scalars(statement))


async def retry_failed(session: AsyncSession, job_id: int, now: datetime) -> bool:
    """Queue a failed job again with a fresh attempt budget (operator action)."""
    updated = await session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.FAILED.value)
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            run_after=now,
            finished_at=None,
            updated_at=now,
        )
        .returning(Job.id)
    )
    return updated is not None

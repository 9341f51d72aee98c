"""The worker loop: claim jobs, keep their leases alive, retry failures with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from datetime import timedelta

import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from docbatch.core.errors import InfrastructureError, summarize_error
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.queue import jobs
from docbatch.queue.jobs import ClaimedJob, LeaseLostError
from docbatch.storage.blobs import BlobStore
from docbatch.store.database import Database
from docbatch.worker.handlers import JobHandlers

logger = structlog.get_logger(__name__)

# Errors of the database or blob store: retried with backoff and logged without a stack trace.
_INFRASTRUCTURE_ERRORS = (DBAPIError, PoolTimeoutError, InfrastructureError, OSError)
_SHUTDOWN_GRACE_SECONDS = 10.0


class Worker:
    """Runs `worker_concurrency` job slots in the current event loop."""

    def __init__(self, settings: Settings, database: Database, blobs: BlobStore) -> None:
        self._settings = settings
        self._database = database
        self._handlers = JobHandlers(settings, database, blobs)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = asyncio.Event()
        # Pulsed when a slot claims or finishes a job, so that idle slots look for work at once.
        self._work_may_be_waiting = asyncio.Event()
        self._slots: list[asyncio.Task[None]] = []
        self._lease = timedelta(seconds=settings.job_lease_seconds)

    async def start(self) -> None:
        self._stopping.clear()
        self._slots = [
            asyncio.create_task(self._run_slot(index), name=f"docbatch-worker-slot-{index}")
            for index in range(self._settings.worker_concurrency)
        ]
        logger.info("worker.started", owner=self.owner, slots=len(self._slots))

    async def stop(self) -> None:
        """Stop claiming, give running jobs a grace period, then cancel and release them."""
        self._stopping.set()
        if not self._slots:
            return
        _, still_running = await asyncio.wait(self._slots, timeout=_SHUTDOWN_GRACE_SECONDS)
        for slot in still_running:
            slot.cancel()
        await asyncio.gather(*self._slots, return_exceptions=True)
        self._slots = []
        logger.info("worker.stopped", owner=self.owner)

    async def _run_slot(self, index: int) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                job = await self._claim()
                failures = 0
            except Exception as error:  # noqa: BLE001  # logged below, and the loop must go on
                # A slot must outlive any failure, or the process stays up doing nothing.
                failures += 1
                delay = min(
                    self._settings.job_backoff_max_seconds,
                    self._settings.worker_poll_seconds * 2**failures,
                )
                log = (
                    logger.warning
                    if isinstance(error, _INFRASTRUCTURE_ERRORS)
                    else logger.exception
                )
                log(
                    "worker.claim_failed",
                    slot=index,
                    error=summarize_error(error),
                    retry_in_seconds=delay,
                )
                await self._sleep(delay)
                continue
            if job is None:
                await self._idle(self._settings.worker_poll_seconds)
                continue
            # Where there was one job there may be more, and a finished job may have enqueued some.
            self._wake_idle_slots()
            await self._run_job(job)
            self._wake_idle_slots()

    def _wake_idle_slots(self) -> None:
        # Setting an asyncio event wakes every current waiter, even when it is cleared at once.
        self._work_may_be_waiting.set()
        self._work_may_be_waiting.clear()

    async def _idle(self, seconds: float) -> None:
        """Wait until the poll interval passes, another slot finds work or the worker stops."""
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._work_may_be_waiting.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _claim(self) -> ClaimedJob | None:
        now = utcnow()
        async with self._database.transaction() as session:
            for job_id in await jobs.fail_exhausted_leases(session, now):
                logger.error(
                    "job.exhausted", job_id=job_id, reason="lease expired on the last attempt"
                )
            return await jobs.claim(session, self.owner, now, self._lease)

    async def _run_job(self, job: ClaimedJob) -> None:
        structlog.contextvars.bind_contextvars(
            job_id=job.id,
            job_kind=job.kind,
            batch_id=job.batch_id,
            tenant=str(job.tenant_guid) if job.tenant_guid else None,
            attempt=job.attempt,
        )
        handler = self._handlers.for_kind(job.kind)
        logger.info("job.started", owner=self.owner)
        started = asyncio.get_running_loop().time()
        try:
            if handler is None:
                await self._record_failure(job, f"no handler for job kind {job.kind!r}", final=True)
                return
            work: asyncio.Task[None] = asyncio.ensure_future(handler(job))
            heartbeat = asyncio.create_task(self._keep_lease(job, work))
            try:
                await work
            finally:
                heartbeat.cancel()
            logger.info(
                "job.succeeded",
                duration_ms=round((asyncio.get_running_loop().time() - started) * 1000),
            )
        except LeaseLostError as error:
            logger.warning("job.lease_lost", error=str(error))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker is stopping: hand the job back instead of waiting for its lease.
                await asyncio.shield(self._release(job))
                raise
            logger.warning("job.lease_lost", error="another worker took the job over")
        except _INFRASTRUCTURE_ERRORS as error:
            await self._record_failure(job, f"{type(error).__name__}: {error}")
        except Exception as error:
            logger.exception("job.crashed")
            await self._record_failure(job, f"{type(error).__name__}: {error}")
        finally:
            structlog.contextvars.unbind_contextvars(
                "job_id", "job_kind", "batch_id", "tenant", "attempt"
            )

    async def _keep_lease(self, job: ClaimedJob, work: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(self._settings.job_heartbeat_seconds)
            try:
                async with self._database.transaction() as session:
                    held = await jobs.extend_lease(session, job, utcnow(), self._lease)
            except Exception as error:  # noqa: BLE001  # logged below, and the loop must go on
                log = (
                    logger.warning
                    if isinstance(error, _INFRASTRUCTURE_ERRORS)
                    else logger.exception
                )
                log("job.heartbeat_failed", job_id=job.id, error=summarize_error(error))
                continue
            if not held:
                logger.warning("job.lease_taken_over", job_id=job.id)
                work.cancel()
                return

    def _backoff(self, attempt: int) -> timedelta:
        base = self._settings.job_backoff_base_seconds * 2 ** (attempt - 1)
        capped = min(self._settings.job_backoff_max_seconds, base)
        return timedelta(seconds=capped * random.uniform(0.5, 1.0))  # noqa: S311  # jitter, not security

    async def _record_failure(self, job: ClaimedJob, error: str, *, final: bool = False) -> None:
        exhausted = final or job.attempt >= job.max_attempts
        retry_in = None if exhausted else self._backoff(job.attempt)
        try:
            async with self._database.transaction() as session:
                recorded = await jobs.mark_failed_attempt(session, job, error, utcnow(), retry_in)
        except _INFRASTRUCTURE_ERRORS as record_error:
            # The lease expires on its own and another worker retries the job.
            logger.warning(
                "job.failure_not_recorded", error=error[:300], record_error=str(record_error)[:300]
            )
            return
        if not recorded:
            logger.warning("job.lease_lost", error=error[:300])
        elif exhausted:
            logger.error("job.failed", error=error[:300], attempts=job.attempt)
        else:
            logger.warning(
                "job.retrying",
                error=error[:300],
                retry_in_seconds=round(retry_in.total_seconds(), 1) if retry_in else None,
            )

    async def _release(self, job: ClaimedJob) -> None:
        """Return an interrupted job to the queue at once instead of waiting for its lease."""
        try:
            async with self._database.transaction() as session:
                await jobs.mark_failed_attempt(
                    session, job, "the worker stopped during the job", utcnow(), timedelta(0)
                )
            logger.info("job.released")
        except _INFRASTRUCTURE_ERRORS as error:
            logger.warning("job.release_failed", error=str(error)[:300])

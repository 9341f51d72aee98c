"""Everything one benchmark invocation sets up: the database, a tenant, a token, the service."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench import postgres, processes
from bench.postgres import ServerAddress, Sql


@dataclass(frozen=True)
class Sizes:
    """Load sizes of one invocation; `--smoke` picks `SMOKE`, otherwise `FULL`."""

    runs: int
    load_seconds: float
    open_batches: int
    close_connections: tuple[int, ...]
    big_batches: int
    big_batch_records: int
    small_closes: int
    upload_connections: int
    records_per_request: int
    upload_record_bytes: int
    large_record_bytes: int
    worker_records: int
    worker_record_bytes: int
    read_batches: int
    read_connections: int


FULL = Sizes(
    runs=3,
    load_seconds=10,
    open_batches=200_000,
    close_connections=(32, 64),
    big_batches=3,
    big_batch_records=1_000_000,
    small_closes=300,
    upload_connections=16,
    records_per_request=100,
    upload_record_bytes=1024,
    large_record_bytes=100 * 1024 * 1024,
    worker_records=40_000,
    worker_record_bytes=2048,
    read_batches=10_000,
    read_connections=64,
)

SMOKE = Sizes(
    runs=1,
    load_seconds=2,
    open_batches=20_000,
    close_connections=(32, 64),
    big_batches=2,
    big_batch_records=5_000,
    small_closes=40,
    upload_connections=16,
    records_per_request=100,
    upload_record_bytes=1024,
    large_record_bytes=8 * 1024 * 1024,
    worker_records=1_000,
    worker_record_bytes=2048,
    read_batches=1_000,
    read_connections=64,
)


@dataclass
class Context:
    server: ServerAddress
    database: str
    folder: Path
    sizes: Sizes
    api_processes: int = 1
    tenant: uuid.UUID = field(default_factory=uuid.uuid4)
    batch_type_id: int = 0
    token: str = ""
    sql: Sql | None = None
    service: processes.Started | None = None
    _started: list[processes.Started] = field(default_factory=list)

    @property
    def blob_root(self) -> Path:
        return self.folder / "blobs"

    @property
    def environment(self) -> dict[str, str]:
        """DOCBATCH_* settings for every process this benchmark starts."""
        return {
            "DOCBATCH_DATABASE_URL": self.server.sqlalchemy_url(self.database),
            "DOCBATCH_STORAGE_URL": f"file://{self.blob_root}",
            "DOCBATCH_SIGNING_KEY_FILE": str(self.folder / "signing-key.pem"),
            "DOCBATCH_LOG_FORMAT": "json",
        }

    def db(self) -> Sql:
        if self.sql is None:
            raise RuntimeError("the benchmark database is not open; call prepare() first")
        return self.sql

    def prepare(self, *, start_service: bool = True) -> None:
        """Create and migrate the database, seed the tenant, mint a token, and start the service
        unless `start_service` is false."""
        postgres.create_database(self.server, self.database)
        self.blob_root.mkdir(parents=True, exist_ok=True)
        self._docbatch("db", "upgrade")
        from docbatch.auth.keys import load_or_create_signing_key

        load_or_create_signing_key(self.folder / "signing-key.pem", create=True)
        self.sql = Sql(self.server.dsn(self.database))
        self.batch_type_id = postgres.seed_tenant(self.sql, self.tenant)
        self.token = self._docbatch(
            "token",
            "--tenant",
            str(self.tenant),
            "--role",
            "BatchCreator",
            "BatchViewer",
            "BatchAdmin",
        ).strip()
        if start_service:
            self.service = self.start_service("service")

    def _docbatch(self, *arguments: str) -> str:
        completed = subprocess.run(  # noqa: S603
            [str(processes.VENV_BIN / "docbatch"), *arguments],
            env={**os.environ, **self.environment},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(
                f"docbatch {' '.join(arguments)} failed with status {completed.returncode}: "
                f"{completed.stderr}"
            )
        output: str = completed.stdout
        return output

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def start_service(self, name: str, api_processes: int | None = None) -> processes.Started:
        """Start the API server with `api_processes` processes (default: the context's)."""
        started = processes.start_service(
            self.environment, self.log_path(name), api_processes or self.api_processes
        )
        self._started.append(started)
        return started

    def start_worker(self, name: str) -> processes.Started:
        started = processes.start_worker(self.environment, self.log_path(name))
        self._started.append(started)
        return started

    def start_reference_app(self) -> processes.Started:
        started = processes.start_reference_app(
            self.environment, self.log_path("reference"), self.api_processes
        )
        self._started.append(started)
        return started

    def stop(self, started: processes.Started) -> None:
        started.stop()
        if started in self._started:
            self._started.remove(started)

    def url(self, started: processes.Started | None = None) -> str:
        target = started or self.service
        if target is None or target.port is None:
            raise RuntimeError("the service is not running")
        return f"http://127.0.0.1:{target.port}"

    def connection(self, started: processes.Started | None = None) -> http.client.HTTPConnection:
        target = started or self.service
        if target is None or target.port is None:
            raise RuntimeError("the service is not running")
        return http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)

    def service_pid(self) -> int:
        if self.service is None:
            raise RuntimeError("the service is not running")
        return self.service.pid

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def close_batch(self, connection: http.client.HTTPConnection, guid: uuid.UUID) -> float:
        """PUT MarkBatchUploadComplete; return the latency in ms. Raise on any status but 200."""
        path = f"/api/DocBatch/MarkBatchUploadComplete?tenantGuid={self.tenant}&batchGuid={guid}"
        started = time.perf_counter()
        connection.request("PUT", path, body=b"", headers=self.headers())
        response = connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(
                f"MarkBatchUploadComplete of batch {guid} returned {response.status}: "
                f"{body[:500]!r}"
            )
        return elapsed

    def teardown(self, keep_folder: bool) -> None:
        """Stop every process this benchmark started, drop the database, remove the folder."""
        for started in list(self._started):
            self.stop(started)
        if self.sql is not None:
            self.sql.close()
            self.sql = None
        postgres.drop_database(self.server, self.database)
        if not keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

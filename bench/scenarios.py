"""The five benchmark scenarios. Each runs `sizes.runs` times and returns its table rows."""

from __future__ import annotations

import http.client
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import postgres
from bench.context import Context
from bench.load import WrkResult, run_pgbench, run_wrk
from bench.postgres import batch_guid
from bench.processes import machine_busy_seconds, memory_kib, tree_cpu_seconds
from bench.report import Row, median

PGBENCH_SCRIPT = Path(__file__).parent / "mark_upload_complete.pgbench"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Counters:
    """The service's CPU seconds so far, summed over its processes, and the sessions PostgreSQL
    has counted for the benchmark database."""

    cpu_seconds: float
    sessions: int


def _counters(context: Context) -> _Counters:
    return _Counters(
        tree_cpu_seconds(context.service_pid()), postgres.sessions_opened(context.db())
    )


def _report_load(
    context: Context, label: str, connections: int, before: _Counters, result: WrkResult
) -> None:
    """Print the service's CPU time per request and its share of one core during the load, summed
    over its processes, and how many database sessions were opened meanwhile.

    A pool that keeps its connections opens none under steady load. Sessions opened during the
    load mean that connections were closed and opened again, which costs a TLS handshake and a
    new server process each.
    """
    used = tree_cpu_seconds(context.service_pid()) - before.cpu_seconds
    sessions = postgres.sessions_opened(context.db()) - before.sessions
    print(
        f"bench: {label} c={connections}: {result.throughput:,.0f} req/s, service CPU "
        f"{1000 * used / max(result.requests, 1):.2f} ms per request, "
        f"{100 * used / result.seconds:.0f}% of one core, {sessions} database sessions opened, "
        f"errors {result.error_kinds}",
        file=sys.stderr,
        flush=True,
    )


def _write_guid_file(path: Path, first_id: int, count: int) -> Path:
    path.write_text("".join(f"{batch_guid(n)}\n" for n in range(first_id, first_id + count)))
    return path


def _seed_open_batches(context: Context, count: int) -> None:
    sql = context.db()
    postgres.reset_hot_tables(sql)
    postgres.seed_batches(sql, context.tenant, context.batch_type_id, 1, count)
    postgres.settle_after_seeding(sql)


def mark_upload_complete(context: Context) -> list[Row]:
    """Close open batches through the API with wrk and the same SQL with pgbench, alternately,
    at each connection count. Every measurement starts from freshly seeded open batches."""
    sizes = context.sizes
    guid_file = _write_guid_file(context.folder / "open-batches.txt", 1, sizes.open_batches)
    rows = []
    for connections in sizes.close_connections:
        service, reference, ratios, errors = [], [], [], 0
        for _ in range(sizes.runs):
            _seed_open_batches(context, sizes.open_batches)
            before = _counters(context)
            result = run_wrk(
                context.url(),
                "mark_upload_complete.lua",
                [str(guid_file), "2", str(context.tenant), context.token],
                connections,
                sizes.load_seconds,
            )
            _report_load(context, "MarkBatchUploadComplete", connections, before, result)
            if result.wrapped:
                raise RuntimeError(
                    f"wrk closed more than the {sizes.open_batches} seeded batches; "
                    "raise open_batches"
                )
            postgres.wait_until_idle(context.db())
            # Requests in flight when wrk stopped may still have closed their batches.
            closed = context.db().fetchval("SELECT count(*) FROM jobs")
            if closed < result.requests - result.errors:
                raise RuntimeError(
                    f"{result.requests - result.errors} requests succeeded but only {closed} "
                    "jobs were inserted"
                )
            _seed_open_batches(context, sizes.open_batches)
            baseline = run_pgbench(
                context.server,
                context.database,
                PGBENCH_SCRIPT,
                connections,
                sizes.load_seconds,
                {"k": "0", "tenant": str(context.tenant), "nclients": str(connections)},
            )
            postgres.wait_until_idle(context.db())
            queued = context.db().fetchval("SELECT count(*) FROM batches WHERE status = 'Queued'")
            if queued < baseline.transactions:
                raise RuntimeError(
                    f"pgbench committed {baseline.transactions} transactions but closed only "
                    f"{queued} batches"
                )
            if baseline.transactions > sizes.open_batches:
                raise RuntimeError(
                    f"pgbench ran {baseline.transactions} transactions on "
                    f"{sizes.open_batches} seeded batches; raise open_batches"
                )
            service.append(result)
            reference.append(baseline.tps)
            ratios.append(result.throughput / baseline.tps)
            errors += result.errors + baseline.failed
        throughput = median([r.throughput for r in service])
        p99 = median([r.p99_ms for r in service])
        ratio = median(ratios)
        passed = ratio is not None and ratio >= 0.5 and errors == 0
        target = ">= 0.5 x pgbench"
        if connections == 32:
            passed = passed and p99 is not None and p99 <= 25
            target += ", p99 <= 25 ms"
        rows.append(
            Row(
                scenario=f"MarkBatchUploadComplete c={connections}",
                throughput=throughput,
                unit="req/s",
                p50_ms=median([r.p50_ms for r in service]),
                p99_ms=p99,
                reference=median(reference),
                reference_label=f"pgbench {median(reference):,.0f} tps",
                ratio=ratio,
                target=target,
                passed=passed,
                errors=errors,
                runs=sizes.runs,
            )
        )
    return rows


def _seed_single_record_batches(context: Context, first_id: int, count: int) -> None:
    sql = context.db()
    postgres.seed_batches(sql, context.tenant, context.batch_type_id, first_id, count, 1)
    sql.execute(
        """
        INSERT INTO batch_records (
            batch_id, tenant_guid, status, blob_key, payload_bytes, has_log_data,
            has_document_data, is_retrieved, created_at, updated_at)
        SELECT n, $1, 'Creating', 'records/unused/' || n, 1024, false, false, false,
               now(), now()
        FROM generate_series($2::bigint, $3::bigint) AS n
        """,
        context.tenant,
        first_id,
        first_id + count - 1,
    )


def close_cost_by_batch_size(context: Context) -> list[Row]:
    """Compare the latency of closing big batches with closing 1-record batches, one request
    at a time on one connection, the big closes spread evenly among the small ones.

    Between runs the big batches are reopened with SQL, so each run closes each one once.
    """
    sizes = context.sizes
    sql = context.db()
    postgres.reset_hot_tables(sql)
    big_ids = list(range(1, sizes.big_batches + 1))
    postgres.seed_batches(
        sql, context.tenant, context.batch_type_id, 1, sizes.big_batches, sizes.big_batch_records
    )
    for batch_id in big_ids:
        postgres.seed_records(
            sql, context.tenant, batch_id, sizes.big_batch_records, 1024, "records/unused/"
        )
    warmup = 20
    small_first = 1_001
    small_total = warmup + sizes.small_closes * sizes.runs
    _seed_single_record_batches(context, small_first, small_total)
    sql.execute("VACUUM ANALYZE batch_records")
    postgres.settle_after_seeding(sql)

    connection = context.connection()
    for batch_id in range(small_first, small_first + warmup):
        context.close_batch(connection, batch_guid(batch_id))
    next_small = small_first + warmup
    ratios, big_medians, small_medians = [], [], []
    spacing = sizes.small_closes // (sizes.big_batches + 1)
    for run in range(sizes.runs):
        if run:
            sql.execute(
                "UPDATE batches SET status = 'Creating', has_creation_completed = false "
                "WHERE id = ANY($1::bigint[])",
                big_ids,
            )
            sql.execute("DELETE FROM jobs WHERE batch_id = ANY($1::bigint[])", big_ids)
        big_latencies, small_latencies = [], []
        for index in range(sizes.small_closes):
            small_latencies.append(context.close_batch(connection, batch_guid(next_small)))
            next_small += 1
            position, remainder = divmod(index + 1, spacing)
            if remainder == 0 and 1 <= position <= sizes.big_batches:
                big_latencies.append(
                    context.close_batch(connection, batch_guid(big_ids[position - 1]))
                )
        big_median = median(big_latencies)
        small_median = median(small_latencies)
        big_medians.append(big_median)
        small_medians.append(small_median)
        ratios.append((big_median or 0) / (small_median or 1))
    connection.close()
    ratio = median(ratios)
    return [
        Row(
            scenario=f"Close {sizes.big_batch_records:,}-record vs 1-record batch",
            throughput=None,
            unit="",
            p50_ms=median(big_medians),
            p99_ms=None,
            reference=median(small_medians),
            reference_label=f"1-record p50 {median(small_medians):.2f} ms",
            ratio=ratio,
            target="<= 1.2",
            passed=ratio is not None and ratio <= 1.2,
            errors=0,
            runs=sizes.runs,
        )
    ]


def _multipart_body(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    chunks = []
    for file_name, payload in parts:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="RecordData"; '
            f'filename="{file_name}"\r\nContent-Type: application/xml\r\n\r\n'.encode()
        )
        chunks.append(payload)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def upload_records(context: Context) -> list[Row]:
    """CreateBatchRecords with 1 KiB XML records, many per request, into open batches."""
    sizes = context.sizes
    sql = context.db()
    postgres.reset_hot_tables(sql)
    batch_count = 64
    postgres.seed_batches(sql, context.tenant, context.batch_type_id, 1, batch_count)
    postgres.settle_after_seeding(sql)
    guid_file = _write_guid_file(context.folder / "upload-batches.txt", 1, batch_count)
    boundary = "docbatch-bench-boundary"
    body = _multipart_body(
        boundary,
        [
            (f"record-{n}.xml", postgres.order_xml(n, sizes.upload_record_bytes))
            for n in range(sizes.records_per_request)
        ],
    )
    body_file = context.folder / "upload-body.bin"
    body_file.write_bytes(body)
    results, errors = [], 0
    for _ in range(sizes.runs):
        before = _counters(context)
        result = run_wrk(
            context.url(),
            "create_batch_records.lua",
            [str(body_file), boundary, str(guid_file), "2", str(context.tenant), context.token],
            sizes.upload_connections,
            sizes.load_seconds,
        )
        _report_load(context, "CreateBatchRecords", sizes.upload_connections, before, result)
        postgres.wait_until_idle(sql)
        stored = sql.fetchval("SELECT count(*) FROM batch_records")
        if result.errors == 0 and stored < result.requests * sizes.records_per_request:
            raise RuntimeError(
                f"{result.requests} uploads succeeded but only {stored} records are stored"
            )
        sql.execute("TRUNCATE batch_records, record_log_entries")
        results.append((result.throughput * sizes.records_per_request, result))
        errors += result.errors
    throughput = median([value for value, _ in results])
    return [
        Row(
            scenario=(
                f"CreateBatchRecords {sizes.records_per_request} x "
                f"{sizes.upload_record_bytes // 1024} KiB c={sizes.upload_connections}"
            ),
            throughput=throughput,
            unit="records/s",
            p50_ms=median([result.p50_ms for _, result in results]),
            p99_ms=median([result.p99_ms for _, result in results]),
            reference=None,
            reference_label="-",
            ratio=None,
            target=">= 5,000 records/s",
            passed=throughput is not None and throughput >= 5_000 and errors == 0,
            errors=errors,
            runs=sizes.runs,
        ),
        _large_record_memory(context),
    ]


def _stream_large_record(
    connection: http.client.HTTPConnection, context: Context, guid: uuid.UUID, size: int
) -> int:
    boundary = "docbatch-bench-large"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="RecordData"; '
        f'filename="large.xml"\r\nContent-Type: application/xml\r\n\r\n<large>'
    ).encode()
    tail = f"</large>\r\n--{boundary}--\r\n".encode()
    filler_size = size - len("<large></large>")
    chunk = b"x" * MIB

    def body() -> Iterator[bytes]:
        yield head
        remaining = filler_size
        while remaining > 0:
            piece = chunk[: min(remaining, MIB)]
            remaining -= len(piece)
            yield piece
        yield tail

    length = len(head) + filler_size + len(tail)
    connection.request(
        "POST",
        f"/api/DocBatch/CreateBatchRecord?tenantGuid={context.tenant}&batchGuid={guid}",
        body=body(),
        headers={
            **context.headers(),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length),
        },
    )
    response = connection.getresponse()
    response.read()
    return response.status


def _large_record_memory(context: Context) -> Row:
    """Upload one large record to a freshly started server and compare its peak RSS (VmHWM)
    after the upload with the peak when idle after a small warm-up upload.

    The server runs one process for any value of `--api-processes`, so that the process measured is
    the one that handles the upload.
    """
    sizes = context.sizes
    sql = context.db()
    growths, idles, errors = [], [], 0
    for run in range(sizes.runs):
        first_id = 10_000 + run * 2
        postgres.seed_batches(sql, context.tenant, context.batch_type_id, first_id, 2)
        server = context.start_service(f"service-large-record-{run}", api_processes=1)
        try:
            connection = context.connection(server)
            status = _stream_large_record(connection, context, batch_guid(first_id), 4096)
            if status != 200:
                raise RuntimeError(f"the warm-up upload returned {status}")
            time.sleep(1)
            idle = memory_kib(server.pid)["VmHWM"]
            status = _stream_large_record(
                connection, context, batch_guid(first_id + 1), sizes.large_record_bytes
            )
            errors += int(status != 200)
            peak = memory_kib(server.pid)["VmHWM"]
            connection.close()
        finally:
            context.stop(server)
        growths.append((peak - idle) / 1024)
        idles.append(idle / 1024)
    growth = median(growths)
    idle_median = median(idles)
    return Row(
        scenario=f"CreateBatchRecord one {sizes.large_record_bytes // MIB} MiB record",
        throughput=growth,
        unit="MiB peak RSS growth",
        p50_ms=None,
        p99_ms=None,
        reference=idle_median,
        reference_label=f"idle VmHWM {idle_median:,.0f} MiB",
        ratio=None,
        target="growth <= 32 MiB",
        passed=growth is not None and growth <= 32 and errors == 0,
        errors=errors,
        runs=sizes.runs,
    )


def _wait_for_log(path: Path, text: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count(text) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not log {text!r} within {timeout} s")


def _process_batch_with_workers(
    context: Context, worker_count: int, batch_id: int, payloads: list[bytes], label: str
) -> tuple[float, int]:
    """Seed a batch, start the workers, close it through the API and time it to Completed.

    Return records per second and the number of records not completed.
    """
    sizes = context.sizes
    sql = context.db()
    records = sizes.worker_records
    postgres.seed_batches(sql, context.tenant, context.batch_type_id, batch_id, 1, records)
    postgres.seed_inline_records(sql, context.tenant, batch_id, payloads)
    sql.execute("VACUUM ANALYZE batch_records")
    workers = [context.start_worker(f"worker-{label}-{index}") for index in range(worker_count)]
    try:
        for worker in workers:
            _wait_for_log(worker.log, "worker.started", 1, 60)
        connection = context.connection()
        cpu_before = [tree_cpu_seconds(worker.pid) for worker in workers]
        machine_before = machine_busy_seconds()
        started = time.perf_counter()
        context.close_batch(connection, batch_guid(batch_id))
        connection.close()
        deadline = time.monotonic() + 120 + records / 100
        while True:
            row = sql.fetchrow(
                "SELECT status, completed_records FROM batches WHERE id = $1", batch_id
            )
            if row["status"] in ("Completed", "Error"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} is still {row['status']} after the deadline")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        worker_cpu = sum(
            tree_cpu_seconds(worker.pid) - before
            for worker, before in zip(workers, cpu_before, strict=True)
        )
        machine = machine_busy_seconds() - machine_before
        print(
            f"bench: {worker_count} worker(s): {records / elapsed:,.0f} records/s in "
            f"{elapsed:.2f} s; workers used {worker_cpu / elapsed:.2f} cores, the whole machine "
            f"{machine / elapsed:.2f} of {os.cpu_count()} cores",
            file=sys.stderr,
            flush=True,
        )
    finally:
        for worker in workers:
            context.stop(worker)
    return records / elapsed, records - int(row["completed_records"])


def workers(context: Context) -> list[Row]:
    """Validate a batch of 2 KiB XML records against the XSD with one and then two workers."""
    sizes = context.sizes
    postgres.reset_hot_tables(context.db())
    payloads = [
        postgres.order_xml(position, sizes.worker_record_bytes)
        for position in range(1, sizes.worker_records + 1)
    ]
    one, two, ratios, errors = [], [], [], 0
    batch_id = 1
    for run in range(sizes.runs):
        rate_one, missing_one = _process_batch_with_workers(
            context, 1, batch_id, payloads, f"{run}-one"
        )
        rate_two, missing_two = _process_batch_with_workers(
            context, 2, batch_id + 1, payloads, f"{run}-two"
        )
        batch_id += 2
        one.append(rate_one)
        two.append(rate_two)
        ratios.append(rate_two / rate_one)
        errors += missing_one + missing_two
    one_median = median(one)
    ratio = median(ratios)
    return [
        Row(
            scenario=f"Worker validation, 1 worker ({sizes.worker_records:,} records)",
            throughput=one_median,
            unit="records/s",
            p50_ms=None,
            p99_ms=None,
            reference=None,
            reference_label="-",
            ratio=None,
            target=">= 2,000 records/s",
            passed=one_median is not None and one_median >= 2_000 and errors == 0,
            errors=errors,
            runs=sizes.runs,
        ),
        Row(
            scenario=f"Worker validation, 2 workers ({sizes.worker_records:,} records)",
            throughput=median(two),
            unit="records/s",
            p50_ms=None,
            p99_ms=None,
            reference=one_median,
            reference_label=f"1 worker {one_median:,.0f} records/s",
            ratio=ratio,
            target=">= 1.7 x 1 worker",
            passed=ratio is not None and ratio >= 1.7 and errors == 0,
            errors=errors,
            runs=sizes.runs,
        ),
    ]


def get_batch(context: Context) -> list[Row]:
    """GetBatch on random seeded batches against the reference app, alternately."""
    sizes = context.sizes
    _seed_open_batches(context, sizes.read_batches)
    guid_file = _write_guid_file(context.folder / "read-batches.txt", 1, sizes.read_batches)
    reference_app = context.start_reference_app()
    service, references, ratios, errors = [], [], [], 0
    try:
        for _ in range(sizes.runs):
            before = _counters(context)
            result = run_wrk(
                context.url(),
                "get_batch.lua",
                [
                    str(guid_file),
                    "2",
                    f"/api/DocBatch/GetBatch?tenantGuid={context.tenant}&batchGuid=",
                    context.token,
                ],
                sizes.read_connections,
                sizes.load_seconds,
            )
            _report_load(context, "GetBatch", sizes.read_connections, before, result)
            baseline = run_wrk(
                context.url(reference_app),
                "get_batch.lua",
                [str(guid_file), "2", "/batch?batchGuid=", "-"],
                sizes.read_connections,
                sizes.load_seconds,
            )
            print(
                f"bench: reference app c={sizes.read_connections}: "
                f"{baseline.throughput:,.0f} req/s, errors {baseline.error_kinds}",
                file=sys.stderr,
                flush=True,
            )
            service.append(result)
            references.append(baseline.throughput)
            ratios.append(result.throughput / baseline.throughput)
            errors += result.errors + baseline.errors
    finally:
        context.stop(reference_app)
    ratio = median(ratios)
    reference = median(references)
    return [
        Row(
            scenario=f"GetBatch c={sizes.read_connections}",
            throughput=median([r.throughput for r in service]),
            unit="req/s",
            p50_ms=median([r.p50_ms for r in service]),
            p99_ms=median([r.p99_ms for r in service]),
            reference=reference,
            reference_label=f"minimal ASGI app {reference:,.0f} req/s",
            ratio=ratio,
            target=">= 0.6 x minimal app",
            passed=ratio is not None and ratio >= 0.6 and errors == 0,
            errors=errors,
            runs=sizes.runs,
        )
    ]


SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "mark-complete": mark_upload_complete,
    "close-by-size": close_cost_by_batch_size,
    "upload": upload_records,
    "workers": workers,
    "get-batch": get_batch,
}

"""`python -m bench instructions`: instructions per request, counted by callgrind.

Throughput on a shared machine varies by tens of percent between runs, while callgrind counts
the same instructions for the same work whatever else the machine runs. So this command is the
measure to compare code changes with; `python -m bench run` remains the measure of the targets.
Each figure is the difference between a run of many requests and a run of few, divided by the
difference in requests, so the start-up and the warm-up cancel out. The requests go through
`bench/asgi_driver.py` in process: no server, no HTTP parsing, no socket.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import postgres
from bench.asgi_driver import WARM_UP_REQUESTS
from bench.context import Context

REPOSITORY = Path(__file__).resolve().parent.parent
READ_BATCHES = 1_000
FULL_REQUESTS = (160, 800)
# The smoke mode runs the driver without valgrind, so its counts are not measured.
SMOKE_REQUESTS = (8, 24)
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


@dataclass(frozen=True)
class Measurement:
    label: str
    instructions: float | None
    reference_label: str = "-"
    reference: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.instructions is None or self.reference is None:
            return None
        return self.reference / self.instructions


def missing_valgrind() -> bool:
    return shutil.which("valgrind") is None


def _driver_command(
    context: Context, target: str, action: str, requests: int, first_id: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.asgi_driver",
        "--target",
        target,
        "--action",
        action,
        "--requests",
        str(requests),
        "--first-id",
        str(first_id),
        "--batches",
        str(READ_BATCHES),
        "--tenant",
        str(context.tenant),
    ]


def _count(
    context: Context, target: str, action: str, runs: list[tuple[int, int]], smoke: bool
) -> list[int | None]:
    """Run the driver once per (requests, first batch id) at the same time; return the
    instructions each run executed (None in smoke mode)."""
    environment = {
        **os.environ,
        **context.environment,
        "DOCBATCH_BENCH_TOKEN": context.token,
        # The repository root makes `bench` importable. A PYTHONPATH set by the caller stays
        # after it, so `docbatch` can come from another checkout's src/ for a comparison.
        "PYTHONPATH": os.pathsep.join(
            [str(REPOSITORY), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    started = []
    for requests, first_id in runs:
        name = f"{target}-{action}-{requests}"
        valgrind_log = context.folder / f"{name}.valgrind.log"
        command = _driver_command(context, target, action, requests, first_id)
        if not smoke:
            command = [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                f"--log-file={valgrind_log}",
                *command,
            ]
        output = (context.folder / f"{name}.log").open("wb")
        process = subprocess.Popen(  # noqa: S603
            command, cwd=REPOSITORY, env=environment, stdout=output, stderr=output
        )
        started.append((process, output, valgrind_log, context.folder / f"{name}.log"))
    counts: list[int | None] = []
    for process, output, valgrind_log, log in started:
        status = process.wait()
        output.close()
        if status != 0:
            raise RuntimeError(
                f"the driver exited with status {status}; its log is {log}:\n"
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        if smoke:
            counts.append(None)
            continue
        found = _COLLECTED.search(valgrind_log.read_text())
        if found is None:
            raise RuntimeError(f"callgrind printed no instruction count to {valgrind_log}")
        counts.append(int(found.group(1)))
    return counts


def _per_request(
    context: Context, target: str, action: str, first_ids: tuple[int, int], smoke: bool
) -> float | None:
    few, many = SMOKE_REQUESTS if smoke else FULL_REQUESTS
    counts = _count(context, target, action, [(few, first_ids[0]), (many, first_ids[1])], smoke)
    if counts[0] is None or counts[1] is None:
        return None
    return (counts[1] - counts[0]) / (many - few)


def measure(context: Context, smoke: bool) -> list[Measurement]:
    """Seed the batches, then count GetBatch, its reference app and MarkBatchUploadComplete."""
    few, many = SMOKE_REQUESTS if smoke else FULL_REQUESTS
    # Reads use ids 1 to READ_BATCHES; each close takes a batch of its own after them.
    first_close = READ_BATCHES + 1
    second_close = first_close + WARM_UP_REQUESTS + few
    sql = context.db()
    postgres.reset_hot_tables(sql)
    postgres.seed_batches(
        sql,
        context.tenant,
        context.batch_type_id,
        1,
        second_close + WARM_UP_REQUESTS + many,
    )
    postgres.settle_after_seeding(sql)
    reads = (1, 1)
    service_read = _per_request(context, "service", "get-batch", reads, smoke)
    reference_read = _per_request(context, "reference", "get-batch", reads, smoke)
    close = _per_request(context, "service", "mark-complete", (first_close, second_close), smoke)
    return [
        Measurement("GetBatch", service_read, "minimal ASGI app", reference_read),
        Measurement("MarkBatchUploadComplete", close),
    ]


def format_measurements(measurements: list[Measurement]) -> str:
    def number(value: float | None, pattern: str) -> str:
        return "-" if value is None else format(value, pattern)

    lines = [
        "| request | instructions per request | reference | reference instructions | ratio |",
        "|---|---|---|---|---|",
    ]
    for item in measurements:
        lines.append(
            f"| {item.label} | {number(item.instructions, ',.0f')} | {item.reference_label} | "
            f"{number(item.reference, ',.0f')} | {number(item.ratio, '.2f')} |"
        )
    return "\n".join(lines)

"""Smoke tests of the benchmark runner: `python -m bench run --smoke` completes every scenario,
and `python -m bench instructions --smoke` sends every request it counts.

Timings are never asserted: the machine running the tests is shared and its speed unknown. Only
the shape of the output is checked: one table row per scenario, each with zero errors.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL

REPOSITORY = Path(__file__).resolve().parent.parent
# Row labels of the table, one or more per scenario of bench/scenarios.py.
EXPECTED_ROWS = (
    "MarkBatchUploadComplete c=32",
    "MarkBatchUploadComplete c=64",
    "vs 1-record batch",
    "CreateBatchRecords",
    "CreateBatchRecord one",
    "Worker validation, 1 worker",
    "Worker validation, 2 workers",
    "GetBatch c=64",
)
SMOKE_TIMEOUT_SECONDS = 600


def _server_url() -> str:
    url = make_url(POSTGRES_URL)
    return f"postgresql://{url.username or 'postgres'}@{url.host or '127.0.0.1'}:{url.port or 5432}"


def _postgres_problem(server_url: str) -> str | None:
    """Return why the server cannot be used, or None. Only the maintenance database is
    opened: the runner creates and drops its own bench_* database."""

    async def probe() -> None:
        connection = await asyncpg.connect(f"{server_url}/postgres", timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        return f"PostgreSQL at {server_url} is not usable: {error}"
    return None


def _run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m bench` from the repository root and return its output."""
    return subprocess.run(
        [sys.executable, "-m", "bench", *arguments],
        cwd=REPOSITORY,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
        check=False,
    )


def _table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if not line.startswith("| ") or line.startswith("| scenario"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_bench_smoke_reports_every_scenario() -> None:
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed; the benchmark drives load with them")
    server_url = _server_url()
    problem = _postgres_problem(server_url)
    if problem is not None:
        pytest.skip(problem)

    completed = _run_bench("run", "--smoke", "--postgres-url", server_url)

    assert completed.returncode == 0, completed.stderr[-5000:]
    assert "API processes: 2;" in completed.stdout
    rows = _table_rows(completed.stdout)
    for label in EXPECTED_ROWS:
        matching = [name for name in rows if label in name]
        assert matching, f"no table row for {label!r} in:\n{completed.stdout}"
        errors = rows[matching[0]][8]
        assert errors == "0", f"row {matching[0]!r} reports {errors} errors"


@pytest.mark.slow
def test_instruction_count_smoke() -> None:
    """`python -m bench instructions --smoke` sends every request without valgrind."""
    server_url = _server_url()
    problem = _postgres_problem(server_url)
    if problem is not None:
        pytest.skip(problem)

    completed = _run_bench("instructions", "--smoke", "--postgres-url", server_url)

    assert completed.returncode == 0, completed.stderr[-5000:]
    assert "| GetBatch | - | minimal ASGI app |" in completed.stdout
    assert "| MarkBatchUploadComplete | - |" in completed.stdout


def test_bench_rejects_zero_processes() -> None:
    completed = _run_bench("run", "--smoke", "--api-processes", "0")

    assert completed.returncode == 2, completed.stderr
    assert "--api-processes is 0; it must be at least 1" in completed.stderr

"""Load generators run as separate processes: wrk against HTTP, pgbench against PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.postgres import ServerAddress

LUA_FOLDER = Path(__file__).parent / "lua"
WRK_THREADS = 2
# wrk and pgbench get this much time beyond their own duration before they count as hung.
LOAD_GRACE_SECONDS = 60


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    wrapped: int
    # Error counts by kind, as wrk reports them: status, connect, read, write, timeouts.
    error_kinds: dict[str, int]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def missing_tools() -> list[str]:
    return [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]


def run_wrk(
    url: str, script: str, arguments: list[str], connections: int, seconds: float
) -> WrkResult:
    """Run wrk with a Lua script from bench/lua and return its parsed result line.

    Errors count responses with a status above 399 (as wrk counts them), socket errors and
    timeouts (10 s per request).
    """
    command = [
        "wrk",
        "-t",
        str(min(WRK_THREADS, connections)),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_FOLDER / script),
        url,
        "--",
        *arguments,
    ]
    completed = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=seconds + LOAD_GRACE_SECONDS, check=False
    )
    match = re.search(r"^BENCH_RESULT (\{.*\})$", completed.stdout, re.MULTILINE)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(
            f"wrk failed with status {completed.returncode}:\n{completed.stdout}\n"
            f"{completed.stderr}"
        )
    data = json.loads(match.group(1))
    error_kinds = {
        name: data[name]
        for name in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    }
    errors = sum(error_kinds.values())
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        wrapped=data["wrapped"],
        error_kinds=error_kinds,
    )


@dataclass(frozen=True)
class PgbenchResult:
    transactions: int
    tps: float
    average_latency_ms: float
    failed: int


def run_pgbench(
    server: ServerAddress,
    database: str,
    script: Path,
    clients: int,
    seconds: float,
    variables: dict[str, str],
) -> PgbenchResult:
    """Run a custom pgbench script in prepared mode with `clients` connections."""
    command = [
        "pgbench",
        "-h",
        server.host,
        "-p",
        str(server.port),
        "-U",
        server.user,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        str(min(WRK_THREADS, clients)),
        "-T",
        f"{max(1, round(seconds))}",
        "-f",
        str(script),
    ]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    command.append(database)
    completed = subprocess.run(  # noqa: S603
        command, capture_output=True, text=True, timeout=seconds + LOAD_GRACE_SECONDS, check=False
    )
    output = completed.stdout
    tps = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    processed = re.search(r"actually processed: (\d+)", output)
    latency = re.search(r"latency average = ([\d.]+) ms", output)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if completed.returncode != 0 or not (tps and processed and latency):
        raise RuntimeError(
            f"pgbench failed with status {completed.returncode}:\n{output}\n{completed.stderr}"
        )
    return PgbenchResult(
        transactions=int(processed.group(1)),
        tps=float(tps.group(1)),
        average_latency_ms=float(latency.group(1)),
        failed=int(failed.group(1)) if failed else 0,
    )

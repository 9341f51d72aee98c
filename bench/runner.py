"""`python -m bench run`: set up a scratch database and service, run scenarios, print a table."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

from bench import instructions, profiling
from bench.context import FULL, SMOKE, Context, Sizes
from bench.load import missing_tools
from bench.postgres import ServerAddress
from bench.report import Row, format_table
from bench.scenarios import SCENARIOS

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_API_PROCESSES = 2


def _add_postgres_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DOCBATCH_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="PostgreSQL server reached without a password; a scratch database bench_* is "
        f"created on it and dropped afterwards (default: $DOCBATCH_BENCH_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark DocBatch on PostgreSQL against same-run references.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run scenarios and print the results table")
    run.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="scenario to run; repeat for several (default: all, in the documented order)",
    )
    run.add_argument(
        "--runs", type=int, help="measurements per scenario; the table shows medians (default 3)"
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, one run and 2 s loads: checks that everything works in about a minute",
    )
    _add_postgres_url(run)
    run.add_argument(
        "--load-seconds", type=float, help="duration of each wrk and pgbench load in seconds"
    )
    run.add_argument(
        "--api-processes",
        type=int,
        default=DEFAULT_API_PROCESSES,
        metavar="N",
        help="processes of the API server (`docbatch serve --workers N`) and of the GetBatch "
        "reference app; the 100 MiB upload scenario always uses one "
        f"(default: {DEFAULT_API_PROCESSES})",
    )
    run.add_argument(
        "--py-spy",
        type=Path,
        metavar="PATH",
        help="py-spy executable: record the API server during each scenario and write "
        "collapsed stacks and a summary to --profile-folder",
    )
    run.add_argument(
        "--profile-folder",
        type=Path,
        default=Path("bench-profiles"),
        help="where --py-spy writes its output (default: ./bench-profiles)",
    )
    run.add_argument(
        "--keep-folder",
        action="store_true",
        help="keep the scratch folder with the process logs and blobs after the run",
    )
    count = commands.add_parser(
        "instructions",
        help="count instructions per request with callgrind, for comparing code changes",
    )
    count.add_argument(
        "--smoke",
        action="store_true",
        help="run the requests once without valgrind: checks that the command works",
    )
    _add_postgres_url(count)
    count.add_argument(
        "--keep-folder", action="store_true", help="keep the scratch folder with the logs"
    )
    return parser


def _scratch_context(
    arguments: argparse.Namespace, sizes: Sizes, *, api_processes: int = 1
) -> Context:
    """Return a context with a new scratch folder and a database name no other run uses."""
    return Context(
        server=ServerAddress.from_url(arguments.postgres_url),
        database=f"bench_{os.getpid()}_{int(time.time())}",
        folder=Path(tempfile.mkdtemp(prefix="docbatch-bench-")),
        sizes=sizes,
        api_processes=api_processes,
    )


def count_instructions(arguments: argparse.Namespace) -> int:
    if not arguments.smoke and instructions.missing_valgrind():
        print(
            "bench: valgrind not found on PATH; install it first (apt-get install -y valgrind)",
            file=sys.stderr,
        )
        return 2
    context = _scratch_context(arguments, SMOKE)
    started = time.monotonic()
    try:
        context.prepare(start_service=False)
        measurements = instructions.measure(context, smoke=arguments.smoke)
    finally:
        context.teardown(keep_folder=arguments.keep_folder)
    print(instructions.format_measurements(measurements))
    print(f"\nwall time: {time.monotonic() - started:.0f} s")
    if arguments.keep_folder:
        print(f"logs kept in {context.folder}")
    return 0


def run(arguments: argparse.Namespace) -> int:
    if arguments.api_processes < 1:
        print(
            f"bench: --api-processes is {arguments.api_processes}; it must be at least 1",
            file=sys.stderr,
        )
        return 2
    missing = missing_tools()
    if missing:
        print(
            f"bench: {', '.join(missing)} not found on PATH; install them first "
            "(apt-get install -y wrk postgresql-client)",
            file=sys.stderr,
        )
        return 2
    sizes = SMOKE if arguments.smoke else FULL
    if arguments.runs is not None:
        if arguments.runs < 1:
            print("bench: --runs must be at least 1", file=sys.stderr)
            return 2
        sizes = replace(sizes, runs=arguments.runs)
    if arguments.load_seconds is not None:
        sizes = replace(sizes, load_seconds=arguments.load_seconds)
    names = arguments.scenario or list(SCENARIOS)
    context = _scratch_context(arguments, sizes, api_processes=arguments.api_processes)
    rows: list[Row] = []
    failures: list[str] = []
    started = time.monotonic()
    try:
        context.prepare()
        for name in names:
            scenario_started = time.monotonic()
            print(f"bench: running {name}", file=sys.stderr, flush=True)
            recorder = (
                profiling.start_recording(arguments.py_spy, context, name, arguments.profile_folder)
                if arguments.py_spy
                else None
            )
            try:
                rows += SCENARIOS[name](context)
            except Exception:  # noqa: BLE001  # report the scenario and run the next one
                failures.append(name)
                print(
                    f"bench: scenario {name} failed:\n{traceback.format_exc()}",
                    file=sys.stderr,
                    flush=True,
                )
            finally:
                if recorder is not None:
                    profiling.finish_recording(recorder)
            print(
                f"bench: {name} took {time.monotonic() - scenario_started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        context.teardown(keep_folder=arguments.keep_folder)
    print(format_table(rows))
    print(
        f"\nruns per scenario: {sizes.runs}; load duration: {sizes.load_seconds:g} s; "
        f"API processes: {arguments.api_processes}; wall time: {time.monotonic() - started:.0f} s"
    )
    if arguments.keep_folder:
        print(f"logs and blobs kept in {context.folder}")
    if failures:
        print(f"bench: scenarios that failed to run: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    arguments = build_parser().parse_args()
    if arguments.command == "instructions":
        raise SystemExit(count_instructions(arguments))
    raise SystemExit(run(arguments))

"""Optional py-spy recording of the API server while a scenario runs."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.context import Context

TOP_FUNCTIONS = 25
# Leaf frames of threads that wait: idle thread-pool workers, and the event loop blocked in
# uvloop's native poll, which py-spy attributes to the Python frame that entered the loop. With
# several API processes, each uvicorn worker also has a thread blocked reading pings from the
# supervisor (`Connection._recv`), and multiprocessing runs a resource tracker that waits too.
IDLE_LEAF_PREFIXES = (
    "Condition.wait ",
    "Queue.get ",
    "Runner.run ",
    "Connection._recv (multiprocessing/",
    "main (multiprocessing/resource_tracker.py",
)


@dataclass
class Recording:
    process: subprocess.Popen[bytes]
    output: Path


def start_recording(py_spy: Path, context: Context, scenario: str, folder: Path) -> Recording:
    """Start `py-spy record` on the service and its worker processes; samples of idle threads
    are not kept."""
    if context.service is None:
        raise RuntimeError("the service is not running")
    folder.mkdir(parents=True, exist_ok=True)
    output = folder / f"{scenario}.collapsed.txt"
    process = subprocess.Popen(  # noqa: S603
        [
            str(py_spy),
            "record",
            "--pid",
            str(context.service.pid),
            "--subprocesses",
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / f"{scenario}.py-spy.log").open("wb"),
        start_new_session=True,
    )
    return Recording(process, output)


def finish_recording(recording: Recording) -> None:
    """Stop py-spy (SIGINT makes it write its output) and print where the time went."""
    recording.process.send_signal(signal.SIGINT)
    try:
        recording.process.wait(60)
    except subprocess.TimeoutExpired:
        recording.process.kill()
        recording.process.wait()
    if not recording.output.exists():
        print(f"bench: py-spy wrote no profile to {recording.output}", file=sys.stderr)
        return
    summary = summarize(recording.output)
    summary_path = recording.output.with_suffix("").with_suffix(".summary.txt")
    summary_path.write_text(summary)
    print(f"bench: profile summary in {summary_path}", file=sys.stderr)


def summarize(collapsed: Path) -> str:
    """Return the functions with the largest inclusive share of busy samples (a function
    counts once per sample however often it recurs in the stack) and the largest self share.
    Samples whose leaf frame is an idle wait (`IDLE_LEAF_PREFIXES`) are left out."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(IDLE_LEAF_PREFIXES):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    if total == 0:
        return "no samples\n"
    lines = [f"{total} busy samples", "", "inclusive share:"]
    lines += [
        f"{100 * n / total:6.1f}%  {frame}" for frame, n in inclusive.most_common(TOP_FUNCTIONS)
    ]
    lines += ["", "self share:"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in own.most_common(TOP_FUNCTIONS)]
    return "\n".join(lines) + "\n"

"""Processes a benchmark starts: the API server, `docbatch worker`s and the reference app.

Every process is started in its own session and stopped by its own pid, so stopping one never
touches anything else on the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until 127.0.0.1:`port` accepts connections; raise if the process exits first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"process {process.args!r} exited with status {process.returncode} before "
                f"listening on port {port}; its log is {log}:\n{log.read_text()[-3000:]}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {STARTUP_TIMEOUT_SECONDS} s")


@dataclass
class Started:
    """A process this benchmark started, with the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path
    port: int | None = None
    _log_file: object = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Send SIGTERM, wait, and send SIGKILL to the process if it has not exited in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]


def start(
    command: list[str], environment: Mapping[str, str], log: Path, port: int | None = None
) -> Started:
    log_file = log.open("ab")
    process = subprocess.Popen(  # noqa: S603
        command,
        env={**os.environ, **environment},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started = Started(process, log, port, log_file)
    if port is not None:
        try:
            wait_for_port(port, process, log)
        except BaseException:
            started.stop()
            raise
    return started


def start_service(environment: Mapping[str, str], log: Path, api_processes: int = 1) -> Started:
    """Start `docbatch serve --no-worker --workers API_PROCESSES` on a free port of 127.0.0.1."""
    port = free_port()
    command = [
        str(VENV_BIN / "docbatch"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-worker",
        "--workers",
        str(api_processes),
    ]
    return start(command, environment, log, port)


def start_worker(environment: Mapping[str, str], log: Path) -> Started:
    return start([str(VENV_BIN / "docbatch"), "worker"], environment, log)


def start_reference_app(
    environment: Mapping[str, str], log: Path, api_processes: int = 1
) -> Started:
    """Start the minimal ASGI app of `bench.reference_app` under uvicorn on a free port, with
    as many processes as the service."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench.reference_app",
        "--port",
        str(port),
        "--workers",
        str(api_processes),
    ]
    return start(command, environment, log, port)


def memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak resident set size) of a process in KiB."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat, counted in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time of a process and its running descendants, in seconds.

    Uvicorn with several workers runs them as children of a supervisor process, and the
    supervisor's own utime and stime do not include the time of its running children.
    """
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # the thread exited while the folder was listed
        for child in children:
            try:
                total += tree_cpu_seconds(int(child))
            except FileNotFoundError:
                continue  # the child exited between the listing and the read
    return total


def machine_busy_seconds() -> float:
    """Return the CPU time every core of this machine has spent busy since boot, in seconds.

    PostgreSQL runs on this machine in the benchmark, so the change over a measurement shows how
    much of the machine all processes used together.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    ticks = [int(value) for value in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")

"""A real `docbatch serve` process in its embedded default (SQLite and blobs under ./var, worker
in the same process), driven over real HTTP and through the command-line tool."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from docbatch.cli import main
from tests.support import configuration, invalid_order, valid_order

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
STARTUP_SECONDS = 30.0
STOP_SECONDS = 20.0


def _environment(**variables: str) -> dict[str, str]:
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("DOCBATCH_")
    }
    environment.update(DOCBATCH_LOG_FORMAT="json", DOCBATCH_WORKER_POLL_SECONDS="0.1")
    environment.update(variables)
    return environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cli(folder: Path, *arguments: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "docbatch", *arguments],
        cwd=folder,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    folder: Path
    log_path: Path
    base_url: str

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_SECONDS)


def _wait_until_answering(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert server.process.poll() is None, server.log_path.read_text()
        try:
            httpx.get(f"{server.base_url}/api/DocBatch/GetBatchTypes", timeout=1)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            time.sleep(0.1)
        else:
            return


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("server")
    log_path = folder / "server.log"
    port = _free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "docbatch", "serve", "--port", str(port)],
            cwd=folder,
            env=_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(process, folder, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_until_answering(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@dataclass
class Client:
    http: httpx.Client
    tenant: str

    def call(
        self, method: str, action: str, params: dict[str, Any] | None = None, **keywords: Any
    ) -> httpx.Response:
        query = {"tenantGuid": self.tenant, **(params or {})}
        return self.http.request(method, f"/api/DocBatch/{action}", params=query, **keywords)


@pytest.fixture(scope="module")
def registered_client(server: Server) -> Iterator[Client]:
    """A client registered with the command-line tool, authenticated at the token endpoint."""
    tenant = _cli(server.folder, "tenant", "add", "--name", "server-test").strip()
    registered = json.loads(
        _cli(
            server.folder,
            "client", "add", "--name", "c", "--tenant", tenant,
            "--role", "BatchCreator", "BatchViewer", "BatchAdmin", "--json",
        )
    )  # fmt: skip
    token_response = httpx.post(
        f"{server.base_url}/core/connect/token",
        data={
            "client_id": registered["clientId"],
            "client_secret": registered["clientSecret"],
            "grant_type": "client_credentials",
            "scope": "DocFusion",
        },
        timeout=30,
    )
    assert token_response.status_code == 200, token_response.text
    token = token_response.json()
    assert token["token_type"] == "Bearer"
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as http:
        yield Client(http, tenant)


def _blob_files(server: Server) -> set[Path]:
    return {path for path in (server.folder / "var" / "blobs").rglob("*") if path.is_file()}


def _create_batch(client: Client) -> str:
    response = client.call(
        "POST", "InsertBatchType", json={"name": "orders", "configuration": configuration()}
    )
    assert response.status_code == 200, response.text
    batch_type = response.json()["result"]["batchTypeGuid"]
    response = client.call("POST", "CreateBatch", {"batchTypeGuid": batch_type})
    assert response.status_code == 200, response.text
    return str(response.json()["result"])


def test_server_processes_batch(server: Server, registered_client: Client) -> None:
    batch = _create_batch(registered_client)
    files = [
        ("RecordData", (f"order-{number}.xml", payload, "application/xml"))
        for number, payload in enumerate([valid_order(1), valid_order(2), invalid_order(3)])
    ]
    upload = registered_client.call(
        "POST",
        "CreateBatchRecords",
        {"batchGuid": batch},
        files=files,
        headers={"X-Request-ID": "server-test-upload"},
    )
    close = registered_client.call("PUT", "MarkBatchUploadComplete", {"batchGuid": batch})

    assert upload.status_code == 200, upload.text
    assert len(upload.json()["result"]) == 3
    assert upload.headers["X-Request-ID"] == "server-test-upload"
    assert close.status_code == 200, close.text
    assert close.headers.get("X-Request-ID")
    assert close.headers["X-Request-ID"] != "server-test-upload"
    deadline = time.monotonic() + 30
    while True:
        batch_now = registered_client.call("GET", "GetBatch", {"batchGuid": batch}).json()["result"]
        if batch_now["statusId"] in {"Completed", "Error"}:
            break
        assert time.monotonic() < deadline, f"the batch stayed {batch_now['statusId']}"
        time.sleep(0.1)
    assert batch_now["statusId"] == "Error"
    assert batch_now["validatedRecords"] == 2
    assert batch_now["failedValidatedRecords"] == 1
    assert batch_now["completedRecords"] == 2

    upload_lines = [
        entry for entry in server.log_entries() if entry.get("request_id") == "server-test-upload"
    ]
    assert any(entry.get("event") == "http.request" for entry in upload_lines), upload_lines
    assert any(entry.get("event") == "records.created" for entry in upload_lines), upload_lines
    close_lines = [
        entry
        for entry in server.log_entries()
        if entry.get("request_id") == close.headers["X-Request-ID"]
    ]
    assert any(entry.get("event") == "http.request" for entry in close_lines), close_lines


def _oversized_form(boundary: str, size: int) -> Iterator[bytes]:
    """A multipart body with one RecordData part of `size` bytes, produced 1 MiB at a time."""
    yield (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="RecordData"; filename="big.xml"\r\n'
        "Content-Type: application/xml\r\n\r\n"
    ).encode()
    block = b"x" * MIB
    remaining = size
    while remaining > 0:
        piece = block[: min(MIB, remaining)]
        remaining -= len(piece)
        yield piece
    yield f"\r\n--{boundary}--\r\n".encode()


def test_server_rejects_oversized_stream(server: Server, registered_client: Client) -> None:
    batch = _create_batch(registered_client)
    files_before = _blob_files(server)
    boundary = "docbatch-oversized-upload"

    response = registered_client.call(
        "POST",
        "CreateBatchRecord",
        {"batchGuid": batch},
        content=_oversized_form(boundary, 100 * MIB + 1),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )

    assert response.status_code == 413, response.text
    assert response.json()["isSuccess"] is False
    assert _blob_files(server) == files_before
    batch_now = registered_client.call("GET", "GetBatch", {"batchGuid": batch}).json()["result"]
    assert batch_now["totalRecords"] == 0


def test_server_stops_on_sigterm(server: Server) -> None:
    exit_code = server.stop()

    # Uvicorn re-raises SIGTERM once its graceful shutdown is done, so the process ends by that
    # signal (as a supervisor expects of a stopped service) rather than with exit status 0.
    assert exit_code in (0, -signal.SIGTERM), server.log_path.read_text()[-3000:]
    events = [entry.get("event") for entry in server.log_entries()]
    assert "service.stopped" in events


HELP_COMMANDS = {
    ("serve",): ["--host", "--port", "--no-worker", "--migrate", "--workers"],
    ("worker",): ["usage: docbatch worker"],
    ("db",): ["upgrade"],
    ("db", "upgrade"): ["usage: docbatch db upgrade"],
    ("tenant",): ["add"],
    ("tenant", "add"): ["--name", "--tenant-guid"],
    ("client",): ["add"],
    ("client", "add"): ["--name", "--tenant", "--role", "--json"],
    ("token",): ["--tenant", "--role", "--subject"],
    ("job",): ["list", "retry"],
    ("job", "list"): ["--status", "--limit"],
    ("job", "retry"): ["job_id"],
}


def test_cli_help_process(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "docbatch", "--help"],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    for command in ["serve", "worker", "db", "tenant", "client", "token", "job"]:
        assert command in completed.stdout
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(
    ("command", "options"),
    list(HELP_COMMANDS.items()),
    ids=["_".join(command) for command in HELP_COMMANDS],
)
def test_cli_subcommand_help(
    command: tuple[str, ...], options: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Parse each subcommand's --help in this process, with the parser the real tool uses."""
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])

    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    for option in options:
        assert option in output, f"docbatch {' '.join(command)} --help does not mention {option}"

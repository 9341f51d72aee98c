"""Run the DocBatch main flow against a running server with the example records.

The script fetches an access token and inserts a batch type for the chosen
example format. It creates a batch, uploads the valid and the invalid example
records, marks the upload complete and polls the batch until its status is
Completed or Error. It then prints every record's status and reference, and the
validation log of each record whose status is ValidationFailed.

Exit codes: 0 when the batch reaches Completed, 1 when a request fails or the
batch reaches Error, 2 for invalid arguments, 3 when polling times out.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

EXAMPLES_DIR = Path(__file__).resolve().parent

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_TIMEOUT = 3

POLL_INTERVAL_SECONDS = 0.5
SETTLED_STATUSES = frozenset({"Completed", "Error"})
VALIDATION_FAILED_STATUS = "ValidationFailed"

RECORD_PATH = "/api/DocBatch/GetBatchRecord"
RECORD_LOG_PATH = "/api/DocBatch/GetBatchRecordLog"

QueryParams = Mapping[str, str | int | bool]

# Batch fields printed on each progress line, in this order.
PROGRESS_FIELDS = (
    "hasCreationCompleted",
    "totalRecords",
    "validatedRecords",
    "failedValidatedRecords",
    "completedRecords",
    "errorRecords",
)


@dataclass(frozen=True)
class ExampleFormat:
    """One example data set: its schema file, records and reference path."""

    data_type: str
    schema_path: Path
    records_dir: Path
    record_suffix: str
    content_type: str
    reference_data_path: str


EXAMPLE_FORMATS = {
    "xml": ExampleFormat(
        data_type="Xml",
        schema_path=EXAMPLES_DIR / "xml" / "schema.zip",
        records_dir=EXAMPLES_DIR / "xml" / "records",
        record_suffix=".xml",
        content_type="application/xml",
        reference_data_path=("/rsm:CrossIndustryInvoice/rsm:ExchangedDocument/ram:ID"),
    ),
    "json": ExampleFormat(
        data_type="Json",
        schema_path=EXAMPLES_DIR / "json" / "schema.json",
        records_dir=EXAMPLES_DIR / "json" / "records",
        record_suffix=".json",
        content_type="application/json",
        reference_data_path="/doi",
    ),
}


@dataclass(frozen=True)
class RecordFile:
    """An example record to upload and whether it is expected to pass validation."""

    path: Path
    expected_valid: bool


class FlowError(Exception):
    """A step of the flow failed. The message names the request and the reason."""


class PollTimeoutError(FlowError):
    """The batch did not reach Completed or Error before the polling timeout."""


class DocBatchClient:
    """Send DocBatch API requests for one tenant and unwrap the result envelopes."""

    def __init__(self, http: httpx.Client, tenant_guid: str) -> None:
        self._http = http
        self._tenant_guid = tenant_guid

    def request(
        self,
        method: str,
        path: str,
        params: QueryParams | None = None,
        **kwargs: Any,
    ) -> Any:
        """Send a request and return the envelope's result.

        Raises FlowError with the HTTP status and the envelope's error when the
        response is not a success envelope.
        """
        query: dict[str, str | int | bool] = {"tenantGuid": self._tenant_guid}
        query.update(params or {})
        response = self._http.request(method, path, params=query, **kwargs)
        return unwrap_envelope(response, f"{method} {path}")


def unwrap_envelope(response: httpx.Response, request_name: str) -> Any:
    """Return the result of a `{isSuccess, error, result}` envelope or raise FlowError."""
    try:
        envelope = response.json()
    except json.JSONDecodeError:
        raise FlowError(
            f"{request_name} returned HTTP {response.status_code} with a body "
            f"that is not JSON: {response.text[:500]!r}"
        ) from None

    if not isinstance(envelope, dict) or "isSuccess" not in envelope:
        raise FlowError(
            f"{request_name} returned HTTP {response.status_code} without a result "
            f"envelope: {response.text[:500]!r}"
        )
    if not envelope["isSuccess"]:
        raise FlowError(
            f"{request_name} failed with HTTP {response.status_code}: {envelope.get('error')}"
        )
    return envelope.get("result")


def require_object(result: Any, request_name: str) -> dict[str, Any]:
    """Return the result when it is a JSON object, otherwise raise FlowError."""
    if not isinstance(result, dict):
        raise FlowError(f"{request_name} returned {result!r}, not a JSON object")
    return result


def fetch_access_token(http: httpx.Client, client_id: str, client_secret: str) -> str:
    """Fetch a bearer token with the OAuth 2.0 client credentials grant."""
    response = http.post(
        "/core/connect/token",
        data={
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "client_credentials",
            "scope": "DocFusion",
        },
    )
    if response.status_code != httpx.codes.OK:
        raise FlowError(
            f"POST /core/connect/token failed with HTTP {response.status_code}: "
            f"{response.text[:500]}"
        )
    try:
        return str(response.json()["access_token"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise FlowError(
            f"POST /core/connect/token returned no access_token: {response.text[:500]!r}"
        ) from None


def collect_record_files(example: ExampleFormat) -> list[RecordFile]:
    """List the valid records, then the invalid ones, each group sorted by name."""
    records: list[RecordFile] = []
    for group, expected_valid in (("valid", True), ("invalid", False)):
        folder = example.records_dir / group
        paths = sorted(folder.glob(f"*{example.record_suffix}"))
        records.extend(RecordFile(path, expected_valid) for path in paths)

    if not records:
        raise FlowError(f"no example records found under {example.records_dir}")
    names = [record.path.name for record in records]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise FlowError(f"record file names must be unique, found: {duplicates}")
    return records


def insert_batch_type(
    client: DocBatchClient,
    example: ExampleFormat,
    name: str,
) -> dict[str, Any]:
    """Insert a batch type that validates records against the example schema."""
    schema_base64 = base64.b64encode(example.schema_path.read_bytes()).decode("ascii")
    body = {
        "name": name,
        "configuration": {
            "processRecordsWithoutApproval": True,
            "performMerge": False,
            "batchCompletionIgnoresRecordsInError": True,
            "purgeTimeSpan": None,
            "dataType": example.data_type,
            "dataSchemaBase64": schema_base64,
            "referenceDataPath": example.reference_data_path,
            "templateGuid": None,
            "templateVersion": None,
            "chainGuid": None,
            "chainVersion": None,
            "workflowProcessGuid": None,
            "workflowProcessVersion": None,
            "timeout": "00:05:00",
            "parameters": {},
        },
    }
    path = "/api/DocBatch/InsertBatchType"
    return require_object(client.request("POST", path, json=body), f"POST {path}")


def create_batch(
    client: DocBatchClient,
    batch_type_guid: str,
    batch_reference: str,
) -> str:
    """Create a batch of the given type and return its GUID."""
    result = client.request(
        "POST",
        "/api/DocBatch/CreateBatch",
        params={"batchTypeGuid": batch_type_guid, "batchReference": batch_reference},
    )
    return str(result)


def upload_records(
    client: DocBatchClient,
    batch_guid: str,
    example: ExampleFormat,
    records: list[RecordFile],
) -> list[int]:
    """Upload all records in one multipart request and return their ids in order."""
    files = []
    metadata = {}
    for record in records:
        name = record.path.name
        content = record.path.read_bytes()
        files.append(("RecordData", (name, content, example.content_type)))
        record_metadata = {"source": "examples", "expectedValid": record.expected_valid}
        metadata[name] = json.dumps(record_metadata)
    result = client.request(
        "POST",
        "/api/DocBatch/CreateBatchRecords",
        params={"batchGuid": batch_guid, "immediatelyReadyForValidation": "false"},
        files=files,
        data={"MetaData": json.dumps(metadata)},
    )
    if not isinstance(result, list):
        raise FlowError(f"CreateBatchRecords returned {result!r}, not a list of ids")
    record_ids = [int(record_id) for record_id in result]
    if len(record_ids) != len(records):
        raise FlowError(
            f"CreateBatchRecords returned {len(record_ids)} record ids "
            f"for {len(records)} uploaded files"
        )
    return record_ids


def get_batch(client: DocBatchClient, batch_guid: str) -> dict[str, Any]:
    path = "/api/DocBatch/GetBatch"
    result = client.request("GET", path, params={"batchGuid": batch_guid})
    return require_object(result, f"GET {path}")


def mark_upload_complete(
    client: DocBatchClient, batch_guid: str, expected_record_count: int
) -> None:
    client.request(
        "PUT",
        "/api/DocBatch/MarkBatchUploadComplete",
        params={
            "batchGuid": batch_guid,
            "expectedRecordCount": expected_record_count,
        },
    )


def format_progress(batch: dict[str, Any]) -> str:
    counters = " ".join(f"{field}={batch.get(field)}" for field in PROGRESS_FIELDS)
    return f"status={batch.get('statusId')} {counters}"


def wait_until_settled(
    client: DocBatchClient, batch_guid: str, timeout_seconds: float
) -> dict[str, Any]:
    """Poll the batch until its status is Completed or Error and return it.

    A line is printed whenever the status or a counter changes. Raises
    PollTimeoutError when the batch has not settled after timeout_seconds.
    """
    deadline = time.monotonic() + timeout_seconds
    last_progress = ""
    while True:
        batch = get_batch(client, batch_guid)
        progress = format_progress(batch)
        if progress != last_progress:
            print(f"  {progress}")
            last_progress = progress
        if batch.get("statusId") in SETTLED_STATUSES:
            return batch
        if time.monotonic() >= deadline:
            raise PollTimeoutError(
                f"timed out after {timeout_seconds:g} s waiting for batch "
                f"{batch_guid} to reach Completed or Error (last: {progress}). "
                "Increase --poll-timeout or check the server log."
            )
        time.sleep(POLL_INTERVAL_SECONDS)


def print_record_results(
    client: DocBatchClient,
    batch_guid: str,
    records: list[RecordFile],
    record_ids: list[int],
) -> None:
    """Print each record's status and reference, and the log of failed validations."""
    for record, record_id in zip(records, record_ids, strict=True):
        params: QueryParams = {"batchGuid": batch_guid, "batchRecordId": record_id}
        result = client.request("GET", RECORD_PATH, params=params)
        batch_record = require_object(result, f"GET {RECORD_PATH}")
        status = batch_record.get("statusId")
        reference = batch_record.get("batchRecordReference")
        name = record.path.name
        print(f"  record {record_id} {name}: status={status} reference={reference}")
        if status != VALIDATION_FAILED_STATUS:
            continue

        log_entries = client.request("GET", RECORD_LOG_PATH, params=params)
        for entry in log_entries or []:
            print(f"    {entry.get('message')}")


def run_flow(args: argparse.Namespace, http: httpx.Client) -> int:
    """Run every step of the flow and return the exit code."""
    example = EXAMPLE_FORMATS[args.format]
    records = collect_record_files(example)

    token = fetch_access_token(http, args.client_id, args.client_secret)
    http.headers["Authorization"] = f"Bearer {token}"
    client = DocBatchClient(http, args.tenant)

    run_stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    batch_type_name = args.batch_type_name or f"examples-{args.format}-{run_stamp}"
    batch_type = insert_batch_type(client, example, batch_type_name)
    batch_type_guid = str(batch_type["batchTypeGuid"])
    print(f"Inserted batch type {batch_type_name!r}: {batch_type_guid}")

    batch_reference = args.batch_reference or f"examples-{args.format}-{run_stamp}"
    batch_guid = create_batch(client, batch_type_guid, batch_reference)
    print(f"Created batch {batch_reference!r}: {batch_guid}")

    record_ids = upload_records(client, batch_guid, example, records)
    print(f"Uploaded {len(record_ids)} records: {record_ids}")
    print("Batch after upload:")
    print(json.dumps(without_schema(get_batch(client, batch_guid)), indent=2))

    mark_upload_complete(client, batch_guid, len(record_ids))
    print(f"Marked upload complete; polling every {POLL_INTERVAL_SECONDS:g} s:")
    batch = wait_until_settled(client, batch_guid, args.poll_timeout)

    print("Records:")
    print_record_results(client, batch_guid, records, record_ids)

    if batch.get("statusId") != "Completed":
        message = f"Batch {batch_guid} ended with status Error. See the records above."
        print(message, file=sys.stderr)
        return EXIT_FAILURE
    print(f"Batch {batch_guid} completed.")
    return EXIT_OK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Upload the example records to a running DocBatch server and follow "
            "the batch until it settles."
        ),
    )
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="server base URL (default: %(default)s)",
    )
    parser.add_argument(
        "--client-id",
        default=os.environ.get("DOCBATCH_CLIENT_ID"),
        help="OAuth client id (default: $DOCBATCH_CLIENT_ID)",
    )
    parser.add_argument(
        "--client-secret",
        default=os.environ.get("DOCBATCH_CLIENT_SECRET"),
        help=(
            "OAuth client secret (default: $DOCBATCH_CLIENT_SECRET, which keeps "
            "the secret out of the process list)"
        ),
    )
    parser.add_argument(
        "--tenant",
        default=os.environ.get("DOCBATCH_TENANT"),
        help="tenant GUID (default: $DOCBATCH_TENANT)",
    )
    parser.add_argument(
        "--format",
        choices=sorted(EXAMPLE_FORMATS),
        default="xml",
        help=(
            "example set to upload: Factur-X invoices (xml) or CITATION.cff "
            "records (json) (default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--batch-type-name",
        help="name of the inserted batch type (default: examples-FORMAT-TIMESTAMP)",
    )
    parser.add_argument(
        "--batch-reference",
        help="reference of the created batch (default: examples-FORMAT-TIMESTAMP)",
    )
    parser.add_argument(
        "--poll-timeout",
        type=float,
        default=120.0,
        help="maximum time in seconds to wait for the batch to settle (default: %(default)g)",
    )
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=30.0,
        help="timeout in seconds for each HTTP request (default: %(default)g)",
    )
    args = parser.parse_args(argv)

    required = (
        ("client_id", "--client-id", "DOCBATCH_CLIENT_ID"),
        ("client_secret", "--client-secret", "DOCBATCH_CLIENT_SECRET"),
        ("tenant", "--tenant", "DOCBATCH_TENANT"),
    )
    for attribute, option, variable in required:
        if not getattr(args, attribute):
            parser.error(f"{option} is required: pass it or set {variable}")
    try:
        uuid.UUID(args.tenant)
    except ValueError:
        parser.error(f"--tenant must be a GUID, got {args.tenant!r}")
    if not args.base_url.startswith(("http://", "https://")):
        parser.error(f"--base-url must start with http(s)://, got {args.base_url!r}")
    if args.poll_timeout <= 0 or args.http_timeout <= 0:
        parser.error("--poll-timeout and --http-timeout must be positive")
    return args


def without_schema(batch: dict[str, Any]) -> dict[str, Any]:
    """Return the batch with its base64 schema replaced by its length, for printing."""
    configuration = dict(batch["batchType"]["configuration"])
    schema = configuration.get("dataSchemaBase64")
    if schema is not None:
        configuration["dataSchemaBase64"] = f"<{len(schema)} base64 characters>"
    return {**batch, "batchType": {**batch["batchType"], "configuration": configuration}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with httpx.Client(base_url=args.base_url, timeout=args.http_timeout) as http:
            return run_flow(args, http)
    except PollTimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TIMEOUT
    except FlowError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:
        print(f"error: failed to read an example file: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except httpx.HTTPError as error:
        print(
            f"error: request to {args.base_url} failed: {error!r}. "
            "Check that the server is running and --base-url is correct.",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

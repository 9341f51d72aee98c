"""Hostile records and schemas: they fail validation or are rejected, nothing outside the
document is read, and the worker keeps serving other batches."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import select

from docbatch.app import create_app
from docbatch.core.settings import Settings
from docbatch.storage.blobs import FileBlobStore, open_blob_store
from docbatch.store.database import Database
from docbatch.store.models import Batch, Job
from docbatch.worker.runner import Worker
from tests.support import (
    SIMPLE_JSON_SCHEMA,
    Api,
    TokenFactory,
    assert_envelope_error,
    configuration,
    valid_order,
)

WAIT_SECONDS = 30.0
XS = 'xmlns:xs="http://www.w3.org/2001/XMLSchema"'
VALID_JSON = json.dumps({"id": "J-1", "amount": 1.5}).encode()


@dataclass
class Canary:
    """A local HTTP server that records every request it receives. Hostile input points at it."""

    url: str
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def canary() -> Iterator[Canary]:
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.end_headers()
            self.wfile.write(b'<!ENTITY leaked "fetched from the canary">')

        def log_message(self, *arguments: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Canary(f"http://127.0.0.1:{server.server_port}", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- payloads ---------------------------------------------------------------------------------


def _billion_laughs(_: str) -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
    )
    return (
        f'<?xml version="1.0"?><!DOCTYPE order [{entities}]>'
        "<order><id>&lol9;</id><amount>1</amount></order>"
    ).encode()


def _external_entity_file(_: str) -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE order [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<order><id>&e;</id><amount>1</amount></order>"
    )


def _external_entity_http(url: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE order [<!ENTITY e SYSTEM "{url}/entity">]>'
        "<order><id>&e;</id><amount>1</amount></order>"
    ).encode()


def _external_dtd(url: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE order SYSTEM "{url}/order.dtd">'
        "<order><id>A-1</id><amount>1</amount></order>"
    ).encode()


def _parameter_entities(url: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE order [<!ENTITY % remote SYSTEM "{url}/p.dtd"> %remote;]>'
        "<order><id>&leaked;</id><amount>1</amount></order>"
    ).encode()


def _deep_nesting(_: str) -> bytes:
    return b"<order>" + b"<a>" * 10_000 + b"</a>" * 10_000 + b"</order>"


def _five_megabytes(_: str) -> bytes:
    filler = b"<note>five megabytes of elements</note>" * 135_000
    return b"<order><id>BIG-1</id><amount>1</amount>" + filler + b"</order>"


def _invalid_utf8(_: str) -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b"<order><id>\xff\xfe\xc3</id><amount>1</amount></order>"
    )


def _binary(_: str) -> bytes:
    return bytes(range(256)) * 4


def _xinclude(url: str) -> bytes:
    return (
        '<order xmlns:xi="http://www.w3.org/2001/XInclude">'
        f'<id>X-1</id><amount>1</amount><xi:include href="{url}/include.xml"/></order>'
    ).encode()


XML_CASES = [
    pytest.param(_billion_laughs, ("doctype", "entity"), id="billion_laughs"),
    pytest.param(_external_entity_file, ("doctype", "entity"), id="external_entity_file"),
    pytest.param(_external_entity_http, ("doctype", "entity"), id="external_entity_http"),
    pytest.param(_external_dtd, ("doctype", "dtd"), id="external_dtd"),
    pytest.param(_parameter_entities, ("doctype", "entity"), id="parameter_entities"),
    pytest.param(_deep_nesting, ("depth", "deep", "nest"), id="deep_nesting"),
    pytest.param(_five_megabytes, ("not expected", "note"), id="five_megabytes"),
    pytest.param(_invalid_utf8, ("utf-8", "encoding", "bytes"), id="invalid_utf8"),
    pytest.param(_binary, ("empty", "start tag", "not"), id="binary"),
    pytest.param(_xinclude, ("include", "not expected"), id="xinclude"),
]

JSON_CASES = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, ("recursion", "depth", "nest"), id="deep_arrays"),
    pytest.param(
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        ("recursion", "depth", "nest"),
        id="deep_objects",
    ),
    pytest.param(b'{"id": "J-2", "amount": ', ("json",), id="truncated"),
    pytest.param(b'{"id": "J-2", "amount": 1.5,}', ("json",), id="trailing_comma"),
    pytest.param(b'{"id": "J-2", "amount": NaN}', ("json", "nan"), id="nan_literal"),
    pytest.param(
        b'{"id": "\xff\xfe", "amount": 1}', ("json", "utf-8", "decode"), id="invalid_utf8"
    ),
    pytest.param(bytes(range(256)), ("json",), id="binary"),
]

HUGE_NUMBERS = [
    pytest.param(b'{"id": "J-3", "amount": ' + b"9" * 100_000 + b"}", id="long_integer"),
    pytest.param(b'{"id": "J-3", "amount": 1e999999}', id="huge_exponent"),
    pytest.param(b'{"id": "J-3", "amount": -1e-999999}', id="tiny_exponent"),
    pytest.param(b'{"id": "J-3", "amount": 1.' + b"5" * 100_000 + b"}", id="long_fraction"),
]


# --- running a hostile batch and a later valid one on one worker ------------------------------


@dataclass
class _Outcome:
    record: dict[str, Any]
    log: list[dict[str, Any]]
    batch: dict[str, Any]
    later_batch: dict[str, Any]


async def _failed_jobs_message(settings: Settings, batch_guid: str) -> str | None:
    """Describe jobs of the batch that raised instead of finishing, or return None."""
    database = Database(settings)
    try:
        async with database.read() as session:
            batch_id = await session.scalar(
                select(Batch.id).where(Batch.guid == uuid.UUID(batch_guid))
            )
            failed = list(
                await session.scalars(
                    select(Job).where(Job.batch_id == batch_id, Job.last_error.is_not(None))
                )
            )
    finally:
        await database.dispose()
    if not failed:
        return None
    return "; ".join(f"job {job.id} ({job.kind}): {job.last_error}" for job in failed)


async def _wait_until_settled(api: Api, settings: Settings, batch_guid: str) -> dict[str, Any]:
    """Poll until the batch is Completed or Error, and fail at once when one of its jobs raised."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        batch = await api.get_batch(batch_guid)
        if batch["statusId"] in {"Completed", "Error"}:
            return batch
        problem = await _failed_jobs_message(settings, batch_guid)
        assert problem is None, f"batch {batch_guid} stayed {batch['statusId']}: {problem}"
        assert asyncio.get_running_loop().time() < deadline, f"batch stayed {batch['statusId']}"
        await asyncio.sleep(0.05)


async def _process_on_one_worker(
    api: Api, settings: Settings, batch_type: str, hostile: bytes, valid: bytes
) -> _Outcome:
    """Process a batch of [hostile, valid], then a batch of [valid], on the same worker."""
    batch = await api.create_batch(batch_type)
    hostile_id, _ = await api.upload_ok(batch, [hostile, valid])
    later = await api.create_batch(batch_type)
    await api.upload_ok(later, [valid])
    database = Database(settings)
    worker = Worker(settings, database, open_blob_store(settings.storage_url))
    await worker.start()
    try:
        assert (await api.complete(batch)).status_code == 200
        settled = await _wait_until_settled(api, settings, batch)
        assert (await api.complete(later)).status_code == 200
        later_settled = await _wait_until_settled(api, settings, later)
    finally:
        await worker.stop()
        await database.dispose()
    record = await api.get_record(batch, hostile_id)
    log_response = await api.call(
        "GET", "GetBatchRecordLog", {"batchGuid": batch, "batchRecordId": hostile_id}
    )
    assert log_response.status_code == 200, log_response.text
    return _Outcome(record, log_response.json()["result"], settled, later_settled)


def _log_text(outcome: _Outcome) -> str:
    return " | ".join(entry["message"] for entry in outcome.log).lower()


async def _insert_json_batch_type(api: Api) -> str:
    schema = base64.b64encode(json.dumps(SIMPLE_JSON_SCHEMA).encode()).decode()
    return await api.insert_batch_type(
        "json-orders", dataType="Json", dataSchemaBase64=schema, referenceDataPath="/id"
    )


# --- records ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "reasons"), XML_CASES)
async def test_hostile_xml_fails_validation(
    api: Api,
    settings: Settings,
    canary: Canary,
    build: Callable[[str], bytes],
    reasons: tuple[str, ...],
) -> None:
    batch_type = await api.insert_batch_type()

    outcome = await _process_on_one_worker(
        api, settings, batch_type, build(canary.url), valid_order(1)
    )

    assert outcome.record["statusId"] == "ValidationFailed"
    assert outcome.log, "a failed record needs a log entry saying why"
    assert {entry["stage"] for entry in outcome.log} == {"Validation"}
    log_text = _log_text(outcome)
    assert any(reason in log_text for reason in reasons), log_text[:500]
    assert "line" in log_text
    assert "root:" not in log_text
    assert "fetched from the canary" not in log_text
    assert (
        outcome.record["batchRecordReference"] is None
        or "root:" not in outcome.record["batchRecordReference"]
    )
    assert outcome.batch["statusId"] == "Error"
    assert outcome.batch["failedValidatedRecords"] == 1
    assert outcome.batch["validatedRecords"] == 1
    assert outcome.later_batch["statusId"] == "Completed"
    assert canary.requests == []


async def test_schema_location_hint_ignored(api: Api, settings: Settings, canary: Canary) -> None:
    """An instance's xsi:noNamespaceSchemaLocation never replaces the batch type's schema."""
    hinted = (
        '<order xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:noNamespaceSchemaLocation="{canary.url}/other.xsd">'
        "<id>H-1</id><amount>1</amount></order>"
    ).encode()
    batch_type = await api.insert_batch_type()

    outcome = await _process_on_one_worker(api, settings, batch_type, hinted, valid_order(1))

    assert outcome.record["statusId"] == "Completed"
    assert outcome.batch["statusId"] == "Completed"
    assert canary.requests == []


@pytest.mark.parametrize(("payload", "reasons"), JSON_CASES)
async def test_hostile_json_fails_validation(
    api: Api, settings: Settings, payload: bytes, reasons: tuple[str, ...]
) -> None:
    batch_type = await _insert_json_batch_type(api)

    outcome = await _process_on_one_worker(api, settings, batch_type, payload, VALID_JSON)

    assert outcome.record["statusId"] == "ValidationFailed"
    assert outcome.log, "a failed record needs a log entry saying why"
    log_text = _log_text(outcome)
    assert any(reason in log_text for reason in reasons), log_text[:500]
    assert outcome.batch["statusId"] == "Error"
    assert outcome.batch["validatedRecords"] == 1
    assert outcome.later_batch["statusId"] == "Completed"


@pytest.mark.parametrize("payload", HUGE_NUMBERS)
async def test_huge_json_number_settles(api: Api, settings: Settings, payload: bytes) -> None:
    """A number beyond what the parser represents may pass or fail, but never stalls the batch."""
    batch_type = await _insert_json_batch_type(api)

    outcome = await _process_on_one_worker(api, settings, batch_type, payload, VALID_JSON)

    assert outcome.record["statusId"] in {"Completed", "ValidationFailed"}
    if outcome.record["statusId"] == "ValidationFailed":
        assert outcome.log, "a failed record needs a log entry saying why"
    assert outcome.batch["statusId"] in {"Completed", "Error"}
    assert outcome.later_batch["statusId"] == "Completed"


# --- schemas --------------------------------------------------------------------------------------


def _xsd_billion_laughs(_: str) -> str:
    entities = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
    )
    return (
        f'<?xml version="1.0"?><!DOCTYPE xs:schema [{entities}]><xs:schema {XS}>'
        '<xs:element name="order" type="xs:string">'
        "<xs:annotation><xs:documentation>&lol9;</xs:documentation></xs:annotation>"
        "</xs:element></xs:schema>"
    )


def _xsd_external_entity(_: str) -> str:
    return (
        '<?xml version="1.0"?><!DOCTYPE xs:schema [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f'<xs:schema {XS}><xs:element name="order" type="xs:string">'
        "<xs:annotation><xs:documentation>&e;</xs:documentation></xs:annotation>"
        "</xs:element></xs:schema>"
    )


def _xsd_external_dtd(url: str) -> str:
    return (
        f'<?xml version="1.0"?><!DOCTYPE xs:schema SYSTEM "{url}/schema.dtd">'
        f'<xs:schema {XS}><xs:element name="order" type="xs:string"/></xs:schema>'
    )


def _xsd_reference(tag: str, location: str) -> str:
    namespace = ' namespace="urn:remote"' if tag == "import" else ""
    return (
        f'<xs:schema {XS}><xs:{tag}{namespace} schemaLocation="{location}"/>'
        '<xs:element name="order" type="xs:string"/></xs:schema>'
    )


XSD_CASES = [
    pytest.param(_xsd_billion_laughs, id="doctype_billion_laughs"),
    pytest.param(_xsd_external_entity, id="doctype_external_entity"),
    pytest.param(_xsd_external_dtd, id="doctype_external_dtd"),
    pytest.param(lambda url: _xsd_reference("import", f"{url}/remote.xsd"), id="import_http"),
    pytest.param(lambda _: _xsd_reference("import", "file:///etc/passwd"), id="import_file"),
    pytest.param(lambda url: _xsd_reference("include", f"{url}/part.xsd"), id="include_http"),
    pytest.param(lambda _: _xsd_reference("include", "file:///etc/passwd"), id="include_file"),
    pytest.param(lambda url: _xsd_reference("redefine", f"{url}/base.xsd"), id="redefine_http"),
]


@pytest.mark.parametrize("build", XSD_CASES)
async def test_hostile_xsd_rejected(api: Api, canary: Canary, build: Callable[[str], str]) -> None:
    schema = base64.b64encode(build(canary.url).encode()).decode()

    response = await api.call(
        "POST",
        "InsertBatchType",
        json={"name": "hostile", "configuration": _configuration_with_schema(schema)},
    )

    message = assert_envelope_error(response, 400)
    assert "root:" not in message
    assert canary.requests == []


async def test_remote_json_schema_ref_rejected(api: Api, canary: Canary) -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {"id": {"$ref": f"{canary.url}/remote.json"}},
    }
    encoded = base64.b64encode(json.dumps(schema).encode()).decode()

    response = await api.call(
        "POST",
        "InsertBatchType",
        json={
            "name": "hostile-json",
            "configuration": _configuration_with_schema(
                encoded, dataType="Json", referenceDataPath="/id"
            ),
        },
    )

    assert_envelope_error(response, 400)
    assert canary.requests == []


def _configuration_with_schema(schema_base64: str, **overrides: Any) -> dict[str, Any]:
    fields = {"dataSchemaBase64": schema_base64, "referenceDataPath": None, **overrides}
    return configuration(**fields)


# --- size limit ---------------------------------------------------------------------------------


@asynccontextmanager
async def _api_with_record_limit(
    settings: Settings, tokens: TokenFactory, tenant: uuid.UUID, limit: int
) -> AsyncIterator[Api]:
    # Every payload goes to the blob store, so the test can check what files a rejection leaves.
    limited = Settings(
        **{**settings.model_dump(), "max_record_bytes": limit, "inline_payload_max_bytes": 0}
    )
    application = create_app(limited)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            yield Api(http, tenant, tokens.for_tenant(tenant))


def _stored_files(settings: Settings) -> list[Path]:
    store = open_blob_store(settings.storage_url)
    assert isinstance(store, FileBlobStore)
    return sorted(path for path in store.root.rglob("*") if path.is_file())


def _padded_order(size: int) -> bytes:
    """A valid order of exactly `size` bytes."""
    head = valid_order(1).replace(b"</order>", b"<!--")
    tail = b"--></order>\n"
    return head + b"x" * (size - len(head) - len(tail)) + tail


async def test_record_over_limit_rejected(
    settings: Settings, tokens: TokenFactory, tenant: uuid.UUID
) -> None:
    limit = 1000
    async with _api_with_record_limit(settings, tokens, tenant, limit) as api:
        batch = await api.create_batch(await api.insert_batch_type())
        files_before = _stored_files(settings)

        single = await api.call(
            "POST",
            "CreateBatchRecord",
            {"batchGuid": batch},
            files={"RecordData": ("big.xml", _padded_order(limit + 1), "application/xml")},
        )
        several = await api.upload(batch, [valid_order(2), _padded_order(limit + 1)])

        assert_envelope_error(single, 413, str(limit))
        assert_envelope_error(several, 413, str(limit))
        assert _stored_files(settings) == files_before
        assert (await api.get_batch(batch))["totalRecords"] == 0

        at_limit = await api.upload(batch, [_padded_order(limit)])

        assert at_limit.status_code == 200, at_limit.text
        assert (await api.get_batch(batch))["totalRecords"] == 1
        assert len(_stored_files(settings)) == len(files_before) + 1


@pytest.mark.parametrize(
    "key",
    [
        "../outside",
        "records/../../outside",
        "/etc/passwd",
        "records//a",
        "records/./a",
        "a\\b",
        "a\x00b",
        "",
    ],
)
def test_blob_key_escape_rejected(tmp_path: Path, key: str) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError, match="blob key"):
        store.new_writer(key)
    with pytest.raises(ValueError, match="blob key"):
        store.open_for_reading(key)


def test_blob_key_nested_accepted(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    assert store.new_writer("records/tenant/batch/abc").key == "records/tenant/batch/abc"

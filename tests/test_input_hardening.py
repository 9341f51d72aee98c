"""Hostile or malformed inputs: each must fail cleanly or let its batch settle, and leave the
service serving."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

from httpx import AsyncClient
from sqlalchemy.exc import DBAPIError

from docbatch.api.errors import _is_unavailable_sqlstate
from docbatch.core.errors import summarize_error
from docbatch.core.settings import Settings
from tests.support import Api, assert_envelope_error, configuration, run_worker_until


def _json_configuration(schema: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return configuration(
        dataType="Json",
        dataSchemaBase64=base64.b64encode(json.dumps(schema).encode()).decode(),
        referenceDataPath="/ref",
        **overrides,
    )


async def _insert(api: Api, config: dict[str, Any]) -> str:
    response = await api.call(
        "POST", "InsertBatchType", json={"name": "hardening", "configuration": config}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["result"]["batchTypeGuid"])


async def test_surrogate_reference_settles(api: Api, settings: Settings) -> None:
    batch_type = await _insert(api, _json_configuration({"type": "object"}))
    batch = await api.create_batch(batch_type)
    ids = await api.upload_ok(batch, [b'{"ref": "\\ud800x"}', b'{"ref": "ok"}'])
    assert (await api.complete(batch)).status_code == 200

    final = await run_worker_until(api, settings, batch)

    assert final["statusId"] == "Completed"
    assert final["completedRecords"] == 2
    record = await api.get_record(batch, ids[0])
    assert record["batchRecordReference"] == "\ufffdx"


async def test_backtracking_pattern_settles(api: Api, settings: Settings) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}
    batch_type = await _insert(api, _json_configuration(schema))
    batch = await api.create_batch(batch_type)
    payload = json.dumps({"s": "a" * 40 + "!"}).encode()
    await api.upload_ok(batch, [payload])
    assert (await api.complete(batch)).status_code == 200

    final = await run_worker_until(api, settings, batch, limit_seconds=20)

    assert final["statusId"] == "Error"
    assert final["failedValidatedRecords"] == 1


async def test_surrogate_parameter_rejected(api: Api) -> None:
    body = '{"name": "p", "configuration": {"dataType": "Xml", "parameters": {"a": "\\ud800"}}}'
    response = await api.call(
        "POST",
        "InsertBatchType",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )

    assert_envelope_error(response, 400, "surrogate")
    listed = await api.call("GET", "GetBatchTypes")
    assert listed.status_code == 200
    assert listed.json()["result"] == []


async def test_oversized_json_body_rejected(client: AsyncClient, settings: Settings) -> None:
    too_large = settings.max_json_body_bytes + 1

    response = await client.post(
        "/api/DocBatch/InsertBatchType",
        params={"tenantGuid": "00000000-0000-0000-0000-000000000000"},
        content=b"x" * too_large,
        headers={"Content-Type": "application/json"},
    )

    assert_envelope_error(response, 413, str(settings.max_json_body_bytes))
    assert response.headers["x-request-id"]


async def test_long_file_name_rejected(api: Api) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    files = [("RecordData", ("n" * 401 + ".xml", b"<order/>", "application/xml"))]

    response = await api.call("POST", "CreateBatchRecords", {"batchGuid": batch}, files=files)

    assert_envelope_error(response, 400, "405 characters")
    assert (await api.get_batch(batch))["totalRecords"] == 0


async def test_metadata_for_repeated_name(api: Api) -> None:
    batch = await api.create_batch(await api.insert_batch_type())
    files = [
        ("RecordData", ("same.xml", b"<order/>", "application/xml")),
        ("RecordData", ("same.xml", b"<order/>", "application/xml")),
    ]

    response = await api.call(
        "POST",
        "CreateBatchRecords",
        {"batchGuid": batch},
        files=files,
        data={"MetaData": json.dumps({"same.xml": "{}"})},
    )

    assert_envelope_error(response, 400, "same.xml")
    assert (await api.get_batch(batch))["totalRecords"] == 0


async def test_token_client_id_nul(client: AsyncClient) -> None:
    response = await client.post(
        "/core/connect/token",
        data={"grant_type": "client_credentials", "client_id": "a\x00b", "client_secret": "s"},
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_too_many_clients_unavailable() -> None:
    error = DBAPIError("INSERT", {}, SimpleNamespace(sqlstate="53300"))
    assert _is_unavailable_sqlstate(error)


def test_syntax_error_not_unavailable() -> None:
    error = DBAPIError("INSERT", {}, SimpleNamespace(sqlstate="42601"))
    assert not _is_unavailable_sqlstate(error)


def test_summary_of_empty_error() -> None:
    assert summarize_error(TimeoutError()) == "TimeoutError"

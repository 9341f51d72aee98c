"""Test helpers: token minting, API calls, and running a worker until a batch settles."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response

from docbatch.app import create_app
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.storage.blobs import open_blob_store
from docbatch.store.database import Database
from docbatch.worker.runner import Worker

ALL_ROLES = ["BatchCreator", "BatchViewer", "BatchAdmin"]
FINAL_STATUSES = {"Completed", "Error", "Cancelled", "Purged"}

SIMPLE_XSD = b"""<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="order">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="id" type="xs:string"/>
        <xs:element name="amount" type="xs:decimal"/>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""

SIMPLE_JSON_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "amount"],
    "properties": {"id": {"type": "string"}, "amount": {"type": "number"}},
    "additionalProperties": False,
}


def valid_order(number: int) -> bytes:
    return f"<order>\n  <id>ORD-{number}</id>\n  <amount>{number}.50</amount>\n</order>\n".encode()


def invalid_order(number: int) -> bytes:
    return f"<order>\n  <id>ORD-{number}</id>\n  <amount>lots</amount>\n</order>\n".encode()


def configuration(**overrides: Any) -> dict[str, Any]:
    """A complete Xml configuration with the simple order schema; override any field."""
    base: dict[str, Any] = {
        "processRecordsWithoutApproval": True,
        "performMerge": False,
        "batchCompletionIgnoresRecordsInError": False,
        "purgeTimeSpan": None,
        "dataType": "Xml",
        "dataSchemaBase64": base64.b64encode(SIMPLE_XSD).decode(),
        "referenceDataPath": "/order/id",
        "templateGuid": None,
        "templateVersion": None,
        "chainGuid": None,
        "chainVersion": None,
        "workflowProcessGuid": None,
        "workflowProcessVersion": None,
        "timeout": "00:05:00",
        "parameters": {},
    }
    base.update(overrides)
    return base


class TokenFactory:
    """Mints tokens with the service's test key, or deliberately broken ones."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, settings: Settings) -> None:
        self.key = key
        self.settings = settings

    def claims(
        self, tenants: list[uuid.UUID], roles: list[str], **overrides: Any
    ) -> dict[str, Any]:
        now = utcnow()
        claims: dict[str, Any] = {
            "iss": self.settings.token_issuer,
            "aud": self.settings.token_audience,
            "sub": "test-client",
            "iat": now,
            "exp": now + timedelta(minutes=10),
            "roles": roles,
            "tenants": [str(tenant) for tenant in tenants],
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def mint(
        self, tenants: list[uuid.UUID], roles: list[str] | None = None, **overrides: Any
    ) -> str:
        return jwt.encode(
            self.claims(tenants, ALL_ROLES if roles is None else roles, **overrides),
            self.key,
            algorithm="ES256",
        )

    def for_tenant(self, tenant: uuid.UUID, roles: list[str] | None = None) -> str:
        return self.mint([tenant], roles)


class Api:
    """Calls the service as one client of one tenant."""

    def __init__(self, client: AsyncClient, tenant: uuid.UUID, token: str) -> None:
        self.client = client
        self.tenant = tenant
        self.token = token

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def with_token(self, token: str) -> Api:
        return Api(self.client, self.tenant, token)

    async def call(
        self, method: str, action: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> Response:
        query = {"tenantGuid": str(self.tenant), **(params or {})}
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return await self.client.request(
            method, f"/api/DocBatch/{action}", params=query, headers=headers, **kwargs
        )

    async def insert_batch_type(self, name: str = "orders", **overrides: Any) -> str:
        response = await self.call(
            "POST",
            "InsertBatchType",
            json={"name": name, "configuration": configuration(**overrides)},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["result"]["batchTypeGuid"])

    async def create_batch(self, batch_type_guid: str, reference: str | None = None) -> str:
        params = {"batchTypeGuid": batch_type_guid}
        if reference is not None:
            params["batchReference"] = reference
        response = await self.call("POST", "CreateBatch", params)
        assert response.status_code == 200, response.text
        return str(response.json()["result"])

    async def upload(
        self,
        batch_guid: str,
        payloads: list[bytes],
        *,
        ready: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> Response:
        files = [
            ("RecordData", (f"record-{index}.xml", payload, "application/xml"))
            for index, payload in enumerate(payloads)
        ]
        data = {"MetaData": json.dumps(metadata)} if metadata is not None else None
        return await self.call(
            "POST",
            "CreateBatchRecords",
            {"batchGuid": batch_guid, "immediatelyReadyForValidation": str(ready).lower()},
            files=files,
            data=data,
        )

    async def upload_ok(
        self, batch_guid: str, payloads: list[bytes], *, ready: bool = False
    ) -> list[int]:
        response = await self.upload(batch_guid, payloads, ready=ready)
        assert response.status_code == 200, response.text
        return list(response.json()["result"])

    async def complete(self, batch_guid: str, **params: Any) -> Response:
        return await self.call(
            "PUT", "MarkBatchUploadComplete", {"batchGuid": batch_guid, **params}
        )

    async def get_batch(self, batch_guid: str) -> dict[str, Any]:
        response = await self.call("GET", "GetBatch", {"batchGuid": batch_guid})
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result

    async def get_record(self, batch_guid: str, record_id: int) -> dict[str, Any]:
        response = await self.call(
            "GET", "GetBatchRecord", {"batchGuid": batch_guid, "batchRecordId": record_id}
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["result"]
        return result


def assert_envelope_error(response: Response, status: int, *fragments: str) -> str:
    """Check the failure envelope and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"isSuccess", "error", "result"}
    assert body["isSuccess"] is False
    assert body["result"] is None
    assert isinstance(body["error"], str)
    assert body["error"]
    for fragment in fragments:
        assert fragment in body["error"]
    return str(body["error"])


async def run_worker_until(
    api: Api,
    settings: Settings,
    batch_guid: str,
    statuses: set[str] | None = None,
    limit_seconds: float = 30.0,
) -> dict[str, Any]:
    """Run an in-process worker until the batch reaches one of `statuses`; return the batch."""
    expected_statuses = statuses or FINAL_STATUSES
    database = Database(settings)
    worker = Worker(settings, database, open_blob_store(settings.storage_url))
    await worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + limit_seconds
        while True:
            batch = await api.get_batch(batch_guid)
            if batch["statusId"] in expected_statuses:
                return batch
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"batch {batch_guid} stayed {batch['statusId']} for {limit_seconds} s: {batch}"
                )
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        await database.dispose()


@asynccontextmanager
async def api_with_settings(
    settings: Settings, api: Api, **overrides: Any
) -> AsyncIterator[tuple[Api, FastAPI]]:
    """Yield a second app with `overrides` on the test's database and blob folder, and a client
    of it that acts as the same client and tenant as `api`."""
    application = create_app(settings.model_copy(update=overrides))
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            yield Api(http, api.tenant, api.token), application

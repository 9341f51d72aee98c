"""The OpenAPI document, the interactive docs, and the envelopes for unknown paths, wrong
methods and an unreachable database."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from httpx import ASGITransport, AsyncClient

from docbatch.api import batch_types, batches, records, token
from docbatch.app import create_app
from docbatch.core.settings import Settings
from tests.support import Api, TokenFactory, assert_envelope_error, configuration

ACTION_PREFIX = "/api/DocBatch/"
TOKEN_PATH = "/core/connect/token"
COMMON_ERROR_STATUSES = ["400", "401", "403", "503"]
ENVELOPE_KEYS = {"isSuccess", "error", "result"}


ROUTERS = [token.router, batch_types.router, batches.router, records.router]


def _routes() -> list[tuple[str, str]]:
    """Every (path, method) that the routers serve, with the method in lower case."""
    return [
        (route.path, method.lower())
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    ]


def _actions() -> list[tuple[str, str]]:
    return [(path, method) for path, method in _routes() if path.startswith(ACTION_PREFIX)]


async def _openapi(client: AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def _error_examples(operation: dict[str, Any]) -> dict[str, Any]:
    """The JSON example of every documented 4xx and 5xx response, by status."""
    examples = {}
    for status, response in operation["responses"].items():
        if int(status) < 400:
            continue
        content = response.get("content", {}).get("application/json", {})
        examples[status] = content.get("example")
    return examples


async def test_openapi_lists_every_route(client: AsyncClient) -> None:
    paths = (await _openapi(client))["paths"]
    routes = _routes()
    assert (TOKEN_PATH, "post") in routes
    assert len(_actions()) == 13
    missing = [(path, method) for path, method in routes if method not in paths.get(path, {})]
    assert missing == []


async def test_openapi_lists_token_first(client: AsyncClient) -> None:
    """The routes are matched busiest first, but the document keeps the reading order."""
    document = await _openapi(client)
    paths = list(document["paths"])
    tags = []
    for path in paths:
        for operation in document["paths"][path].values():
            if operation["tags"][0] not in tags:
                tags.append(operation["tags"][0])
    assert paths[0] == TOKEN_PATH
    assert tags == ["Authentication", "Batch types", "Batches", "Records"]


async def test_openapi_bearer_scheme(client: AsyncClient) -> None:
    schemes = (await _openapi(client))["components"]["securitySchemes"]
    bearer = [scheme for scheme in schemes.values() if scheme.get("scheme") == "bearer"]
    assert len(bearer) == 1
    assert bearer[0]["type"] == "http"


async def test_openapi_actions_secured(client: AsyncClient, subtests: pytest.Subtests) -> None:
    document = await _openapi(client)
    [scheme_name] = [
        name
        for name, scheme in document["components"]["securitySchemes"].items()
        if scheme.get("scheme") == "bearer"
    ]
    for path, method in _actions():
        with subtests.test(action=f"{method.upper()} {path}"):
            operation = document["paths"][path][method]
            assert operation.get("security") == [{scheme_name: []}]


async def test_openapi_actions_take_tenant(client: AsyncClient, subtests: pytest.Subtests) -> None:
    document = await _openapi(client)
    for path, method in _actions():
        with subtests.test(action=f"{method.upper()} {path}"):
            parameters = document["paths"][path][method].get("parameters", [])
            tenant = [parameter for parameter in parameters if parameter["name"] == "tenantGuid"]
            assert len(tenant) == 1
            assert tenant[0]["in"] == "query"
            assert tenant[0]["required"] is True
            assert tenant[0]["schema"]["type"] == "string"


async def test_openapi_token_unsecured(client: AsyncClient) -> None:
    operation = (await _openapi(client))["paths"][TOKEN_PATH]["post"]
    assert "security" not in operation


async def test_openapi_common_errors(client: AsyncClient, subtests: pytest.Subtests) -> None:
    document = await _openapi(client)
    for path, method in _actions():
        with subtests.test(action=f"{method.upper()} {path}"):
            examples = _error_examples(document["paths"][path][method])
            for status in COMMON_ERROR_STATUSES:
                assert status in examples, status
                assert examples[status] is not None, status


async def test_openapi_error_examples(client: AsyncClient, subtests: pytest.Subtests) -> None:
    document = await _openapi(client)
    for path, method in _actions():
        with subtests.test(action=f"{method.upper()} {path}"):
            examples = _error_examples(document["paths"][path][method])
            # A documented 422 is reported by test_openapi_no_detail_responses.
            examples.pop("422", None)
            keys = {status: sorted(example or {}) for status, example in examples.items()}
            assert keys == dict.fromkeys(examples, sorted(ENVELOPE_KEYS))
            flags = {status: example.get("isSuccess") for status, example in examples.items()}
            assert flags == dict.fromkeys(examples, False)


async def test_openapi_no_detail_responses(client: AsyncClient, subtests: pytest.Subtests) -> None:
    """Check that no 422 `{"detail"}` response is documented, because the service returns
    validation errors as a 400 envelope."""
    document = await _openapi(client)
    for path, method in _actions():
        with subtests.test(action=f"{method.upper()} {path}"):
            assert "422" not in document["paths"][path][method]["responses"]


async def test_docs_html(client: AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in response.text


@pytest.mark.parametrize("path", ["/nowhere", "/api/DocBatch/NoSuchAction", "/api/DocBatch"])
async def test_unknown_path_envelope(client: AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert_envelope_error(response, 404)
    assert "detail" not in response.json()
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/DocBatch/GetBatch"),
        ("POST", "/api/DocBatch/GetBatchTypes"),
        ("GET", "/api/DocBatch/MarkBatchUploadComplete"),
        ("GET", TOKEN_PATH),
    ],
)
async def test_wrong_method_envelope(client: AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path)
    assert_envelope_error(response, 405, method)
    assert "detail" not in response.json()
    assert response.headers["allow"]


async def test_openapi_success_examples(client: AsyncClient, subtests: pytest.Subtests) -> None:
    document = await _openapi(client)
    for path, method in _actions():
        success = document["paths"][path][method]["responses"]["200"]
        example = success.get("content", {}).get("application/json", {}).get("example")
        if example is None:
            continue
        with subtests.test(action=f"{method.upper()} {path}"):
            assert set(example) == ENVELOPE_KEYS
            assert example["isSuccess"] is True


def _unreachable_database_url(backend: str, tmp_path: Path) -> str:
    """A database URL that fails on connect: a folder for SQLite, a closed port for PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}"
    return "postgresql+asyncpg://postgres@127.0.0.1:1/docbatch_test"


async def test_database_unreachable(
    settings: Settings,
    tokens: TokenFactory,
    tenant: uuid.UUID,
    backend: str,
    tmp_path: Path,
    subtests: pytest.Subtests,
) -> None:
    guid = str(uuid.uuid4())
    record_file = [("RecordData", ("record.xml", b"<order/>", "application/xml"))]
    requests: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
        ("POST", "InsertBatchType", {}, {"json": {"name": "x", "configuration": configuration()}}),
        ("GET", "GetBatchType", {"batchTypeGuid": guid}, {}),
        ("GET", "GetBatchTypes", {}, {}),
        ("POST", "CreateBatch", {"batchTypeGuid": guid}, {}),
        ("PUT", "MarkBatchUploadComplete", {"batchGuid": guid}, {}),
        ("PUT", "ApproveBatch", {"batchGuid": guid}, {}),
        ("GET", "GetBatch", {"batchGuid": guid}, {}),
        ("POST", "CreateBatchRecord", {"batchGuid": guid}, {"files": record_file}),
        ("POST", "CreateBatchRecords", {"batchGuid": guid}, {"files": record_file}),
        ("PUT", "MarkBatchRecordReadyForValidation", {"batchGuid": guid, "batchRecordId": 1}, {}),
        ("GET", "GetBatchRecord", {"batchGuid": guid, "batchRecordId": 1}, {}),
        ("GET", "GetBatchRecordLog", {"batchGuid": guid, "batchRecordId": 1}, {}),
    ]
    broken = settings.model_copy(
        update={"database_url": _unreachable_database_url(backend, tmp_path)}
    )
    application = create_app(broken)
    async with application.router.lifespan_context(application):
        transport = ASGITransport(app=application)
        async with AsyncClient(transport=transport, base_url="http://docbatch.test") as http:
            api = Api(http, tenant, tokens.for_tenant(tenant))
            for method, action, params, body in requests:
                with subtests.test(action=action):
                    response = await api.call(method, action, params, **body)
                    assert_envelope_error(response, 503)
                    assert response.headers["retry-after"]
                    assert response.headers["x-request-id"]

"""Token endpoint, bearer token verification, roles, tenant isolation and request ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import func, select

from docbatch.auth.clients import RegisteredClient, register_client
from docbatch.auth.principal import Role
from docbatch.core.settings import Settings
from docbatch.core.timefmt import utcnow
from docbatch.store import tenants as tenant_store
from docbatch.store.database import Database
from docbatch.store.models import Batch
from tests.support import (
    ALL_ROLES,
    Api,
    TokenFactory,
    assert_envelope_error,
    configuration,
    valid_order,
)

TOKEN_PATH = "/core/connect/token"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


async def _register(
    settings: Settings, tenant: uuid.UUID, roles: list[Role] | None = None
) -> RegisteredClient:
    database = Database(settings)
    try:
        async with database.transaction() as session:
            return await register_client(session, "test client", [tenant], roles or list(Role))
    finally:
        await database.dispose()


def _grant(client: RegisteredClient, **overrides: str | None) -> dict[str, str]:
    form = {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "grant_type": "client_credentials",
        "scope": "DocFusion",
    }
    form.update(overrides)  # type: ignore[arg-type]
    return {name: value for name, value in form.items() if value is not None}


def _assert_oauth_error(response: Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


# --- token endpoint ---------------------------------------------------------------------------


async def test_token_success_shape(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, data=_grant(registered, resource="urn:docfusion"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert isinstance(body["access_token"], str)
    assert body["access_token"]
    assert response.headers["cache-control"] == "no-store"


async def test_token_works_on_action(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant)
    token = (await client.post(TOKEN_PATH, data=_grant(registered))).json()["access_token"]
    response = await Api(client, tenant, token).call("GET", "GetBatchTypes")
    assert response.status_code == 200, response.text
    assert response.json() == {"isSuccess": True, "error": None, "result": []}


async def test_token_carries_client_roles(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant, [Role.BATCH_VIEWER])
    token = (await client.post(TOKEN_PATH, data=_grant(registered))).json()["access_token"]
    viewer = Api(client, tenant, token)
    insert = await viewer.call(
        "POST", "InsertBatchType", json={"name": "orders", "configuration": configuration()}
    )
    assert_envelope_error(insert, 403, "BatchAdmin")
    listing = await viewer.call("GET", "GetBatchTypes")
    assert listing.status_code == 200, listing.text
    assert listing.json()["result"] == []


async def test_token_basic_auth(client: AsyncClient, settings: Settings, tenant: uuid.UUID) -> None:
    registered = await _register(settings, tenant)
    credentials = f"{registered.client_id}:{registered.client_secret}".encode()
    response = await client.post(
        TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {base64.b64encode(credentials).decode()}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_token_wrong_secret(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, data=_grant(registered, client_secret="wrong"))
    _assert_oauth_error(response, 401, "invalid_client")


async def test_token_unknown_client(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, data=_grant(registered, client_id="docbatch-nobody"))
    _assert_oauth_error(response, 401, "invalid_client")


async def test_token_wrong_grant_type(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID
) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, data=_grant(registered, grant_type="password"))
    _assert_oauth_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize("field", ["grant_type", "client_id", "client_secret"])
async def test_token_missing_field(
    client: AsyncClient, settings: Settings, tenant: uuid.UUID, field: str
) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, data=_grant(registered, **{field: None}))
    _assert_oauth_error(response, 400, "invalid_request")


async def test_token_empty_form(client: AsyncClient) -> None:
    response = await client.post(TOKEN_PATH, content=b"", headers=FORM_HEADERS)
    _assert_oauth_error(response, 400, "invalid_request")


async def test_token_json_body(client: AsyncClient, settings: Settings, tenant: uuid.UUID) -> None:
    registered = await _register(settings, tenant)
    response = await client.post(TOKEN_PATH, json=_grant(registered))
    _assert_oauth_error(response, 400, "invalid_request")


async def test_secret_stored_as_argon2(settings: Settings, tenant: uuid.UUID) -> None:
    registered = await _register(settings, tenant)
    database = Database(settings)
    try:
        async with database.read() as session:
            stored = await tenant_store.get_client(session, registered.client_id)
    finally:
        await database.dispose()
    assert stored is not None
    assert stored.secret_hash.startswith("$argon2")
    assert registered.client_secret not in stored.secret_hash
    assert PasswordHasher().verify(stored.secret_hash, registered.client_secret)


# --- bearer token verification ----------------------------------------------------------------


def _encode_segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _numeric_claims(claims: dict[str, Any]) -> dict[str, Any]:
    return {
        name: int(value.timestamp()) if isinstance(value, datetime) else value
        for name, value in claims.items()
    }


def _hs256_with_public_key(tokens: TokenFactory, claims: dict[str, Any]) -> str:
    """Sign with HMAC over the service's public key PEM, as in an algorithm-confusion attack.

    PyJWT refuses a PEM key as an HMAC secret, so the token is assembled by hand.
    """
    public_pem = tokens.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _encode_segment(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _encode_segment(json.dumps(_numeric_claims(claims)).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_encode_segment(signature)}"


def _authorization(case: str, tokens: TokenFactory, tenant: uuid.UUID) -> str | None:
    """Build the Authorization header value for one kind of rejected credential."""
    now = utcnow()
    tenants = [tenant]
    if case == "missing":
        return None
    if case == "basic_scheme":
        return "Basic " + base64.b64encode(b"client:secret").decode()
    if case == "malformed":
        return "Bearer not-a-jwt"
    if case == "expired":
        token = tokens.mint(
            tenants, iat=now - timedelta(minutes=10), exp=now - timedelta(seconds=60)
        )
    elif case == "not_yet_valid":
        token = tokens.mint(tenants, nbf=now + timedelta(minutes=2))
    elif case == "alg_none":
        token = jwt.encode(tokens.claims(tenants, ALL_ROLES), "", algorithm="none")
    elif case == "other_key":
        other_key = ec.generate_private_key(ec.SECP256R1())
        token = jwt.encode(tokens.claims(tenants, ALL_ROLES), other_key, algorithm="ES256")
    elif case == "hs256_public_key":
        token = _hs256_with_public_key(tokens, tokens.claims(tenants, ALL_ROLES))
    elif case == "wrong_issuer":
        token = tokens.mint(tenants, iss="https://other-issuer.example")
    elif case == "wrong_audience":
        token = tokens.mint(tenants, aud="other-audience")
    elif case in ("no_sub", "no_exp", "no_iat"):
        token = tokens.mint(tenants, **{case.removeprefix("no_"): None})
    else:
        raise AssertionError(f"unknown case {case}")
    return f"Bearer {token}"


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "basic_scheme",
        "malformed",
        "expired",
        "not_yet_valid",
        "alg_none",
        "other_key",
        "hs256_public_key",
        "wrong_issuer",
        "wrong_audience",
        "no_sub",
        "no_exp",
        "no_iat",
    ],
)
async def test_bearer_rejected(
    client: AsyncClient, tokens: TokenFactory, tenant: uuid.UUID, case: str
) -> None:
    authorization = _authorization(case, tokens, tenant)
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get(
        "/api/DocBatch/GetBatchTypes", params={"tenantGuid": str(tenant)}, headers=headers
    )
    assert_envelope_error(response, 401)
    # Only a bearer token that was sent and rejected gets the invalid_token error code.
    sent = case not in ("missing", "basic_scheme")
    expected = 'Bearer error="invalid_token"' if sent else "Bearer"
    assert response.headers["www-authenticate"] == expected


async def test_bearer_expiry_leeway(api: Api, tokens: TokenFactory, tenant: uuid.UUID) -> None:
    now = utcnow()
    token = tokens.mint([tenant], iat=now - timedelta(minutes=10), exp=now - timedelta(seconds=5))
    response = await api.with_token(token).call("GET", "GetBatchTypes")
    assert response.status_code == 200, response.text


async def test_bearer_write_rejected_stores_nothing(api: Api) -> None:
    response = await api.with_token("not-a-jwt").call(
        "POST", "InsertBatchType", json={"name": "orders", "configuration": configuration()}
    )
    assert_envelope_error(response, 401)
    listing = await api.call("GET", "GetBatchTypes")
    assert listing.json()["result"] == []


# --- roles and tenants ------------------------------------------------------------------------


class _Seed:
    """Objects of one tenant that every protected action can act on.

    `open_batch` is Creating with one Creating record; `waiting_batch` is AwaitingApproval.
    """

    def __init__(self, batch_type: str, open_batch: str, waiting_batch: str, record: int) -> None:
        self.batch_type = batch_type
        self.open_batch = open_batch
        self.waiting_batch = waiting_batch
        self.record = record


async def _seed(api: Api) -> _Seed:
    batch_type = await api.insert_batch_type(processRecordsWithoutApproval=False)
    open_batch = await api.create_batch(batch_type)
    [record] = await api.upload_ok(open_batch, [valid_order(1)])
    waiting_batch = await api.create_batch(batch_type)
    response = await api.complete(waiting_batch)
    assert response.json()["result"]["statusId"] == "AwaitingApproval"
    return _Seed(batch_type, open_batch, waiting_batch, record)


async def _count_batches(app: FastAPI) -> int:
    database: Database = app.state.docbatch.database
    async with database.read() as session:
        return int(await session.scalar(select(func.count()).select_from(Batch)) or 0)


async def _snapshot(api: Api, seed: _Seed, app: FastAPI) -> dict[str, Any]:
    """Everything an action on the seed could change, read with full rights."""
    types = await api.call("GET", "GetBatchTypes")
    log = await api.call(
        "GET", "GetBatchRecordLog", {"batchGuid": seed.open_batch, "batchRecordId": seed.record}
    )
    return {
        "batch_types": types.json()["result"],
        "open_batch": await api.get_batch(seed.open_batch),
        "waiting_batch": await api.get_batch(seed.waiting_batch),
        "record": await api.get_record(seed.open_batch, seed.record),
        "log": log.json()["result"],
        "batch_count": await _count_batches(app),
    }


ACTIONS = {
    "InsertBatchType": "BatchAdmin",
    "CreateBatch": "BatchCreator",
    "MarkBatchUploadComplete": "BatchCreator",
    "ApproveBatch": "BatchCreator",
    "CreateBatchRecord": "BatchCreator",
    "CreateBatchRecords": "BatchCreator",
    "MarkBatchRecordReadyForValidation": "BatchCreator",
    "GetBatchType": "BatchViewer",
    "GetBatchTypes": "BatchViewer",
    "GetBatch": "BatchViewer",
    "GetBatchRecord": "BatchViewer",
    "GetBatchRecordLog": "BatchViewer",
}
# Actions that look an object up, so they return 404 for another tenant's object.
LOOKUP_ACTIONS = [name for name in ACTIONS if name not in ("InsertBatchType", "GetBatchTypes")]


def _action_request(action: str, seed: _Seed) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Return method, query and body arguments that succeed for a client with every role."""
    record_file = ("RecordData", ("record.xml", valid_order(7), "application/xml"))
    open_batch = {"batchGuid": seed.open_batch}
    record = {"batchGuid": seed.open_batch, "batchRecordId": seed.record}
    requests: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
        "InsertBatchType": (
            "POST",
            {},
            {"json": {"name": "more", "configuration": configuration()}},
        ),
        "CreateBatch": ("POST", {"batchTypeGuid": seed.batch_type}, {}),
        "MarkBatchUploadComplete": ("PUT", open_batch, {}),
        "ApproveBatch": ("PUT", {"batchGuid": seed.waiting_batch}, {}),
        "CreateBatchRecord": ("POST", open_batch, {"files": [record_file]}),
        "CreateBatchRecords": ("POST", open_batch, {"files": [record_file, record_file]}),
        "MarkBatchRecordReadyForValidation": ("PUT", record, {}),
        "GetBatchType": ("GET", {"batchTypeGuid": seed.batch_type}, {}),
        "GetBatchTypes": ("GET", {}, {}),
        "GetBatch": ("GET", open_batch, {}),
        "GetBatchRecord": ("GET", record, {}),
        "GetBatchRecordLog": ("GET", record, {}),
    }
    return requests[action]


@pytest.mark.parametrize("role", ALL_ROLES)
async def test_role_missing(
    api: Api,
    app: FastAPI,
    tokens: TokenFactory,
    tenant: uuid.UUID,
    subtests: pytest.Subtests,
    role: str,
) -> None:
    seed = await _seed(api)
    lacking = api.with_token(
        tokens.for_tenant(tenant, [other for other in ALL_ROLES if other != role])
    )
    for action in [name for name, needed in ACTIONS.items() if needed == role]:
        with subtests.test(action=action):
            before = await _snapshot(api, seed, app)
            method, params, body = _action_request(action, seed)
            response = await lacking.call(method, action, params, **body)
            assert_envelope_error(response, 403, role)
            assert await _snapshot(api, seed, app) == before


async def test_role_sufficient(
    api: Api, tokens: TokenFactory, tenant: uuid.UUID, subtests: pytest.Subtests
) -> None:
    for action, role in ACTIONS.items():
        with subtests.test(action=action):
            seed = await _seed(api)
            only_needed = api.with_token(tokens.for_tenant(tenant, [role]))
            method, params, body = _action_request(action, seed)
            response = await only_needed.call(method, action, params, **body)
            assert response.status_code == 200, response.text
            assert response.json()["isSuccess"] is True


async def test_tenant_not_granted(
    api: Api,
    app: FastAPI,
    tokens: TokenFactory,
    other_tenant: uuid.UUID,
    subtests: pytest.Subtests,
) -> None:
    seed = await _seed(api)
    # The requests name tenant A, where the objects are, but the token lists only tenant B.
    intruder = api.with_token(tokens.for_tenant(other_tenant))
    for action in ACTIONS:
        with subtests.test(action=action):
            before = await _snapshot(api, seed, app)
            method, params, body = _action_request(action, seed)
            response = await intruder.call(method, action, params, **body)
            assert_envelope_error(response, 403, str(api.tenant))
            assert await _snapshot(api, seed, app) == before


async def test_cross_tenant_not_found(
    api: Api,
    app: FastAPI,
    tokens: TokenFactory,
    other_tenant: uuid.UUID,
    subtests: pytest.Subtests,
) -> None:
    seed = await _seed(api)
    other = Api(api.client, other_tenant, tokens.for_tenant(other_tenant))
    for action in LOOKUP_ACTIONS:
        with subtests.test(action=action):
            before = await _snapshot(api, seed, app)
            method, params, body = _action_request(action, seed)
            response = await other.call(method, action, params, **body)
            assert_envelope_error(response, 404)
            assert await _snapshot(api, seed, app) == before


async def test_role_names_exact(api: Api, tokens: TokenFactory, tenant: uuid.UUID) -> None:
    near_misses = ["batchviewer", "BATCHVIEWER", "BatchViewer ", "Viewer"]
    response = await api.with_token(tokens.for_tenant(tenant, near_misses)).call(
        "GET", "GetBatchTypes"
    )
    assert_envelope_error(response, 403, "BatchViewer")


async def test_tenant_checked_before_lookup(
    api: Api, tokens: TokenFactory, other_tenant: uuid.UUID
) -> None:
    intruder = api.with_token(tokens.for_tenant(other_tenant))
    response = await intruder.call("GET", "GetBatch", {"batchGuid": str(uuid.uuid4())})
    assert_envelope_error(response, 403)


async def test_tenant_guid_malformed(api: Api) -> None:
    response = await api.call("GET", "GetBatchTypes", {"tenantGuid": "not-a-guid"})
    assert_envelope_error(response, 400, "tenantGuid")


async def test_tenant_guid_missing(api: Api) -> None:
    response = await api.client.get("/api/DocBatch/GetBatchTypes", headers=api.headers)
    assert_envelope_error(response, 400, "tenantGuid")


@pytest.mark.parametrize(
    ("authorization", "status", "fragment"),
    [
        ("none", 401, "bearer token is required"),
        ("no_role", 403, "BatchViewer"),
        ("valid", 400, "tenantGuid is required"),
    ],
)
async def test_tenant_guid_missing_check_order(
    client: AsyncClient,
    tokens: TokenFactory,
    tenant: uuid.UUID,
    authorization: str,
    status: int,
    fragment: str,
) -> None:
    """Without tenantGuid, a missing token is still a 401 and a missing role still a 403."""
    roles = {"none": [], "no_role": [Role.BATCH_CREATOR.value], "valid": ALL_ROLES}[authorization]
    headers = {}
    if authorization != "none":
        headers["Authorization"] = f"Bearer {tokens.mint([tenant], roles=roles)}"
    response = await client.get("/api/DocBatch/GetBatchTypes", headers=headers)
    assert_envelope_error(response, status, fragment)


async def test_tenant_guid_upper_case(api: Api) -> None:
    response = await api.call("GET", "GetBatchTypes", {"tenantGuid": str(api.tenant).upper()})
    assert response.status_code == 200, response.text


# --- request ids ------------------------------------------------------------------------------


async def test_request_id_echoed(api: Api) -> None:
    response = await api.call("GET", "GetBatchTypes", headers={"X-Request-ID": "client-id-42"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "client-id-42"


async def test_request_id_generated(api: Api) -> None:
    first = await api.call("GET", "GetBatchTypes")
    second = await api.call("GET", "GetBatchTypes")
    assert first.headers["x-request-id"]
    assert second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_request_id_on_auth_error(client: AsyncClient, tenant: uuid.UUID) -> None:
    response = await client.get(
        "/api/DocBatch/GetBatchTypes",
        params={"tenantGuid": str(tenant)},
        headers={"X-Request-ID": "failing-call-7"},
    )
    assert_envelope_error(response, 401)
    assert response.headers["x-request-id"] == "failing-call-7"


async def test_request_id_on_not_found(api: Api) -> None:
    missing = await api.call("GET", "GetBatch", {"batchGuid": str(uuid.uuid4())})
    assert_envelope_error(missing, 404)
    assert missing.headers["x-request-id"]


async def test_request_id_on_token_error(client: AsyncClient) -> None:
    response = await client.post(TOKEN_PATH, json={}, headers={"X-Request-ID": "token-call-1"})
    assert response.status_code == 400, response.text
    assert response.headers["x-request-id"] == "token-call-1"

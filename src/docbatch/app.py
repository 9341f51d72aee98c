"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from docbatch import __version__
from docbatch.api import batch_types, batches, records, token
from docbatch.api.deps import document_scopes
from docbatch.api.errors import install_error_handlers
from docbatch.api.middleware import JsonBodyLimitMiddleware, RequestIdMiddleware
from docbatch.api.state import AppState
from docbatch.auth.keys import load_or_create_signing_key
from docbatch.auth.tokens import JwksKeyResolver, LocalKeyResolver, TokenIssuer, TokenVerifier
from docbatch.core.logging import configure_logging
from docbatch.core.settings import Settings
from docbatch.services.records import InlinePayloadBudget
from docbatch.storage.blobs import open_blob_store
from docbatch.store.database import Database
from docbatch.worker.runner import Worker

logger = structlog.get_logger(__name__)

DESCRIPTION = """
Batch document service. Create a batch of a batch type, upload XML or JSON records into it, and
call MarkBatchUploadComplete: workers validate every record against the batch type's schema.

Every JSON response is an envelope `{"isSuccess", "error", "result"}`. Authenticate with a
bearer token from `POST /core/connect/token` (OAuth 2.0 client credentials). Every action takes
`tenantGuid`; the role each action needs is named in its summary.
"""


# The routers in the order that the OpenAPI document and /docs list them.
_DOCUMENTED_ROUTERS = (token.router, batch_types.router, batches.router, records.router)


def build_state(settings: Settings) -> AppState:
    """Open the database, the blob store and the token keys named by the settings."""
    database = Database(settings)
    blobs = open_blob_store(settings.storage_url)
    issuer: TokenIssuer | None = None
    if settings.uses_external_identity_provider:
        assert settings.oidc_jwks_url is not None
        verifier = TokenVerifier(
            JwksKeyResolver(settings.oidc_jwks_url, settings.oidc_algorithms),
            issuer=settings.oidc_issuer or "",
            audience=settings.oidc_audience or "",
            leeway_seconds=settings.token_leeway_seconds,
            roles_claim=settings.roles_claim,
            tenants_claim=settings.tenants_claim,
        )
    else:
        key = load_or_create_signing_key(
            settings.effective_signing_key_file(), create=settings.is_embedded
        )
        issuer = TokenIssuer(
            key,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            ttl_seconds=settings.token_ttl_seconds,
            roles_claim=settings.roles_claim,
            tenants_claim=settings.tenants_claim,
        )
        verifier = TokenVerifier(
            LocalKeyResolver(key),
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            leeway_seconds=settings.token_leeway_seconds,
            roles_claim=settings.roles_claim,
            tenants_claim=settings.tenants_claim,
        )
    return AppState(
        settings=settings,
        database=database,
        blobs=blobs,
        verifier=verifier,
        issuer=issuer,
        inline_budget=InlinePayloadBudget(settings.inline_payload_memory_bytes),
    )


def create_app(settings: Settings | None = None, *, run_worker: bool = False) -> FastAPI:
    """Build the application; with `run_worker` the process also works through the job queue."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings)
        app.state.docbatch = state
        worker = Worker(settings, state.database, state.blobs) if run_worker else None
        if worker is not None:
            await worker.start()
        logger.info(
            "service.started",
            version=__version__,
            worker=run_worker,
            database=state.database.url.get_backend_name(),
        )
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await state.database.dispose()
            logger.info("service.stopped")

    app = FastAPI(
        title="DocBatch",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.openapi = lambda: _openapi_schema(app)  # type: ignore[method-assign]
    app.add_middleware(JsonBodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    # FastAPI tries routes in order, and each route tried costs about 16k instructions (callgrind,
    # FastAPI 0.165). So the busiest routers come first and the documentation routes last.
    documentation = list(app.router.routes)
    for router in (batches.router, records.router, batch_types.router, token.router):
        app.include_router(router)
    app.router.routes[:] = [
        *(route for route in app.router.routes if route not in documentation),
        *documentation,
    ]
    return app


def _openapi_schema(app: FastAPI) -> dict[str, Any]:
    """Build the OpenAPI document as the service behaves.

    FastAPI documents a 422 `{"detail": ...}` answer that this service never sends (validation
    errors are 400 envelopes), and drops null values from examples, which would hide the
    envelope's `error` and `result` keys. The role dependencies read the token and `tenantGuid`
    themselves, so `document_scopes` adds both to the operations.
    """
    if app.openapi_schema is not None:
        return app.openapi_schema
    routes = [route for router in _DOCUMENTED_ROUTERS for route in router.routes]
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=routes
    )
    document_scopes(schema, routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            responses.pop("422", None)
            for response in responses.values():
                example = response.get("content", {}).get("application/json", {}).get("example")
                if isinstance(example, dict) and "isSuccess" in example:
                    example.setdefault("error", None)
                    example.setdefault("result", None)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def create_api_app() -> FastAPI:
    """Build an API-only application from the environment, for multi-process serving."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)

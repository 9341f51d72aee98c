"""Batch type rules: a configuration is stored only when its schema and paths compile."""

from __future__ import annotations

import uuid
from typing import Any

import anyio.to_thread
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.auth.principal import TenantScope
from docbatch.core.errors import InvalidRequestError, NotFoundError
from docbatch.core.settings import Settings
from docbatch.store import batch_types as store
from docbatch.store import tenants as tenant_store
from docbatch.store.models import BatchType
from docbatch.validation.records import ConfigurationError, build_record_validator

logger = structlog.get_logger(__name__)


async def check_configuration(configuration: dict[str, Any], settings: Settings) -> None:
    """Raise `InvalidRequestError` naming the defect when the configuration cannot be used.

    The schema is compiled in a worker thread: large schema sets take a while to compile.
    """
    if configuration.get("templateGuid") is not None:
        # NOTE: templates are not stored yet, so any templateGuid names a missing template.
        raise InvalidRequestError(
            f"Template {configuration['templateGuid']} was not found; insert the template first "
            "or set templateGuid to null."
        )
    try:
        await anyio.to_thread.run_sync(
            lambda: build_record_validator(
                configuration["dataType"],
                configuration.get("dataSchemaBase64"),
                configuration.get("referenceDataPath"),
                max_xml_depth=settings.max_xml_depth,
                max_schema_bytes=settings.max_schema_bytes,
            )
        )
    except ConfigurationError as error:
        raise InvalidRequestError(f"The batch type configuration is invalid: {error}.") from error


async def insert_batch_type(
    session: AsyncSession,
    scope: TenantScope,
    name: str,
    configuration: dict[str, Any],
    settings: Settings,
) -> BatchType:
    """Store a new batch type after `check_configuration` accepts it.

    Raises `NotFoundError` when the tenant, though listed in the caller's token, was never
    registered with `docbatch tenant add`.
    """
    if await tenant_store.get_tenant(session, scope.guid) is None:
        raise NotFoundError(
            f"Tenant {scope.guid} is not registered in this service; an operator registers it "
            "with `docbatch tenant add`."
        )
    await check_configuration(configuration, settings)
    batch_type = await store.insert_batch_type(session, scope, name, configuration)
    logger.info("batch_type.inserted", batch_type_guid=str(batch_type.guid), name=name)
    return batch_type


async def get_batch_type(session: AsyncSession, scope: TenantScope, guid: uuid.UUID) -> BatchType:
    """Return the batch type, or raise `NotFoundError` when the tenant has none with that GUID."""
    batch_type = await store.get_batch_type(session, scope, guid)
    if batch_type is None:
        raise NotFoundError(f"Batch type {guid} was not found in tenant {scope.guid}.")
    return batch_type


async def list_batch_types(session: AsyncSession, scope: TenantScope) -> list[BatchType]:
    return await store.list_batch_types(session, scope)

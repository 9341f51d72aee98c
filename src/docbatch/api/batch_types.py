"""Batch type actions: InsertBatchType, GetBatchType, GetBatchTypes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from docbatch.api.deps import AdminScope, State, ViewerScope, parse_guid, require_json_body
from docbatch.api.docs import error_responses
from docbatch.api.schemas import BatchTypeIn, BatchTypeOut, Envelope, ok
from docbatch.core.errors import NotFoundError, UnsupportedMediaTypeError
from docbatch.services import batch_types as service

router = APIRouter(prefix="/api/DocBatch", tags=["Batch types"])


@router.post(
    "/InsertBatchType",
    summary="Insert a batch type [BatchAdmin]",
    description="Compiles the schema (a single XSD or JSON Schema, or a ZIP schema set with one "
    "root), checks the durations and the reference path, and stores the batch type.",
    responses=error_responses(NotFoundError, UnsupportedMediaTypeError),
    dependencies=[Depends(require_json_body)],
)
async def insert_batch_type(
    scope: AdminScope, state: State, body: BatchTypeIn
) -> Envelope[BatchTypeOut]:
    configuration = body.configuration.model_dump(by_alias=True, mode="json")
    async with state.database.transaction() as session:
        batch_type = await service.insert_batch_type(
            session, scope, body.name, configuration, state.settings
        )
    return ok(BatchTypeOut.from_model(batch_type))


@router.get(
    "/GetBatchType",
    summary="Get a batch type [BatchViewer]",
    responses=error_responses(NotFoundError),
)
async def get_batch_type(
    scope: ViewerScope,
    state: State,
    batch_type_guid: Annotated[str, Query(alias="batchTypeGuid")],
) -> Envelope[BatchTypeOut]:
    guid = parse_guid(batch_type_guid, "batchTypeGuid")
    async with state.database.read() as session:
        batch_type = await service.get_batch_type(session, scope, guid)
    return ok(BatchTypeOut.from_model(batch_type))


@router.get(
    "/GetBatchTypes",
    summary="List the tenant's batch types [BatchViewer]",
    responses=error_responses(),
)
async def get_batch_types(scope: ViewerScope, state: State) -> Envelope[list[BatchTypeOut]]:
    async with state.database.read() as session:
        batch_types = await service.list_batch_types(session, scope)
    return ok([BatchTypeOut.from_model(batch_type) for batch_type in batch_types])

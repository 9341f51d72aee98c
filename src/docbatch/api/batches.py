"""Batch actions: CreateBatch, MarkBatchUploadComplete, ApproveBatch, GetBatch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from docbatch.api.deps import (
    MAX_INT64,
    CreatorScope,
    State,
    ViewerScope,
    parse_guid,
    reject_unstorable,
)
from docbatch.api.docs import error_responses, success_example
from docbatch.api.schemas import BatchOut, Envelope, ok
from docbatch.core.errors import ConflictError, InvalidRequestError, NotFoundError
from docbatch.services import batches as service
from docbatch.services.batches import MAX_BATCH_REFERENCE_LENGTH

router = APIRouter(prefix="/api/DocBatch", tags=["Batches"])

BatchGuidQuery = Annotated[str, Query(alias="batchGuid", description="The batch GUID.")]


async def _create_batch(
    scope: CreatorScope, state: State, batch_type_guid: str, batch_reference: str | None
) -> Envelope[str]:
    guid = parse_guid(batch_type_guid, "batchTypeGuid")
    reject_unstorable(batch_reference, "batchReference")
    if batch_reference is not None and len(batch_reference) > MAX_BATCH_REFERENCE_LENGTH:
        raise InvalidRequestError(
            f"batchReference is {len(batch_reference)} characters long; at most "
            f"{MAX_BATCH_REFERENCE_LENGTH} are allowed."
        )
    async with state.database.transaction() as session:
        batch = await service.create_batch(session, scope, guid, batch_reference)
    return ok(str(batch.guid))


_CREATE_DESCRIPTION = (
    "Opens a new batch in status Creating. Result: the new batchGuid. GET is kept for "
    "compatibility; prefer POST, which proxies and link prefetchers never repeat."
)


@router.post(
    "/CreateBatch",
    summary="Create a batch [BatchCreator]",
    description=_CREATE_DESCRIPTION,
    responses={
        **error_responses(NotFoundError),
        **success_example("3f2b8e1c-4d5a-4b6c-8d7e-9f0a1b2c3d4e"),
    },
)
async def create_batch_post(
    scope: CreatorScope,
    state: State,
    batch_type_guid: Annotated[str, Query(alias="batchTypeGuid")],
    batch_reference: Annotated[
        str | None, Query(alias="batchReference", description="At most 200 characters.")
    ] = None,
) -> Envelope[str]:
    return await _create_batch(scope, state, batch_type_guid, batch_reference)


@router.get(
    "/CreateBatch",
    summary="Create a batch (GET, for compatibility) [BatchCreator]",
    description=_CREATE_DESCRIPTION,
    responses={
        **error_responses(NotFoundError),
        **success_example("3f2b8e1c-4d5a-4b6c-8d7e-9f0a1b2c3d4e"),
    },
)
async def create_batch_get(
    scope: CreatorScope,
    state: State,
    batch_type_guid: Annotated[str, Query(alias="batchTypeGuid")],
    batch_reference: Annotated[
        str | None, Query(alias="batchReference", description="At most 200 characters.")
    ] = None,
) -> Envelope[str]:
    return await _create_batch(scope, state, batch_type_guid, batch_reference)


@router.put(
    "/MarkBatchUploadComplete",
    summary="Close a batch to new records and queue it [BatchCreator]",
    description=(
        "Creating becomes Queued (with its processing job) or AwaitingApproval, in one "
        "transaction. A batch already closed is returned unchanged, so a lost response can be "
        "retried safely. With expectedRecordCount, a batch holding another number of records "
        "is left open and the answer is 409."
    ),
    responses=error_responses(NotFoundError, ConflictError),
)
async def mark_batch_upload_complete(
    scope: CreatorScope,
    state: State,
    batch_guid: BatchGuidQuery,
    expected_record_count: Annotated[
        int | None, Query(alias="expectedRecordCount", ge=0, le=MAX_INT64)
    ] = None,
) -> Envelope[BatchOut]:
    guid = parse_guid(batch_guid, "batchGuid")
    # The close is one statement on PostgreSQL, so it needs no BEGIN and COMMIT round trips.
    async with state.database.single_statements(write=True) as connection:
        batch, batch_type = await service.mark_upload_complete(
            connection, scope, guid, expected_record_count, state.settings
        )
    return ok(BatchOut.from_model(batch, batch_type))


@router.put(
    "/ApproveBatch",
    summary="Approve a batch awaiting approval [BatchCreator]",
    description="AwaitingApproval becomes Queued with its processing job. A batch already past "
    "approval is returned unchanged; a batch still Creating is a 409.",
    responses=error_responses(NotFoundError, ConflictError),
)
async def approve_batch(
    scope: CreatorScope, state: State, batch_guid: BatchGuidQuery
) -> Envelope[BatchOut]:
    guid = parse_guid(batch_guid, "batchGuid")
    async with state.database.transaction() as session:
        batch, batch_type = await service.approve_batch(session, scope, guid, state.settings)
    return ok(BatchOut.from_model(batch, batch_type))


@router.get(
    "/GetBatch",
    summary="Get a batch with its counters [BatchViewer]",
    responses=error_responses(NotFoundError),
)
async def get_batch(
    scope: ViewerScope, state: State, batch_guid: BatchGuidQuery
) -> Envelope[BatchOut]:
    guid = parse_guid(batch_guid, "batchGuid")
    async with state.database.single_statements() as connection:
        batch, batch_type = await service.get_batch(connection, scope, guid)
    return ok(BatchOut.from_model(batch, batch_type))

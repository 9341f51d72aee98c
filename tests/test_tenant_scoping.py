"""Every store query on tenant data either takes a `TenantScope` or is on a reviewed list of
queries for trusted callers, so a new unscoped query fails here."""

from __future__ import annotations

import inspect
import uuid

import pytest

from docbatch.auth.principal import Principal, TenantScope, grant_tenant
from docbatch.store import batch_types, batches, records

# Queries that run after the caller already resolved the batch inside a tenant, or for the worker,
# which acts on jobs rather than on requests.
UNSCOPED_BY_DESIGN = {
    "docbatch.store.batch_types.get_batch_type_by_id",
    "docbatch.store.batch_types.clear_cache",
    "docbatch.store.batches.transition",
    "docbatch.store.batches.add_validation_outcomes",
    "docbatch.store.batches.get_batch_by_id",
    "docbatch.store.batches.start_chunks",
    "docbatch.store.batches.finish_chunk",
    "docbatch.store.batches.settle",
    "docbatch.store.batches.chunk_boundaries",
    "docbatch.store.records.mark_ready",
    "docbatch.store.records.list_records_to_process",
    "docbatch.store.records.move_records",
    "docbatch.store.records.add_log_entries",
    "docbatch.store.records.list_log_entries",
}


def _public_functions() -> list[tuple[str, object]]:
    found = []
    for module in (batch_types, batches, records):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__ and not name.startswith("_"):
                found.append((f"{module.__name__}.{name}", function))
    return found


def test_store_queries_take_scope() -> None:
    unscoped = {
        name
        for name, function in _public_functions()
        if TenantScope.__name__ not in str(inspect.signature(function))  # type: ignore[arg-type]
    }
    assert unscoped == UNSCOPED_BY_DESIGN


def test_scope_needs_grant() -> None:
    with pytest.raises(TypeError):
        TenantScope(uuid.uuid4())


def test_grant_checks_token_tenants() -> None:
    allowed = uuid.uuid4()
    principal = Principal(subject="client", roles=frozenset(), tenants=frozenset({allowed}))
    granted = grant_tenant(principal, allowed)
    assert granted is not None
    assert granted.guid == allowed
    assert grant_tenant(principal, uuid.uuid4()) is None

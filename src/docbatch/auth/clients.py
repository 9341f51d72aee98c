"""The client registry: operators register clients; the token endpoint authenticates them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import anyio
import anyio.to_thread
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from docbatch.auth.principal import Role
from docbatch.auth.secrets import hash_secret, new_client_id, new_client_secret, verify_secret
from docbatch.core.timefmt import utcnow
from docbatch.store import tenants as store
from docbatch.store.models import ApiClient

logger = structlog.get_logger(__name__)


class UnknownTenantsError(ValueError):
    pass


# An Argon2 verification with argon2-cffi's default parameters takes 64 MiB and a core for a
# moment. Only this many run at once, so further token requests wait instead of exhausting
# memory and the shared thread pool.
_PARALLEL_VERIFICATIONS = 2
_limiter: anyio.CapacityLimiter | None = None


def _verification_slots() -> anyio.CapacityLimiter:
    global _limiter  # noqa: PLW0603  # created on first use, inside the running event loop
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(_PARALLEL_VERIFICATIONS)
    return _limiter


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    client_id: str
    client_secret: str


async def register_client(
    session: AsyncSession, name: str, tenant_guids: list[uuid.UUID], roles: list[Role]
) -> RegisteredClient:
    """Register a client and return its id and secret; only a hash of the secret is kept.

    Raises `UnknownTenantsError` when a tenant GUID is not registered.
    """
    found = {tenant.guid for tenant in await store.list_tenants(session, tenant_guids)}
    missing = [str(guid) for guid in tenant_guids if guid not in found]
    if missing:
        raise UnknownTenantsError(
            f"tenant {', '.join(missing)} is not registered; add it with `docbatch tenant add`"
        )
    secret = new_client_secret()
    client = ApiClient(
        client_id=new_client_id(),
        name=name,
        secret_hash=await anyio.to_thread.run_sync(hash_secret, secret),
        roles=sorted({role.value for role in roles}),
        tenant_guids=sorted({str(guid) for guid in tenant_guids}),
        created_at=utcnow(),
    )
    await store.insert_client(session, client)
    logger.info(
        "client.registered",
        client_id=client.client_id,
        roles=client.roles,
        tenants=client.tenant_guids,
    )
    return RegisteredClient(client.client_id, secret)


async def authenticate_client(
    session: AsyncSession, client_id: str, secret: str
) -> ApiClient | None:
    """Return the client when the secret matches; the check takes as long for unknown ids."""
    client = await store.get_client(session, client_id)
    matched = await anyio.to_thread.run_sync(
        verify_secret, client.secret_hash if client else None, secret, limiter=_verification_slots()
    )
    return client if matched else None

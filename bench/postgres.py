"""A scratch PostgreSQL database for one benchmark invocation, and the bulk SQL that seeds it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

T = TypeVar("T")

# Batch GUIDs are md5('bench-' || id) read as a UUID, so SQL, pgbench and the wrk GUID files all
# derive the same GUID from a batch id without a lookup, and the GUIDs are spread like random ones.
GUID_SQL = "md5('bench-' || {id})::uuid"


def batch_guid(batch_id: int) -> uuid.UUID:
    return uuid.UUID(hex=hashlib.md5(f"bench-{batch_id}".encode()).hexdigest())  # noqa: S324


@dataclass(frozen=True)
class ServerAddress:
    """Host, port and user of a PostgreSQL server reached without a password (trust auth)."""

    host: str
    port: int
    user: str

    @classmethod
    def from_url(cls, url: str) -> ServerAddress:
        """Parse `postgresql[+driver]://user@host:port[/database]`; the database is ignored."""
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgresql"):
            raise ValueError(f"{url!r} is not a postgresql:// URL")
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres")

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"


class Sql:
    """One asyncpg connection driven from synchronous benchmark code."""

    def __init__(self, dsn: str) -> None:
        self._runner = asyncio.Runner()
        self._connection: asyncpg.Connection = self._run(asyncpg.connect(dsn))

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    def execute(self, statement: str, *arguments: Any) -> str:
        status: str = self._run(self._connection.execute(statement, *arguments))
        return status

    def fetchval(self, statement: str, *arguments: Any) -> Any:
        return self._run(self._connection.fetchval(statement, *arguments))

    def fetchrow(self, statement: str, *arguments: Any) -> Any:
        return self._run(self._connection.fetchrow(statement, *arguments))

    def close(self) -> None:
        self._run(self._connection.close())
        self._runner.close()


def create_database(server: ServerAddress, name: str) -> None:
    if not name.startswith("bench_"):
        raise ValueError(f"refusing to create {name!r}: benchmark databases are named bench_*")
    admin = Sql(server.dsn("postgres"))
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()


def drop_database(server: ServerAddress, name: str) -> None:
    if not name.startswith("bench_"):
        raise ValueError(f"refusing to drop {name!r}: benchmark databases are named bench_*")
    admin = Sql(server.dsn("postgres"))
    try:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


ORDER_XSD = b"""<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="order">
    <xs:complexType>
      <xs:sequence>
        <xs:element name="id" type="xs:string"/>
        <xs:element name="amount" type="xs:decimal"/>
        <xs:element name="line" maxOccurs="unbounded">
          <xs:complexType>
            <xs:sequence>
              <xs:element name="sku" type="xs:string"/>
              <xs:element name="quantity" type="xs:positiveInteger"/>
              <xs:element name="description" type="xs:string"/>
            </xs:sequence>
          </xs:complexType>
        </xs:element>
      </xs:sequence>
    </xs:complexType>
  </xs:element>
</xs:schema>
"""


def order_xml(number: int, size: int) -> bytes:
    """Return an order document valid against `ORDER_XSD`, padded to exactly `size` bytes."""
    prefix = f"<order><id>ORD-{number}</id><amount>{number % 1000}.50</amount>"
    lines = "".join(
        f"<line><sku>SKU-{i:05d}</sku><quantity>{i + 1}</quantity>"
        f"<description>item {i}</description></line>"
        for i in range(size // 200)
    )
    pad_open = "<line><sku>PAD</sku><quantity>1</quantity><description>"
    pad_close = "</description></line></order>\n"
    filler = size - len(prefix) - len(lines) - len(pad_open) - len(pad_close)
    if filler < 0:
        raise ValueError(f"an order document cannot be as small as {size} bytes")
    return (prefix + lines + pad_open + "x" * filler + pad_close).encode()


def batch_type_configuration() -> dict[str, Any]:
    """Return an Xml batch type configuration that queues batches when their upload completes
    and validates records against `ORDER_XSD`."""
    return {
        "processRecordsWithoutApproval": True,
        "performMerge": False,
        "batchCompletionIgnoresRecordsInError": False,
        "purgeTimeSpan": None,
        "dataType": "Xml",
        "dataSchemaBase64": base64.b64encode(ORDER_XSD).decode(),
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


def seed_tenant(sql: Sql, tenant: uuid.UUID) -> int:
    """Insert the tenant and its one batch type; return the batch type id."""
    sql.execute("INSERT INTO tenants (guid, name, created_at) VALUES ($1, 'bench', now())", tenant)
    return int(
        sql.fetchval(
            "INSERT INTO batch_types (guid, tenant_guid, name, configuration, created_at) "
            "VALUES ($1, $2, 'bench orders', $3::json, now()) RETURNING id",
            uuid.uuid4(),
            tenant,
            json.dumps(batch_type_configuration()),
        )
    )


def seed_batches(
    sql: Sql,
    tenant: uuid.UUID,
    batch_type_id: int,
    first_id: int,
    count: int,
    total_records: int = 0,
) -> None:
    """Insert open (`Creating`) batches with ids `first_id` .. `first_id + count - 1`."""
    sql.execute(
        f"""
        INSERT INTO batches (
            id, guid, tenant_guid, batch_type_id, status, requires_approval,
            ignores_record_errors, has_creation_completed, total_records, completed_records,
            error_records, validated_records, failed_validated_records, has_data, has_log_data,
            has_document_data, pending_chunks, created_at, updated_at)
        SELECT n, {GUID_SQL.format(id="n")}, $1, $2, 'Creating', false, false, false, $5::bigint, 0,
               0, 0, 0, $5::bigint > 0, false, false, 0, now(), now()
        FROM generate_series($3::bigint, $4::bigint) AS n
        """,  # noqa: S608  # GUID_SQL is a constant of this module, not input
        tenant,
        batch_type_id,
        first_id,
        first_id + count - 1,
        total_records,
    )
    sql.execute("SELECT setval('batches_id_seq', (SELECT max(id) FROM batches))")


def seed_records(
    sql: Sql,
    tenant: uuid.UUID,
    batch_id: int,
    count: int,
    payload_bytes: int,
    blob_prefix: str,
) -> None:
    """Insert `count` `Creating` records into a batch whose blob keys are
    `blob_prefix` + the record's position as 32 hex digits. No blob files are written.

    Foreign-key triggers are skipped for this bulk insert (session_replication_role = replica);
    the batch and tenant rows exist, so the rows are still consistent.
    """
    sql.execute("SET session_replication_role = replica")
    try:
        sql.execute(
            """
            INSERT INTO batch_records (
                batch_id, tenant_guid, status, blob_key, payload_bytes, has_log_data,
                has_document_data, is_retrieved, created_at, updated_at)
            SELECT $1, $2, 'Creating', $3 || lpad(to_hex(n), 32, '0'), $4, false, false, false,
                   now(), now()
            FROM generate_series(1, $5::bigint) AS n
            """,
            batch_id,
            tenant,
            blob_prefix,
            payload_bytes,
            count,
        )
    finally:
        sql.execute("SET session_replication_role = DEFAULT")


def seed_inline_records(
    sql: Sql, tenant: uuid.UUID, batch_id: int, payloads: Sequence[bytes]
) -> None:
    """Insert one `Creating` record per payload into a batch, the payload stored in the row as
    an upload stores a payload of at most 64 KiB. Foreign-key triggers are skipped as in
    `seed_records`."""
    sql.execute("SET session_replication_role = replica")
    try:
        sql.execute(
            """
            INSERT INTO batch_records (
                batch_id, tenant_guid, status, payload, payload_bytes, has_log_data,
                has_document_data, is_retrieved, created_at, updated_at)
            SELECT $1, $2, 'Creating', payload, length(payload), false, false, false,
                   now(), now()
            FROM unnest($3::bytea[]) WITH ORDINALITY AS seeded(payload, position)
            ORDER BY position
            """,
            batch_id,
            tenant,
            list(payloads),
        )
    finally:
        sql.execute("SET session_replication_role = DEFAULT")


def wait_until_idle(sql: Sql, timeout: float = 60.0) -> None:
    """Wait until no other session of this database runs a statement or has a transaction open.

    wrk stops counting at its deadline while the server still finishes the requests it had
    read, so seeding or truncating right away would race with them.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy = sql.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state IS NOT NULL AND state <> 'idle'"
        )
        if busy == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{busy} sessions were still busy after {timeout} s")
        time.sleep(0.05)


def sessions_opened(sql: Sql) -> int:
    """Return how many sessions PostgreSQL has counted for this database since it was created.

    A backend reports its session when it first goes idle or exits, so a session opened in the
    last second may not be counted yet.
    """
    return int(
        sql.fetchval("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
    )


def reset_hot_tables(sql: Sql) -> None:
    """Empty batches, records and jobs so that every measurement starts from the same state."""
    wait_until_idle(sql)
    sql.execute("TRUNCATE batch_records, record_log_entries, jobs, batches")


def settle_after_seeding(sql: Sql) -> None:
    """Analyze and checkpoint, so that neither runs in the middle of a measurement."""
    sql.execute("VACUUM ANALYZE batches")
    sql.execute("VACUUM ANALYZE jobs")
    sql.execute("CHECKPOINT")

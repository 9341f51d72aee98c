"""Service configuration, read from `DOCBATCH_*` environment variables."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class UnsafeSettingsError(ValueError):
    """A setting that is acceptable for local use but unsafe for a shared deployment."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOCBATCH_", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./var/docbatch.db"
    storage_url: str = "file://./var/blobs"

    max_record_bytes: int = Field(default=100 * MIB, gt=0)
    max_metadata_bytes: int = Field(default=64 * 1024, gt=0)
    max_schema_bytes: int = Field(default=16 * MIB, gt=0)
    max_records_per_request: int = Field(default=10_000, gt=0)
    # Payloads up to this size are stored in the record's database row, not as blob files.
    inline_payload_max_bytes: int = Field(default=64 * 1024, ge=0)
    # Memory that all uploads of one process may hold in inline payloads until they commit.
    inline_payload_memory_bytes: int = Field(default=256 * MIB, ge=0)
    # A JSON body carries the schema in base64, a third larger than the schema itself.
    max_json_body_bytes: int = Field(default=24 * MIB, gt=0)

    # Tokens issued by this service.
    token_ttl_seconds: int = Field(default=3600, gt=0)
    token_issuer: str = "docbatch"  # noqa: S105  # an issuer name, not a secret
    token_audience: str = "docbatch"  # noqa: S105  # an audience name, not a secret
    signing_key_file: Path | None = None
    token_leeway_seconds: int = Field(default=30, ge=0)

    # An external OpenID Connect identity provider; when `oidc_jwks_url` is set its tokens are
    # accepted instead of the service's own.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_algorithms: list[str] = ["RS256"]
    roles_claim: str = "roles"
    tenants_claim: str = "tenants"

    # Worker and job queue.
    worker_concurrency: int = Field(default=2, gt=0)
    worker_poll_seconds: float = Field(default=0.5, gt=0)
    job_lease_seconds: float = Field(default=30.0, gt=0)
    job_heartbeat_seconds: float = Field(default=10.0, gt=0)
    job_max_attempts: int = Field(default=5, gt=0)
    job_backoff_base_seconds: float = Field(default=2.0, gt=0)
    job_backoff_max_seconds: float = Field(default=300.0, gt=0)
    chunk_size: int = Field(default=500, gt=0)
    records_per_transaction: int = Field(default=250, gt=0)

    # Limits applied when a worker parses a record.
    max_xml_depth: int = Field(default=256, gt=0)

    # Per process: one API process and two workers stay within PostgreSQL's default of 100
    # connections with these.
    db_pool_size: int = Field(default=10, gt=0)
    db_max_overflow: int = Field(default=10, ge=0)
    sqlite_busy_timeout_ms: int = Field(default=30_000, gt=0)

    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        if not value.startswith("file://"):
            raise ValueError(
                f"{value!r} is not supported; use file://PATH "
                "(S3-compatible storage is not built yet)"
            )
        return value

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.job_heartbeat_seconds >= self.job_lease_seconds:
            raise ValueError(
                "DOCBATCH_JOB_HEARTBEAT_SECONDS must be smaller than DOCBATCH_JOB_LEASE_SECONDS, "
                "otherwise leases expire between heartbeats"
            )
        return self

    @cached_property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def is_embedded(self) -> bool:
        """The embedded default: SQLite and local files, one process serving and working."""
        return self.is_sqlite and self.storage_url.startswith("file://")

    @property
    def uses_external_identity_provider(self) -> bool:
        return self.oidc_jwks_url is not None

    def effective_signing_key_file(self) -> Path:
        """Return the signing key path; the embedded default keeps one beside the database."""
        if self.signing_key_file is not None:
            return self.signing_key_file
        return Path("./var/signing-key.pem")

    def check_safe_for_serving(self) -> None:
        """Raise `UnsafeSettingsError` for settings that must not serve requests.

        External identity provider settings must be complete and asymmetric everywhere; outside
        the embedded default, the signing key must be configured explicitly.
        """
        if self.uses_external_identity_provider:
            if not (self.oidc_issuer and self.oidc_audience):
                raise UnsafeSettingsError(
                    "DOCBATCH_OIDC_ISSUER and DOCBATCH_OIDC_AUDIENCE must be set with "
                    "DOCBATCH_OIDC_JWKS_URL, otherwise tokens for other applications are accepted"
                )
            if any(
                alg.lower() == "none" or alg.upper().startswith("HS")
                for alg in self.oidc_algorithms
            ):
                raise UnsafeSettingsError(
                    "DOCBATCH_OIDC_ALGORITHMS may only list asymmetric algorithms "
                    "such as RS256 or ES256"
                )
        elif self.signing_key_file is None and not self.is_embedded:
            raise UnsafeSettingsError(
                "DOCBATCH_SIGNING_KEY_FILE is not set: a deployment on a shared database must "
                "configure a signing key file (or an external identity provider with "
                "DOCBATCH_OIDC_JWKS_URL) so that every API process verifies the same tokens"
            )

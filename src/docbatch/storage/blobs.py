"""The blob store for record payloads (and, later, documents).

`file://PATH` is the embedded default. Writers stream into a temporary file and publish it only
on `commit`, after an fsync, so a reader never sees a partial blob and a crash leaves only a
temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from docbatch.core.errors import InfrastructureError

# Payload bytes are buffered up to this size before one write in a worker thread.
_WRITE_BUFFER_BYTES = 1024 * 1024


class BlobWriter(Protocol):
    key: str
    size: int

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    def new_writer(self, key: str) -> BlobWriter: ...

    def open_for_reading(self, key: str) -> IO[bytes]:
        """Open a blob for blocking reads; call it from a worker thread. Raises
        `FileNotFoundError` for a missing blob and `OSError` when the store fails."""
        ...

    async def delete(self, key: str) -> None: ...


class FileBlobWriter:
    def __init__(self, root: Path, key: str) -> None:
        self.key = key
        self.size = 0
        self._final_path = root / key
        self._temporary_path = root / ".incoming" / f"{uuid.uuid4().hex}.part"
        self._file: IO[bytes] | None = None
        self._buffer = bytearray()

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= _WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        await anyio.to_thread.run_sync(self._write_blocking, data)

    def _write_blocking(self, data: bytes) -> None:
        if self._file is None:
            self._temporary_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._temporary_path.open("wb")
        self._file.write(data)

    def _publish_blocking(self) -> None:
        if self._file is None:
            self._temporary_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._temporary_path.open("wb")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._final_path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary_path.replace(self._final_path)

    async def commit(self) -> None:
        try:
            await self._flush()
            await anyio.to_thread.run_sync(self._publish_blocking)
        except OSError as error:
            await self.abort()
            raise InfrastructureError(f"writing blob {self.key} failed: {error}") from error

    def _abort_blocking(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._file is not None:
            # No file was opened when nothing was written, so there is nothing to remove.
            self._temporary_path.unlink(missing_ok=True)

    async def abort(self) -> None:
        self._buffer.clear()
        await anyio.to_thread.run_sync(self._abort_blocking)


class FileBlobStore:
    """Blobs as files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        # A syntactic check, because resolving the path costs a system call per folder level on
        # every read. Keys are made by `record_blob_key`; the folder's symlinks are the operator's.
        segments = key.split("/")
        if "\x00" in key or "\\" in key or any(part in ("", ".", "..") for part in segments):
            raise ValueError(
                f"blob key {key!r} is invalid: it must be a relative path without '.' or '..'"
            )
        return self.root / key

    def new_writer(self, key: str) -> FileBlobWriter:
        self._path(key)
        return FileBlobWriter(self.root, key)

    def open_for_reading(self, key: str) -> IO[bytes]:
        return self._path(key).open("rb")

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self._path(key).unlink(missing_ok=True))


def open_blob_store(url: str) -> BlobStore:
    """Open the store named by `DOCBATCH_STORAGE_URL`."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise ValueError(
            f"DOCBATCH_STORAGE_URL {url!r} is not supported; use file://PATH "
            "(for example file://./var/blobs or file:///srv/docbatch/blobs)"
        )
    # file://./var/blobs is relative to the working folder; file:///srv/blobs is absolute.
    path = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)
    return FileBlobStore(path)


def record_blob_key(tenant_guid: uuid.UUID, batch_guid: uuid.UUID) -> str:
    return f"records/{tenant_guid}/{batch_guid}/{uuid.uuid4().hex}"

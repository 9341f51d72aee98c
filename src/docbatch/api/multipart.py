"""A streaming `multipart/form-data` reader.

Starlette's form parser spools every file part before the endpoint receives it. Record payloads
of up to 100 MiB must instead flow chunk by chunk into storage, with the size limit enforced as
they arrive, so this module parses the stream itself. Header values are parsed with
python-multipart's `parse_options_header`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from docbatch.core.errors import InvalidRequestError, UnsupportedMediaTypeError


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    file_name: str | None


@dataclass(frozen=True, slots=True)
class PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class PartEnd:
    pass


FormEvent = PartStart | PartData | PartEnd


def multipart_boundary(request: Request) -> bytes:
    """Return the body's boundary; raise 415 for another content type, 400 without one."""
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise UnsupportedMediaTypeError(
            "The body must be multipart/form-data with a RecordData file part; got "
            f"'{content_type.decode('latin-1') or 'no content type'}'."
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequestError("The multipart/form-data content type has no boundary parameter.")
    return boundary


# Limits that bound the memory a malformed body can take before it is rejected.
_MAX_HEADER_BLOCK_BYTES = 16 * 1024
_MAX_BOUNDARY_LINE_BYTES = 1024
_MAX_PREAMBLE_BYTES = 64 * 1024

_PREAMBLE, _BOUNDARY_LINE, _HEADERS, _DATA, _EPILOGUE = range(5)


def _malformed(reason: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The multipart/form-data body is malformed: {reason}. Send a body as RFC 7578 describes."
    )


def _part_start(header_block: bytes) -> PartStart:
    """Parse one part's header lines into its start event."""
    headers: dict[bytes, bytes] = {}
    for line in header_block.split(b"\r\n") if header_block else []:
        header_name, colon, value = line.partition(b":")
        header_name = header_name.strip()
        if (
            not colon
            or not header_name
            or any(character in line for character in (b"\r", b"\n"))
            or any(character in header_name for character in (b" ", b"\t"))
        ):
            raise _malformed(f"the part header line {line[:100]!r} is not 'Name: value'")
        headers[header_name.lower()] = value.strip()
    disposition, options = parse_options_header(headers.get(b"content-disposition"))
    name = options.get(b"name")
    if disposition != b"form-data" or name is None:
        raise InvalidRequestError(
            "A multipart part has no 'Content-Disposition: form-data; name=...' header."
        )
    file_name = options.get(b"filename")
    return PartStart(
        name=name.decode("utf-8", "replace"),
        file_name=file_name.decode("utf-8", "replace") if file_name is not None else None,
    )


class _PartReader:
    """A push parser for a multipart body (RFC 2046 and RFC 7578). It finds delimiters with
    `bytes.find`, so a part costs a few Python operations whatever its size.

    Feed it the body's chunks in order, then call `finish`.
    """

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # A body's first boundary line has no line break before it. The buffer starts with one,
        # so that the same delimiter matches that line and every later one.
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE
        self._preamble_bytes = 0

    def feed(self, chunk: bytes) -> list[FormEvent]:
        if self._state == _EPILOGUE:
            return []
        self._buffer += chunk
        events: list[FormEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """Raise `InvalidRequestError` unless the body ended with its closing boundary."""
        if self._state != _EPILOGUE:
            raise InvalidRequestError(
                "The multipart/form-data body ended before its closing boundary; "
                "send the whole body."
            )

    def _step(self, events: list[FormEvent]) -> bool:
        """Consume what the current state can from the buffer; return whether to go on."""
        buffer = self._buffer
        if self._state == _PREAMBLE:
            found = buffer.find(self._delimiter)
            if found < 0:
                keep = len(self._delimiter) - 1
                self._preamble_bytes += max(len(buffer) - keep, 0)
                if self._preamble_bytes > _MAX_PREAMBLE_BYTES:
                    raise _malformed(f"no boundary in its first {_MAX_PREAMBLE_BYTES} bytes")
                del buffer[: max(len(buffer) - keep, 0)]
                return False
            del buffer[: found + len(self._delimiter)]
            self._state = _BOUNDARY_LINE
            return True
        if self._state == _BOUNDARY_LINE:
            if len(buffer) < 2:
                return False
            if buffer.startswith(b"--"):
                self._state = _EPILOGUE
                buffer.clear()
                return False
            line_end = buffer.find(b"\r\n", 0, _MAX_BOUNDARY_LINE_BYTES + 2)
            if line_end < 0:
                if len(buffer) > _MAX_BOUNDARY_LINE_BYTES:
                    raise _malformed("a boundary line does not end with CRLF")
                return False
            if buffer[:line_end].strip(b" \t"):
                raise _malformed("a boundary is followed by other text on its line")
            del buffer[: line_end + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buffer.startswith(b"\r\n"):
                header_end, block = 0, b""
            else:
                header_end = buffer.find(b"\r\n\r\n", 0, _MAX_HEADER_BLOCK_BYTES + 4)
                if header_end < 0:
                    if len(buffer) > _MAX_HEADER_BLOCK_BYTES:
                        raise _malformed(
                            f"a part's headers are longer than {_MAX_HEADER_BLOCK_BYTES} bytes"
                        )
                    return False
                block = bytes(buffer[:header_end])
                header_end += 2
            events.append(_part_start(block))
            del buffer[: header_end + 2]
            self._state = _DATA
            return True
        if self._state == _DATA:
            found = buffer.find(self._delimiter)
            if found < 0:
                # The end of the buffer may be the start of a delimiter, so it waits for more.
                ready = len(buffer) - (len(self._delimiter) - 1)
                if ready > 0:
                    events.append(PartData(bytes(buffer[:ready])))
                    del buffer[:ready]
                return False
            if found:
                events.append(PartData(bytes(buffer[:found])))
            events.append(PartEnd())
            del buffer[: found + len(self._delimiter)]
            self._state = _BOUNDARY_LINE
            return True
        return False


async def read_form_events(request: Request, boundary: bytes) -> AsyncIterator[FormEvent]:
    """Yield the parts of a multipart body as they arrive: start, data chunks, end.

    `boundary` comes from `multipart_boundary`. Raises `InvalidRequestError` for a malformed body.
    """
    reader = _PartReader(boundary)
    async for chunk in request.stream():
        for event in reader.feed(chunk):
            yield event
    reader.finish()

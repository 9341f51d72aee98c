"""A streaming `multipart/form-data` reader.

Starlette's form parser spools every file part before the endpoint receives it. Record payloads
of up to 100 MiB must instead flow chunk by chunk into the blob store, with the size limit
enforced as they arrive, so this module drives python-multipart's push parser over the stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
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


class _Collector:
    """Turns the parser's callbacks into a list of events, drained after each chunk."""

    def __init__(self) -> None:
        self.events: list[FormEvent] = []
        self.finished = False
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise InvalidRequestError(
                "A multipart part has no 'Content-Disposition: form-data; name=...' header."
            )
        file_name = options.get(b"filename")
        self.events.append(
            PartStart(
                name=name.decode("utf-8", "replace"),
                file_name=file_name.decode("utf-8", "replace") if file_name is not None else None,
            )
        )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(PartData(data[start:end]))

    def on_part_end(self) -> None:
        self.events.append(PartEnd())

    def on_end(self) -> None:
        self.finished = True


async def read_form_events(request: Request, boundary: bytes) -> AsyncIterator[FormEvent]:
    """Yield the parts of a multipart body as they arrive: start, data chunks, end.

    `boundary` comes from `multipart_boundary`. Raises `InvalidRequestError` for a malformed body.
    """
    collector = _Collector()
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": collector.on_part_begin,
            "on_header_field": collector.on_header_field,
            "on_header_value": collector.on_header_value,
            "on_header_end": collector.on_header_end,
            "on_headers_finished": collector.on_headers_finished,
            "on_part_data": collector.on_part_data,
            "on_part_end": collector.on_part_end,
            "on_end": collector.on_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            for event in collector.events:
                yield event
            collector.events.clear()
        parser.finalize()
    except MultipartParseError as error:
        raise InvalidRequestError(f"The multipart/form-data body is malformed: {error}.") from error
    for event in collector.events:
        yield event
    if not collector.finished:
        raise InvalidRequestError(
            "The multipart/form-data body ended before its closing boundary; send the whole body."
        )

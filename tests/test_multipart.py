"""The streaming multipart reader: parts split at any chunk boundary, malformed bodies rejected.

These tests feed bodies to the reader directly, with no database, so each runs once.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from docbatch.api.multipart import PartData, PartEnd, PartStart, read_form_events
from docbatch.core.errors import InvalidRequestError

BOUNDARY = b"docbatch-test-boundary"
# Payload bytes drawn from characters that also make up the delimiter, so that partial
# delimiters appear inside payloads and across chunk edges.
_ALPHABET = b"ab\r\n-" + BOUNDARY


class _ChunkedRequest:
    """A request whose body arrives in chunks of the given sizes."""

    def __init__(self, body: bytes, chunk_sizes: list[int]) -> None:
        self._body = body
        self._chunk_sizes = chunk_sizes

    async def stream(self) -> AsyncIterator[bytes]:
        position = 0
        for size in self._chunk_sizes:
            if position >= len(self._body):
                break
            yield self._body[position : position + size]
            position += size
        if position < len(self._body):
            yield self._body[position:]


def _form(
    parts: list[tuple[bytes, bytes]], *, preamble: bytes = b"", epilogue: bytes = b""
) -> bytes:
    body = preamble
    for file_name, payload in parts:
        body += (
            b"--" + BOUNDARY + b"\r\n"
            b'Content-Disposition: form-data; name="RecordData"; filename="' + file_name + b'"\r\n'
            b"Content-Type: application/xml\r\n\r\n" + payload + b"\r\n"
        )
    return body + b"--" + BOUNDARY + b"--\r\n" + epilogue


async def _read(body: bytes, chunk_sizes: list[int]) -> list[object]:
    """Return the events with each part's data joined into one bytes value."""
    events: list[object] = []
    request = _ChunkedRequest(body, chunk_sizes)
    async for event in read_form_events(request, BOUNDARY):  # type: ignore[arg-type]
        if isinstance(event, PartData):
            if events and isinstance(events[-1], bytes):
                events[-1] += event.data
            else:
                events.append(event.data)
        elif isinstance(event, PartStart):
            events.append((event.name, event.file_name))
        else:
            assert isinstance(event, PartEnd)
            events.append("end")
    return events


async def test_random_chunking_round_trip() -> None:
    generator = random.Random(7)
    for trial in range(500):
        parts = []
        for index in range(generator.randint(1, 4)):
            payload = bytes(generator.choice(_ALPHABET) for _ in range(generator.randint(0, 200)))
            payload = payload.replace(b"\r\n--" + BOUNDARY, b"\r\n--x" + BOUNDARY)
            parts.append((b"r%d.xml" % index, payload))
        body = _form(
            parts,
            preamble=b"a preamble\r\n" if trial % 3 == 0 else b"",
            epilogue=b"an epilogue" if trial % 2 else b"",
        )
        chunk_sizes = [generator.randint(1, 40) for _ in range(len(body))]
        expected: list[object] = []
        for file_name, payload in parts:
            expected.append(("RecordData", file_name.decode()))
            if payload:
                expected.append(payload)
            expected.append("end")

        assert await _read(body, chunk_sizes) == expected, f"trial {trial}"


async def test_part_without_headers_rejected() -> None:
    body = b"--" + BOUNDARY + b"\r\n\r\npayload\r\n--" + BOUNDARY + b"--\r\n"
    with pytest.raises(InvalidRequestError, match="Content-Disposition"):
        await _read(body, [len(body)])


async def test_truncated_body_rejected() -> None:
    body = _form([(b"r.xml", b"<order/>")])
    for end in range(len(body) - len(b"--\r\n")):
        with pytest.raises(InvalidRequestError):
            await _read(body[:end], [5] * len(body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"x" * 70_000, "no boundary"),
        (b"--" + BOUNDARY + b"trailing text\r\n", "other text on its line"),
        (b"--" + BOUNDARY + b"\r\nBroken header line\r\n\r\n", "is not 'Name: value'"),
        (b"--" + BOUNDARY + b"\r\nX-Long: " + b"a" * 20_000, "headers are longer"),
        (b"--" + BOUNDARY + b" " * 2000, "does not end with CRLF"),
        (b"--" + BOUNDARY + b"\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n", "headers are longer"),
        (b"--" + BOUNDARY + b" " * 2000 + b"\r\n", "does not end with CRLF"),
        (b"--" + BOUNDARY + b"\r\nX-A: b\rX-C: d\r\n\r\n", "is not 'Name: value'"),
    ],
    ids=[
        "no-boundary",
        "boundary-suffix",
        "header-colon",
        "header-size",
        "boundary-line",
        "complete-header-size",
        "complete-boundary-line",
        "bare-carriage-return",
    ],
)
@pytest.mark.parametrize("chunk_size", [1000, 1_000_000], ids=["chunks", "one-chunk"])
async def test_malformed_body_rejected(body: bytes, message: str, chunk_size: int) -> None:
    """A limit applies however the body is split into chunks."""
    with pytest.raises(InvalidRequestError, match=message):
        await _read(body, [chunk_size] * (len(body) // chunk_size + 1))


async def test_transport_padding_accepted() -> None:
    body = _form([(b"r.xml", b"<order/>")]).replace(
        b"--" + BOUNDARY + b"\r\n", b"--" + BOUNDARY + b" \t\r\n"
    )
    assert await _read(body, [3] * len(body)) == [("RecordData", "r.xml"), b"<order/>", "end"]

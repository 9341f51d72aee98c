"""Record validators built from a batch type's configuration.

`build_record_validator` is used both by InsertBatchType, to reject a configuration that does not
compile, and by workers, which cache the result per batch type.
"""

from __future__ import annotations

import base64
import binascii
import io
import posixpath
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from jsonschema.protocols import Validator as JsonValidator
from lxml import etree

from docbatch.validation.json import (
    JsonSchemaRejectedError,
    compile_json_schema,
    find_json_schema_roots,
    parse_json,
    validate_json,
)
from docbatch.validation.reference import (
    ReferencePathError,
    XPathCache,
    compile_xpath,
    parse_json_pointer,
    read_json_reference,
    read_xml_reference,
)
from docbatch.validation.xml import (
    XmlRejectedError,
    compile_xsd,
    find_schema_roots,
    parse_document,
    validate_against,
)

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_ARCHIVE_MEMBERS = 2000


class ConfigurationError(ValueError):
    """A batch type configuration that cannot be used; its message names the fix."""


@dataclass(slots=True)
class RecordCheck:
    """The outcome of validating one record: no issues means valid."""

    issues: list[str] = field(default_factory=list)
    reference: str | None = None


class RecordValidator(Protocol):
    def check(self, payload: bytes) -> RecordCheck:
        """Validate one payload; CPU-bound, so call it from a worker thread."""
        ...


class XmlRecordValidator:
    """Validates XML records; safe to share between threads.

    An lxml `XMLSchema` keeps its error log on the object, so two threads validating with one
    schema can read each other's (or a cleared) log. Each thread therefore compiles its own copy
    on first use.
    """

    def __init__(
        self,
        compile_schema: Callable[[], etree.XMLSchema] | None,
        reference_path: str | None,
        max_depth: int,
    ) -> None:
        self._compile_schema = compile_schema
        self._reference_path = reference_path
        self._max_depth = max_depth
        self._per_thread = threading.local()
        if compile_schema is not None:
            # Compile once now, so that a schema that does not compile fails here.
            self._per_thread.schema = compile_schema()

    def _schema(self) -> etree.XMLSchema | None:
        if self._compile_schema is None:
            return None
        schema: etree.XMLSchema | None = getattr(self._per_thread, "schema", None)
        if schema is None:
            schema = self._compile_schema()
            self._per_thread.schema = schema
        return schema

    def _xpath_cache(self) -> XPathCache:
        cache: XPathCache | None = getattr(self._per_thread, "xpath_cache", None)
        if cache is None:
            cache = {}
            self._per_thread.xpath_cache = cache
        return cache

    def check(self, payload: bytes) -> RecordCheck:
        try:
            tree = parse_document(payload, max_depth=self._max_depth)
        except XmlRejectedError as error:
            return RecordCheck([issue.describe() for issue in error.issues])
        schema = self._schema()
        issues = [issue.describe() for issue in validate_against(schema, tree)] if schema else []
        reference = None
        if self._reference_path:
            try:
                reference = read_xml_reference(self._reference_path, tree, self._xpath_cache())
            except ReferencePathError as error:
                issues.append(str(error))
        return RecordCheck(issues, reference)


class JsonRecordValidator:
    def __init__(self, validator: JsonValidator | None, pointer: list[str] | None) -> None:
        self._validator = validator
        self._pointer = pointer

    def check(self, payload: bytes) -> RecordCheck:
        try:
            document = parse_json(payload, "the record")
        except JsonSchemaRejectedError as error:
            return RecordCheck([str(error)])
        issues = validate_json(self._validator, document) if self._validator else []
        reference = (
            read_json_reference(self._pointer, document) if self._pointer is not None else None
        )
        return RecordCheck(issues, reference)


def decode_schema(schema_base64: str, max_bytes: int) -> bytes:
    try:
        content = base64.b64decode(schema_base64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ConfigurationError(f"dataSchemaBase64 is not valid base64: {error}") from error
    if not content:
        raise ConfigurationError(
            "dataSchemaBase64 decodes to an empty schema; send a schema or null"
        )
    if len(content) > max_bytes:
        raise ConfigurationError(
            f"the schema is {len(content)} bytes, over the limit of {max_bytes} bytes"
        )
    return content


def read_archive(content: bytes, suffix: str, max_bytes: int) -> dict[str, bytes]:
    """Read the schema files (by suffix) of a ZIP archive, guarding against ZIP bombs."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except zipfile.BadZipFile as error:
        raise ConfigurationError(f"the schema archive is not a valid ZIP file: {error}") from error
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) > _MAX_ARCHIVE_MEMBERS:
        raise ConfigurationError(
            f"the schema archive has {len(members)} files; "
            f"at most {_MAX_ARCHIVE_MEMBERS} are accepted"
        )
    if sum(info.file_size for info in members) > max_bytes:
        raise ConfigurationError(f"the schema archive unpacks to more than {max_bytes} bytes")
    files: dict[str, bytes] = {}
    for info in members:
        name = posixpath.normpath(info.filename)
        if name.startswith(("/", "../")) or name == "..":
            raise ConfigurationError(
                f"the schema archive member {info.filename!r} points outside the archive"
            )
        if not name.lower().endswith(suffix):
            continue
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ConfigurationError(
                f"the schema archive member {name} unpacks to more than {max_bytes} bytes"
            )
        files[name] = data
    if not files:
        raise ConfigurationError(f"the schema archive contains no {suffix} file")
    return files


def _single_root(roots: list[str]) -> str:
    if len(roots) != 1:
        candidates = ", ".join(roots) or "none"
        raise ConfigurationError(
            "the schema archive must have exactly one root schema (a file no other file imports "
            f"or includes); candidates: {candidates}"
        )
    return roots[0]


def _build_xml(
    content: bytes | None, reference_path: str | None, max_depth: int, max_bytes: int
) -> XmlRecordValidator:
    if reference_path is not None:
        try:
            compile_xpath(reference_path)
        except ReferencePathError as error:
            raise ConfigurationError(f"referenceDataPath {error}") from error
    if content is None:
        return XmlRecordValidator(None, reference_path, max_depth)
    if content.startswith(_ZIP_MAGIC):
        files = read_archive(content, ".xsd", max_bytes)
        roots, parse_errors = find_schema_roots(files)
        if parse_errors:
            name, message = next(iter(parse_errors.items()))
            raise ConfigurationError(f"the schema file {name} is not usable: {message}")
        root = _single_root(roots)

        def compile_schema() -> etree.XMLSchema:
            return compile_xsd(files[root], archive=files, name=root)
    else:

        def compile_schema() -> etree.XMLSchema:
            return compile_xsd(content)

    try:
        return XmlRecordValidator(compile_schema, reference_path, max_depth)
    except XmlRejectedError as error:
        raise ConfigurationError(f"the XML Schema does not compile: {error}") from error


def _build_json(
    content: bytes | None, reference_path: str | None, max_bytes: int
) -> JsonRecordValidator:
    pointer = None
    if reference_path is not None:
        try:
            pointer = parse_json_pointer(reference_path)
        except ReferencePathError as error:
            raise ConfigurationError(f"referenceDataPath {error}") from error
    validator = None
    if content is not None:
        try:
            if content.startswith(_ZIP_MAGIC):
                files = read_archive(content, ".json", max_bytes)
                documents = {
                    name: parse_json(data, f"the schema file {name}")
                    for name, data in files.items()
                }
                root = _single_root(find_json_schema_roots(documents))
                validator = compile_json_schema(documents[root], archive=documents, name=root)
            else:
                validator = compile_json_schema(parse_json(content, "the JSON Schema"))
        except JsonSchemaRejectedError as error:
            raise ConfigurationError(str(error)) from error
    return JsonRecordValidator(validator, pointer)


def build_record_validator(
    data_type: str,
    schema_base64: str | None,
    reference_path: str | None,
    *,
    max_xml_depth: int,
    max_schema_bytes: int,
) -> RecordValidator:
    """Compile a configuration's schema and reference path; raise `ConfigurationError`."""
    content = decode_schema(schema_base64, max_schema_bytes) if schema_base64 is not None else None
    if data_type == "Xml":
        return _build_xml(content, reference_path, max_xml_depth, max_schema_bytes)
    if data_type == "Json":
        return _build_json(content, reference_path, max_schema_bytes)
    raise ConfigurationError(f"dataType '{data_type}' is unknown; use Xml or Json")

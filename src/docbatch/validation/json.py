"""JSON Schema compilation (single documents and ZIP schema sets) and record validation."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import regex
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing.jsonschema import DRAFT202012

# Schema files get URIs under this base so that relative `$ref`s resolve between them. The
# registry has no retrieve function, so no URI (this one included) is read from disk or network.
_ARCHIVE_URL_PREFIX = "file:///schema-archive/"
# Python's re has no time limit, so a backtracking pattern such as ^(a+)+$ could hold a worker
# (and the GIL) for hours on a short record. Patterns therefore run on the regex package with
# this limit.
PATTERN_TIMEOUT_SECONDS = 1.0
# Validation stops listing errors past this count; the record has failed either way.
MAX_REPORTED_ERRORS = 100


class JsonSchemaRejectedError(Exception):
    pass


def parse_json(content: bytes, description: str) -> Any:
    """Parse JSON text; raise `JsonSchemaRejectedError` naming `description` when it is invalid."""
    try:
        return json.loads(content, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        # ValueError covers malformed text, bad UTF-8, NaN and Infinity (not JSON under RFC 8259)
        # and integers past Python's digit limit; RecursionError covers deep nesting.
        raise JsonSchemaRejectedError(f"{description} is not valid JSON: {error}") from error


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def find_json_schema_roots(documents: dict[str, Any]) -> list[str]:
    """Return the schema files that no other file of the set references with `$ref`."""
    names_by_id = {
        document["$id"].rstrip("#"): name
        for name, document in documents.items()
        if isinstance(document, dict) and isinstance(document.get("$id"), str)
    }
    referenced: set[str] = set()
    for name, document in documents.items():
        for reference in _references(document):
            target = reference.split("#", 1)[0]
            if not target:
                continue
            if target in names_by_id:
                referenced.add(names_by_id[target])
            elif "://" not in target:
                referenced.add(posixpath.normpath(posixpath.join(posixpath.dirname(name), target)))
    return sorted(name for name in documents if name not in referenced)


def compile_json_schema(
    schema: Any, *, archive: dict[str, Any] | None = None, name: str = "schema.json"
) -> Validator:
    """Check the schema against its metaschema and return a validator that resolves `$ref`
    only within the document or the archive. Raise `JsonSchemaRejectedError`."""
    if not isinstance(schema, dict | bool):
        raise JsonSchemaRejectedError("the JSON Schema must be an object or a boolean")
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    try:
        validator_class.check_schema(schema)  # type: ignore[arg-type]  # booleans are schemas too
    except RecursionError as error:
        raise JsonSchemaRejectedError("the JSON Schema nests too deeply to be checked") from error
    except SchemaError as error:
        path = "/" + "/".join(str(part) for part in error.absolute_path)
        raise JsonSchemaRejectedError(
            f"the JSON Schema is invalid at {path}: {error.message}"
        ) from error

    documents = archive or {name: schema}
    registry: referencing.Registry[Any] = referencing.Registry()
    for member_name, document in documents.items():
        resource = referencing.Resource.from_contents(document, default_specification=DRAFT202012)
        registry = registry.with_resource(_ARCHIVE_URL_PREFIX + member_name, resource)
        if isinstance(document, dict) and isinstance(document.get("$id"), str):
            registry = registry.with_resource(document["$id"], resource)
    root_schema = schema
    if isinstance(schema, dict) and "$id" not in schema:
        root_schema = {**schema, "$id": _ARCHIVE_URL_PREFIX + name}
    registry = registry.crawl()
    _check_references_resolve(registry, documents)
    bounded_class = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        validator_class, {"pattern": _pattern, "patternProperties": _pattern_properties}
    )
    validator: Validator = bounded_class(root_schema, registry=registry)
    return validator


def _search(pattern: str, text: str) -> bool | None:
    """Search with a time limit; None means the limit was reached."""
    try:
        return regex.search(pattern, text, timeout=PATTERN_TIMEOUT_SECONDS) is not None
    except TimeoutError:
        return None


def _pattern(
    validator: Validator, pattern: str, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    matched = _search(pattern, instance)
    if matched is None:
        yield ValidationError(
            f"matching against {pattern!r} took longer than {PATTERN_TIMEOUT_SECONDS} s"
        )
    elif not matched:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            matched = _search(pattern, name)
            if matched is None:
                yield ValidationError(
                    f"matching property {name!r} against {pattern!r} took longer than "
                    f"{PATTERN_TIMEOUT_SECONDS} s"
                )
            elif matched:
                yield from validator.descend(  # type: ignore[attr-defined]
                    value, subschema, path=name, schema_path=pattern
                )


def _check_references_resolve(
    registry: referencing.Registry[Any], documents: dict[str, Any]
) -> None:
    for member_name, document in documents.items():
        base = (
            document.get("$id", _ARCHIVE_URL_PREFIX + member_name)
            if isinstance(document, dict)
            else _ARCHIVE_URL_PREFIX + member_name
        )
        resolver = registry.resolver(base_uri=base)
        for reference in _references(document):
            try:
                resolver.lookup(reference)
            except referencing.exceptions.Unresolvable as error:
                raise JsonSchemaRejectedError(
                    f"the JSON Schema reference {reference!r} in {member_name} does not resolve "
                    "inside the schema set; remote references are not fetched"
                ) from error


def validate_json(validator: Validator, instance: Any) -> list[str]:
    """Return one message per validation error, each starting with its JSON Pointer."""
    messages: list[str] = []
    for error in validator.iter_errors(instance):
        pointer = "".join(
            "/" + str(part).replace("~", "~0").replace("/", "~1") for part in error.absolute_path
        )
        messages.append(f"at {pointer or '/'}: {error.message}")
        if len(messages) >= MAX_REPORTED_ERRORS:
            messages.append(f"more than {MAX_REPORTED_ERRORS} errors; the rest are not listed")
            break
    return messages

"""Reading a record's reference with an XPath 1.0 expression (XML) or a JSON Pointer (JSON)."""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from docbatch.core.text import storable

# The column that stores a record's reference holds this many characters.
MAX_REFERENCE_LENGTH = 400


class ReferencePathError(ValueError):
    pass


# A namespace prefix in an XPath name test: `rsm:` in `/rsm:Invoice`, but not the `::` of an axis.
_PREFIX = re.compile(r"(?<![\w.:-])([A-Za-z_][\w.-]*):(?!:)")
_PROBE_DOCUMENT = etree.fromstring(b"<probe/>")


def compile_xpath(expression: str) -> etree.XPath:
    """Compile an XPath 1.0 expression and evaluate it once on an empty document.

    lxml accepts some malformed expressions (`count(`, an unknown function) at compile time and
    fails only on evaluation, so the probe evaluation catches those too. Prefixes are bound to
    placeholder namespaces there because records supply the real ones.
    """
    try:
        compiled = etree.XPath(expression)
        namespaces = {prefix: f"urn:probe:{prefix}" for prefix in _PREFIX.findall(expression)}
        etree.XPath(expression, namespaces=namespaces)(_PROBE_DOCUMENT)
    except etree.XPathError as error:
        raise ReferencePathError(
            f"'{expression}' is not a valid XPath 1.0 expression: {error}"
        ) from error
    return compiled


# Compiled reference paths by the namespace declarations they were compiled with.
XPathCache = dict[tuple[tuple[str, str], ...], etree.XPath]
_MAX_CACHED_NAMESPACE_SETS = 16


def read_xml_reference(
    expression: str, tree: etree._ElementTree, cache: XPathCache | None = None
) -> str | None:
    """Evaluate with the namespace prefixes declared on the record's root element.

    `cache` keeps the compiled expression for the next record with the same declarations. Give
    each thread its own cache, as the validators do with schemas, so that no thread uses an XPath
    object that another thread is evaluating.
    Raises `ReferencePathError` when the expression cannot be evaluated on this record.
    """
    root = tree.getroot()
    namespaces = {prefix: uri for prefix, uri in root.nsmap.items() if prefix}
    key = tuple(sorted(namespaces.items()))
    try:
        evaluate = cache.get(key) if cache is not None else None
        if evaluate is None:
            evaluate = etree.XPath(expression, namespaces=namespaces)
            if cache is not None and len(cache) < _MAX_CACHED_NAMESPACE_SETS:
                cache[key] = evaluate
        result: Any = evaluate(root)
    except etree.XPathError as error:
        raise ReferencePathError(
            f"the reference path '{expression}' failed on this record: {error}"
        ) from error
    if isinstance(result, list):
        if not result:
            return None
        first = result[0]
        text = str(first.xpath("string(.)")) if isinstance(first, etree._Element) else str(first)
    elif isinstance(result, bool):
        text = "true" if result else "false"
    elif isinstance(result, float):
        text = str(int(result)) if result.is_integer() else str(result)
    elif isinstance(result, bytes):
        text = result.decode("utf-8", "replace")
    else:
        text = str(result)
    return _clip(text.strip()) or None


def parse_json_pointer(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON Pointer into unescaped tokens."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ReferencePathError(
            f"'{pointer}' is not a JSON Pointer: it must be empty or start with '/'"
        )
    tokens = []
    for raw in pointer[1:].split("/"):
        if "~" in raw.replace("~0", "").replace("~1", ""):
            raise ReferencePathError(
                f"'{pointer}' is not a JSON Pointer: '~' must be followed by 0 or 1"
            )
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def read_json_reference(tokens: list[str], document: Any) -> str | None:
    node = document
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    if node is None or isinstance(node, dict | list):
        return None
    if isinstance(node, bool):
        return "true" if node else "false"
    return _clip(str(node))


def _clip(text: str) -> str:
    # A JSON string may carry \u0000 or a lone surrogate escape, which no database column stores.
    return storable(text)[:MAX_REFERENCE_LENGTH]

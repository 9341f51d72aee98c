"""Reading a record's reference with XPath: compiled expressions are reused per namespace set."""

from __future__ import annotations

import pytest
from lxml import etree

from docbatch.validation.reference import ReferencePathError, XPathCache, read_xml_reference


def _tree(text: bytes) -> etree._ElementTree:
    return etree.ElementTree(etree.fromstring(text))


def test_cache_keyed_by_namespaces() -> None:
    cache: XPathCache = {}
    first = _tree(b'<a:order xmlns:a="urn:one"><a:id>1</a:id></a:order>')
    second = _tree(b'<a:order xmlns:a="urn:two"><a:id>2</a:id></a:order>')
    third = _tree(b'<a:order xmlns:a="urn:one"><a:id>3</a:id></a:order>')

    assert read_xml_reference("/a:order/a:id", first, cache) == "1"
    assert read_xml_reference("/a:order/a:id", second, cache) == "2"
    assert read_xml_reference("/a:order/a:id", third, cache) == "3"
    assert len(cache) == 2


def test_undeclared_prefix_fails_record() -> None:
    cache: XPathCache = {}
    tree = _tree(b"<order><id>1</id></order>")
    with pytest.raises(ReferencePathError, match="failed on this record"):
        read_xml_reference("/a:order/a:id", tree, cache)
    assert read_xml_reference("/order/id", tree) == "1"


def test_cache_size_bounded() -> None:
    cache: XPathCache = {}
    for number in range(40):
        tree = _tree(b'<a:order xmlns:a="urn:%d"><a:id>%d</a:id></a:order>' % (number, number))
        assert read_xml_reference("/a:order/a:id", tree, cache) == str(number)
    assert len(cache) == 16

"""InsertBatchType, GetBatchType and GetBatchTypes."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from httpx import Response

from tests.support import (
    SIMPLE_JSON_SCHEMA,
    SIMPLE_XSD,
    Api,
    TokenFactory,
    assert_envelope_error,
    configuration,
)

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CONFIGURATION_FIELDS = [
    "processRecordsWithoutApproval",
    "performMerge",
    "batchCompletionIgnoresRecordsInError",
    "purgeTimeSpan",
    "dataType",
    "dataSchemaBase64",
    "referenceDataPath",
    "templateGuid",
    "templateVersion",
    "chainGuid",
    "chainVersion",
    "workflowProcessGuid",
    "workflowProcessVersion",
    "timeout",
    "parameters",
]
XSD_TEMPLATE = (
    '<?xml version="1.0"?>\n'
    '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n{body}\n</xs:schema>\n'
)


def _base64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _xsd(body: str) -> bytes:
    return XSD_TEMPLATE.format(body=body).encode()


def _json_configuration(schema: Any, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "dataType": "Json",
        "dataSchemaBase64": _base64(json.dumps(schema).encode()),
        "referenceDataPath": "/id",
    }
    fields.update(overrides)
    return configuration(**fields)


async def _insert(api: Api, body: Any) -> Response:
    return await api.call("POST", "InsertBatchType", json=body)


async def _assert_rejected(api: Api, response: Response, *fragments: str) -> str:
    """Check the 400 envelope and that no batch type was stored."""
    message = assert_envelope_error(response, 400, *fragments)
    listing = await api.call("GET", "GetBatchTypes")
    assert listing.json()["result"] == []
    return message


# --- InsertBatchType success ------------------------------------------------------------------


async def test_insert_result_shape(api: Api) -> None:
    sent = configuration(
        purgeTimeSpan="01.00:00:00.0000000",
        timeout="0:05:00",
        referenceDataPath="/order/id",
        chainGuid=str(uuid.uuid4()),
        chainVersion=3,
        parameters={"currency": "EUR"},
    )
    response = await _insert(api, {"name": "orders", "configuration": sent})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["isSuccess", "error", "result"]
    assert body["isSuccess"] is True
    assert body["error"] is None
    result = body["result"]
    assert list(result) == ["batchTypeGuid", "name", "configuration"]
    assert GUID.match(result["batchTypeGuid"])
    assert result["name"] == "orders"
    stored = result["configuration"]
    assert list(stored) == CONFIGURATION_FIELDS
    assert stored["purgeTimeSpan"] == "1.00:00:00"
    assert stored["timeout"] == "00:05:00"
    assert stored["dataType"] == "Xml"
    assert stored["dataSchemaBase64"] == sent["dataSchemaBase64"]
    assert stored["referenceDataPath"] == "/order/id"
    assert stored["chainGuid"] == sent["chainGuid"]
    assert stored["chainVersion"] == 3
    assert stored["parameters"] == {"currency": "EUR"}


async def test_insert_fraction_duration(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(timeout="00:00:01.5")}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["configuration"]["timeout"] == "00:00:01.5000000"


async def test_insert_without_schema(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(dataSchemaBase64=None)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["configuration"]["dataSchemaBase64"] is None


async def test_insert_single_xsd(api: Api) -> None:
    response = await _insert(api, {"name": "orders", "configuration": configuration()})
    assert response.status_code == 200, response.text
    stored = response.json()["result"]["configuration"]
    assert base64.b64decode(stored["dataSchemaBase64"]) == SIMPLE_XSD


async def test_insert_zip_schema_set(api: Api, examples_dir: Path) -> None:
    archive = (examples_dir / "xml" / "schema.zip").read_bytes()
    sent = configuration(
        dataSchemaBase64=_base64(archive),
        referenceDataPath="/rsm:CrossIndustryInvoice/rsm:ExchangedDocument/ram:ID",
    )
    response = await _insert(api, {"name": "factur-x", "configuration": sent})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["configuration"]["dataSchemaBase64"] == _base64(archive)


async def test_insert_zip_nested_folders(api: Api) -> None:
    common = _xsd('<xs:simpleType name="Code"><xs:restriction base="xs:string"/></xs:simpleType>')
    root = _xsd(
        '<xs:include schemaLocation="types/common.xsd"/>\n<xs:element name="code" type="Code"/>'
    )
    archive = _zip({"main.xsd": root, "types/common.xsd": common})
    response = await _insert(
        api, {"name": "codes", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    assert response.status_code == 200, response.text


async def test_insert_json_schema(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": _json_configuration(SIMPLE_JSON_SCHEMA)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["result"]["configuration"]["dataType"] == "Json"


async def test_insert_examples_json_schema(api: Api, examples_dir: Path) -> None:
    schema = (examples_dir / "json" / "schema.json").read_bytes()
    sent = configuration(
        dataType="Json", dataSchemaBase64=_base64(schema), referenceDataPath="/doi"
    )
    response = await _insert(api, {"name": "citations", "configuration": sent})
    assert response.status_code == 200, response.text


# --- InsertBatchType errors -------------------------------------------------------------------


async def test_insert_zip_two_roots(api: Api) -> None:
    archive = _zip(
        {
            "first.xsd": _xsd('<xs:element name="a" type="xs:string"/>'),
            "second.xsd": _xsd('<xs:element name="b" type="xs:string"/>'),
        }
    )
    response = await _insert(
        api, {"name": "two", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, "first.xsd", "second.xsd")


async def test_insert_zip_no_xsd(api: Api) -> None:
    archive = _zip({"README.txt": b"no schema here"})
    response = await _insert(
        api, {"name": "none", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, ".xsd")


async def test_insert_zip_include_outside(api: Api) -> None:
    root = _xsd(
        '<xs:include schemaLocation="../outside.xsd"/>\n<xs:element name="a" type="xs:string"/>'
    )
    archive = _zip({"main.xsd": root})
    response = await _insert(
        api, {"name": "escape", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, "outside.xsd")


async def test_insert_zip_remote_import(api: Api) -> None:
    root = _xsd(
        '<xs:import namespace="urn:remote" schemaLocation="http://example.com/remote.xsd"/>\n'
        '<xs:element name="a" type="xs:string"/>'
    )
    archive = _zip({"main.xsd": root})
    response = await _insert(
        api, {"name": "remote", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, "http://example.com/remote.xsd")


async def test_insert_zip_member_outside(api: Api) -> None:
    archive = _zip({"../evil.xsd": _xsd('<xs:element name="a" type="xs:string"/>')})
    response = await _insert(
        api, {"name": "evil", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, "../evil.xsd")


async def test_insert_zip_corrupt(api: Api) -> None:
    corrupt = b"PK\x03\x04" + b"\x00" * 40
    response = await _insert(
        api, {"name": "corrupt", "configuration": configuration(dataSchemaBase64=_base64(corrupt))}
    )
    await _assert_rejected(api, response, "ZIP")


async def test_insert_zip_too_many_members(api: Api) -> None:
    archive = _zip({f"part-{index}.xsd": b"<a/>" for index in range(2001)})
    response = await _insert(
        api, {"name": "many", "configuration": configuration(dataSchemaBase64=_base64(archive))}
    )
    await _assert_rejected(api, response, "2001")


async def test_insert_xsd_external_entity(api: Api) -> None:
    schema = (
        b'<?xml version="1.0"?>\n'
        b'<!DOCTYPE xs:schema [<!ENTITY secret SYSTEM "file:///etc/hostname">]>\n'
        b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">\n'
        b'<xs:element name="a" type="xs:string" fixed="&secret;"/>\n</xs:schema>\n'
    )
    response = await _insert(
        api, {"name": "xxe", "configuration": configuration(dataSchemaBase64=_base64(schema))}
    )
    await _assert_rejected(api, response, "secret")


async def test_insert_xsd_not_compiling(api: Api) -> None:
    broken = _xsd('<xs:element name="a" type="xs:nonexistent"/>')
    response = await _insert(
        api, {"name": "broken", "configuration": configuration(dataSchemaBase64=_base64(broken))}
    )
    await _assert_rejected(api, response, "nonexistent")


async def test_insert_xsd_not_well_formed(api: Api) -> None:
    response = await _insert(
        api,
        {"name": "broken", "configuration": configuration(dataSchemaBase64=_base64(b"<xs:schema"))},
    )
    await _assert_rejected(api, response, "line 1")


async def test_insert_invalid_base64(api: Api) -> None:
    response = await _insert(
        api, {"name": "broken", "configuration": configuration(dataSchemaBase64="not base64!")}
    )
    await _assert_rejected(api, response, "base64")


async def test_insert_empty_schema(api: Api) -> None:
    response = await _insert(
        api, {"name": "empty", "configuration": configuration(dataSchemaBase64="")}
    )
    await _assert_rejected(api, response)


async def test_insert_json_schema_invalid(api: Api) -> None:
    response = await _insert(
        api, {"name": "broken", "configuration": _json_configuration({"type": "nope"})}
    )
    await _assert_rejected(api, response, "nope")


async def test_insert_json_schema_not_json(api: Api) -> None:
    sent = configuration(dataType="Json", dataSchemaBase64=_base64(b"{not json"))
    response = await _insert(api, {"name": "broken", "configuration": sent})
    await _assert_rejected(api, response, "JSON")


async def test_insert_json_remote_ref(api: Api) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    response = await _insert(api, {"name": "remote", "configuration": _json_configuration(schema)})
    await _assert_rejected(api, response, "https://example.com/a.json")


async def test_insert_json_schema_deeply_nested(api: Api) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(150):
        schema = {"type": "object", "properties": {"child": schema}}
    response = await _insert(api, {"name": "deep", "configuration": _json_configuration(schema)})
    await _assert_rejected(api, response)


async def test_insert_json_zip_schema_set(api: Api) -> None:
    root = {"type": "object", "properties": {"id": {"$ref": "definitions/id.json"}}}
    archive = _zip(
        {
            "root.json": json.dumps(root).encode(),
            "definitions/id.json": json.dumps({"type": "string"}).encode(),
        }
    )
    encoded = _base64(archive)
    sent = configuration(dataType="Json", dataSchemaBase64=encoded, referenceDataPath="/id")
    response = await _insert(api, {"name": "zipped", "configuration": sent})
    assert response.status_code == 200, response.text


async def test_insert_json_zip_two_roots(api: Api) -> None:
    archive = _zip(
        {
            "first.json": json.dumps({"type": "object"}).encode(),
            "second.json": json.dumps({"type": "string"}).encode(),
        }
    )
    encoded = _base64(archive)
    sent = configuration(dataType="Json", dataSchemaBase64=encoded, referenceDataPath="/id")
    response = await _insert(api, {"name": "two", "configuration": sent})
    await _assert_rejected(api, response, "first.json", "second.json")


async def test_insert_unknown_data_type(api: Api) -> None:
    response = await _insert(api, {"name": "csv", "configuration": configuration(dataType="Csv")})
    await _assert_rejected(api, response, "dataType")


@pytest.mark.parametrize("field", ["purgeTimeSpan", "timeout"])
@pytest.mark.parametrize("value", ["5 minutes", "25:00:00", "00:60:00", "-00:05:00", ""])
async def test_insert_invalid_duration(api: Api, field: str, value: str) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(**{field: value})}
    )
    await _assert_rejected(api, response, field)


async def test_insert_duration_not_string(api: Api) -> None:
    response = await _insert(api, {"name": "orders", "configuration": configuration(timeout=300)})
    await _assert_rejected(api, response, "timeout")


async def test_insert_invalid_xpath(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(referenceDataPath="//[")}
    )
    await _assert_rejected(api, response, "referenceDataPath", "//[")


async def test_insert_invalid_json_pointer(api: Api) -> None:
    sent = _json_configuration(SIMPLE_JSON_SCHEMA, referenceDataPath="abc")
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, "referenceDataPath", "abc")


async def test_insert_xpath_unclosed_call(api: Api) -> None:
    # libxml2 compiles "count(" without error and fails only when a record is evaluated.
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(referenceDataPath="count(")}
    )
    await _assert_rejected(api, response, "referenceDataPath", "count(")


async def test_insert_template_guid(api: Api) -> None:
    template = str(uuid.uuid4())
    sent = configuration(templateGuid=template, templateVersion=1)
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, template)


async def test_insert_merge_without_template(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(performMerge=True)}
    )
    await _assert_rejected(api, response, "performMerge")


async def test_insert_unknown_field(api: Api) -> None:
    response = await _insert(
        api, {"name": "orders", "configuration": configuration(), "colour": "blue"}
    )
    await _assert_rejected(api, response, "colour")


async def test_insert_unknown_configuration_field(api: Api) -> None:
    response = await _insert(api, {"name": "orders", "configuration": configuration(maxRecords=5)})
    await _assert_rejected(api, response, "maxRecords")


async def test_insert_flag_not_boolean(api: Api) -> None:
    sent = configuration(processRecordsWithoutApproval="yes")
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, "processRecordsWithoutApproval")


async def test_insert_non_json_body(api: Api) -> None:
    response = await api.call(
        "POST",
        "InsertBatchType",
        content=b"name=orders",
        headers={"Content-Type": "application/json"},
    )
    await _assert_rejected(api, response, "JSON")


async def test_insert_body_not_object(api: Api) -> None:
    response = await _insert(api, ["orders"])
    await _assert_rejected(api, response)


async def test_insert_no_body(api: Api) -> None:
    response = await api.call("POST", "InsertBatchType")
    # The message must name the missing JSON body, not only "the request".
    await _assert_rejected(api, response, "body")


async def test_insert_wrong_content_type(api: Api) -> None:
    response = await api.call(
        "POST",
        "InsertBatchType",
        content=json.dumps({"name": "orders", "configuration": configuration()}).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert_envelope_error(response, 415)
    listing = await api.call("GET", "GetBatchTypes")
    assert listing.json()["result"] == []


async def test_insert_missing_name(api: Api) -> None:
    response = await _insert(api, {"configuration": configuration()})
    await _assert_rejected(api, response, "name")


async def test_insert_empty_name(api: Api) -> None:
    response = await _insert(api, {"name": "", "configuration": configuration()})
    await _assert_rejected(api, response, "name")


async def test_insert_name_too_long(api: Api) -> None:
    response = await _insert(api, {"name": "n" * 201, "configuration": configuration()})
    await _assert_rejected(api, response, "name")


async def test_insert_parameters_not_strings(api: Api) -> None:
    sent = configuration(parameters={"copies": 2})
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, "parameters")


async def test_insert_chain_guid_malformed(api: Api) -> None:
    sent = configuration(chainGuid="chain-1")
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, "chainGuid")


async def test_insert_name_with_nul(api: Api) -> None:
    # PostgreSQL text columns cannot store NUL, so both backends must reject it alike.
    response = await _insert(api, {"name": "order\u0000s", "configuration": configuration()})
    await _assert_rejected(api, response, "name")


async def test_insert_unregistered_tenant(api: Api, tokens: TokenFactory) -> None:
    unregistered = uuid.uuid4()
    stranger = Api(api.client, unregistered, tokens.for_tenant(unregistered))
    response = await _insert(stranger, {"name": "orders", "configuration": configuration()})
    assert response.status_code in (403, 404), response.text
    body = response.json()
    assert body["isSuccess"] is False
    assert str(unregistered) in body["error"]
    assert body["result"] is None


async def test_insert_missing_configuration(api: Api) -> None:
    response = await _insert(api, {"name": "orders"})
    await _assert_rejected(api, response, "configuration")


async def test_insert_missing_data_type(api: Api) -> None:
    sent = configuration()
    del sent["dataType"]
    response = await _insert(api, {"name": "orders", "configuration": sent})
    await _assert_rejected(api, response, "dataType")


# --- GetBatchType and GetBatchTypes -----------------------------------------------------------


async def test_get_returns_inserted(api: Api) -> None:
    inserted = await _insert(api, {"name": "orders", "configuration": configuration()})
    expected = inserted.json()["result"]
    response = await api.call("GET", "GetBatchType", {"batchTypeGuid": expected["batchTypeGuid"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"isSuccess": True, "error": None, "result": expected}
    assert list(response.json()["result"]["configuration"]) == CONFIGURATION_FIELDS


async def test_get_upper_case_guid(api: Api) -> None:
    guid = await api.insert_batch_type()
    response = await api.call("GET", "GetBatchType", {"batchTypeGuid": guid.upper()})
    assert response.status_code == 200, response.text
    assert response.json()["result"]["batchTypeGuid"] == guid


async def test_get_unknown(api: Api) -> None:
    missing = str(uuid.uuid4())
    response = await api.call("GET", "GetBatchType", {"batchTypeGuid": missing})
    assert_envelope_error(response, 404, missing)


async def test_get_malformed_guid(api: Api) -> None:
    response = await api.call("GET", "GetBatchType", {"batchTypeGuid": "12345"})
    assert_envelope_error(response, 400, "batchTypeGuid")


async def test_get_missing_guid(api: Api) -> None:
    response = await api.call("GET", "GetBatchType")
    assert_envelope_error(response, 400, "batchTypeGuid")


async def test_get_other_tenant(api: Api, tokens: TokenFactory, other_tenant: uuid.UUID) -> None:
    guid = await api.insert_batch_type()
    other = Api(api.client, other_tenant, tokens.for_tenant(other_tenant))
    response = await other.call("GET", "GetBatchType", {"batchTypeGuid": guid})
    assert_envelope_error(response, 404, guid)


async def test_list_empty(api: Api) -> None:
    response = await api.call("GET", "GetBatchTypes")
    assert response.status_code == 200, response.text
    assert response.json() == {"isSuccess": True, "error": None, "result": []}


async def test_list_only_own_tenant(
    api: Api, tokens: TokenFactory, other_tenant: uuid.UUID
) -> None:
    first = await api.insert_batch_type("first")
    second = await api.insert_batch_type("second")
    other = Api(api.client, other_tenant, tokens.for_tenant(other_tenant))
    foreign = await other.insert_batch_type("foreign")

    own_listing = (await api.call("GET", "GetBatchTypes")).json()["result"]
    assert [item["batchTypeGuid"] for item in own_listing] == [first, second]
    assert [item["name"] for item in own_listing] == ["first", "second"]
    assert all(list(item["configuration"]) == CONFIGURATION_FIELDS for item in own_listing)

    other_listing = (await other.call("GET", "GetBatchTypes")).json()["result"]
    assert [item["batchTypeGuid"] for item in other_listing] == [foreign]

"""Schema discovery: ``EntityDefinitions``, their ``Attributes`` and ``Keys``, and ``$metadata``.

Covers what clients read (``dynamics-web-api.md`` §9 and ``independent-clients.md``): the
entity-set lookup of powerplatform-dataverse-client (``$filter=LogicalName eq 'x'``), its picklist
label query (``/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata`` with
``$expand=OptionSet``), and Airbyte's ``$expand=Attributes($select=...)`` discovery. Writes to
table definitions are in :mod:`emulators.dynamics.customize`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from emulators.dynamics.errors import ODataError
from emulators.dynamics.odata import evaluate, parse_filter, parse_key, split_top_level
from emulators.dynamics.schema import (
    BOOLEAN,
    CHOICE_TYPES,
    DATETIME,
    DECIMAL,
    LOOKUP_TYPES,
    MEMO,
    METADATA_NAMESPACE,
    MONEY,
    STRING,
    Attribute,
    Table,
    attribute_metadata_id,
)
from emulators.dynamics.security import privilege_definitions

if TYPE_CHECKING:
    from collections.abc import Mapping

    from emulators.dynamics.service import ApiRequest, ApiResponse

_ODATA_TYPE = {
    "String": "StringAttributeMetadata",
    "Memo": "MemoAttributeMetadata",
    "Integer": "IntegerAttributeMetadata",
    "BigInt": "BigIntAttributeMetadata",
    "Money": "MoneyAttributeMetadata",
    "Decimal": "DecimalAttributeMetadata",
    "Double": "DoubleAttributeMetadata",
    "Boolean": "BooleanAttributeMetadata",
    "DateTime": "DateTimeAttributeMetadata",
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "Lookup": "LookupAttributeMetadata",
    "Customer": "LookupAttributeMetadata",
    "Owner": "LookupAttributeMetadata",
    "Uniqueidentifier": "UniqueIdentifierAttributeMetadata",
}
_EDM = {
    "String": "Edm.String",
    "Memo": "Edm.String",
    "Integer": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Money": "Edm.Decimal",
    "Decimal": "Edm.Decimal",
    "Double": "Edm.Double",
    "Boolean": "Edm.Boolean",
    "DateTime": "Edm.DateTimeOffset",
    "Uniqueidentifier": "Edm.Guid",
}


def _label(text: str) -> dict[str, Any]:
    loc = {"Label": text, "LanguageCode": 1033}
    return {"LocalizedLabels": [loc], "UserLocalizedLabel": loc}


def attribute_definition(table: Table, attr: Attribute, secured: bool = False) -> dict[str, Any]:
    """Return the ``AttributeMetadata`` of one column (``secured``: ``IsSecured``)."""
    odata_type = _ODATA_TYPE.get(attr.type, "AttributeMetadata")
    system = attr.name in ("createdon", "modifiedon", "versionnumber", "createdby", "modifiedby")
    data: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{odata_type}",
        "MetadataId": attribute_metadata_id(table.logical_name, attr.name),
        "LogicalName": attr.name,
        "SchemaName": attr.schema_name or attr.name,
        "EntityLogicalName": table.logical_name,
        "AttributeType": attr.type,
        "AttributeTypeName": {"Value": f"{attr.type}Type"},
        "IsValidForRead": True,
        "IsValidForCreate": not attr.read_only and not system,
        "IsValidForUpdate": not attr.read_only and not system and attr.name != table.primary_id,
        "IsPrimaryId": attr.name == table.primary_id,
        "IsPrimaryName": attr.name == table.primary_name,
        "IsCustomAttribute": attr.custom,
        "IsSecured": secured,
        "AttributeOf": None,
        "DisplayName": _label(attr.display_name or attr.name),
        "RequiredLevel": {
            "Value": "SystemRequired" if attr.name == table.primary_id else attr.required_level,
            "CanBeChanged": attr.custom,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
    }
    if attr.type in (STRING, MEMO):
        data["MaxLength"] = attr.max_length or (4000 if attr.type == STRING else 1_048_576)
    if attr.type in LOOKUP_TYPES:
        data["Targets"] = list(attr.targets)
    if attr.type == DATETIME:
        data["DateTimeBehavior"] = {"Value": "DateOnly" if attr.date_only else "UserLocal"}
        data["Format"] = "DateOnly" if attr.date_only else "DateAndTime"
    if attr.type in (MONEY, DECIMAL):
        data["Precision"] = 2
    if attr.type in CHOICE_TYPES or attr.type == BOOLEAN:
        options = attr.options or ((1, "Yes"), (0, "No"))
        option_set: dict[str, Any] = {"Options": [{"Value": v, "Label": _label(text)} for v, text in options]}
        if attr.type == BOOLEAN:  # BooleanOptionSetMetadata names its two options
            labels = dict(options)
            option_set["TrueOption"] = {"Value": 1, "Label": _label(labels.get(1, "Yes"))}
            option_set["FalseOption"] = {"Value": 0, "Label": _label(labels.get(0, "No"))}
            data["DefaultValue"] = attr.default
        data["OptionSet"] = option_set
    return data


def entity_definition(table: Table) -> dict[str, Any]:
    """Return the ``EntityMetadata`` of one table."""
    return {
        "MetadataId": table.metadata_id,
        "LogicalName": table.logical_name,
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        "ObjectTypeCode": table.object_type_code,
        "IsCustomEntity": table.custom,
        "IsActivity": table.is_activity,
        "ChangeTrackingEnabled": table.change_tracking,
        "CanChangeTrackingBeEnabled": {
            "Value": True,
            "CanBeChanged": False,
            "ManagedPropertyLogicalName": "canchangetrackingbeenabled",
        },
        "DisplayName": _label(table.logical_name),
        "Privileges": privilege_definitions(table),
    }


def key_id(table: Table, columns: tuple[str, ...]) -> str:
    """The ``MetadataId`` of the alternate key on ``columns``."""
    return str(uuid.uuid5(METADATA_NAMESPACE, f"{table.logical_name}.key.{'.'.join(columns)}"))


def key_definitions(table: Table) -> list[dict[str, Any]]:
    """The table's alternate keys: the active ones, then those whose index could not be built."""
    failed = [tuple(k.split(",")) for k, info in table.key_info.items() if info.get("Status") == "Failed"]
    keys = []
    for columns in [*table.alternate_keys, *failed]:
        info = table.key_info.get(",".join(columns), {})
        schema_name = info.get("SchemaName") or f"{'_'.join(columns)}_key"
        keys.append(
            {
                "MetadataId": key_id(table, columns),
                "LogicalName": schema_name.lower()
                if info
                else f"{table.logical_name}_{'_'.join(columns)}_key",
                "SchemaName": schema_name,
                "DisplayName": _label(info.get("DisplayName") or schema_name),
                "KeyAttributes": list(columns),
                "EntityKeyIndexStatus": info.get("Status", "Active"),
                "EntityLogicalName": table.logical_name,
            }
        )
    return keys


def _options(text: str) -> dict[str, str]:
    """Parse ``$select=a,b;$expand=...`` (nested options) into a dict."""
    out: dict[str, str] = {}
    for part in split_top_level(text, ";"):
        key, _, value = part.partition("=")
        out[key.strip()] = value
    return out


def _shape(item: dict[str, Any], options: dict[str, str], expansions: dict[str, Any]) -> dict[str, Any]:
    """Apply ``$select`` and ``$expand`` to one metadata object."""
    for part in split_top_level(options.get("$expand", "")):
        name, _, inner = part.partition("(")
        name = name.strip()
        if name not in expansions and name not in item:
            raise ODataError(400, "0x80060888", f"Could not find a property named '{name}' to expand")
        nested = _options(inner[:-1]) if inner.endswith(")") else {}
        value = expansions[name]() if name in expansions else item[name]
        if isinstance(value, list):
            value = [_shape(v, nested, {}) for v in value if _matches(v, nested)]
        elif isinstance(value, dict):
            value = _shape(value, nested, {})
        item = {**item, name: value}
    if options.get("$select"):
        keep = {s.strip() for s in options["$select"].split(",")} | {"MetadataId", "@odata.type"}
        keep |= {p.partition("(")[0].strip() for p in split_top_level(options.get("$expand", ""))}
        item = {k: v for k, v in item.items() if k in keep}
    return item


def _matches(item: dict[str, Any], options: dict[str, str]) -> bool:
    return "$filter" not in options or evaluate(parse_filter(options["$filter"]), item)


def find_table(tables: dict[str, Table], key: str) -> Table:
    """The table a key segment names: ``LogicalName='x'`` or its ``MetadataId``.

    Raises:
        ODataError: 404 when there is none.
    """
    parsed = parse_key(key)
    for table in tables.values():
        if (isinstance(parsed, str) and table.metadata_id == parsed) or (
            isinstance(parsed, dict) and str(parsed.get("LogicalName", "")).lower() == table.logical_name
        ):
            return table
    raise ODataError(404, "0x80040217", f"Could not find entity with key {key!r}")


def entity_definitions(
    tables: dict[str, Table],
    req: ApiRequest,
    key: str | None,
    rest: str | None,
    secured: Mapping[str, frozenset[str]] | None = None,
) -> ApiResponse:
    """Serve GET on ``EntityDefinitions`` and everything under it.

    ``secured`` lists the secured columns per table (``IsSecured``).
    """
    from emulators.dynamics.service import ApiResponse

    if req.method != "GET":
        raise ODataError(405, "", f"{req.method} is not served here (see emulators.dynamics.customize)")
    secured = secured or {}
    root = f"{req.api_root}/$metadata#EntityDefinitions"
    if key is None:
        items = []
        for table in tables.values():
            item = entity_definition(table)
            if _matches(item, req.query):
                items.append(_shape(item, req.query, _expansions(table, secured)))
        return ApiResponse.json({"@odata.context": root, "value": items})
    table = find_table(tables, key)
    if rest is None:
        body = _shape(entity_definition(table), req.query, _expansions(table, secured))
        return ApiResponse.json({"@odata.context": f"{root}/$entity", **body})
    if rest == "Keys":
        return ApiResponse.json(
            {
                "@odata.context": f"{root}({table.metadata_id})/Keys",
                "value": [_shape(k, req.query, {}) for k in key_definitions(table)],
            }
        )
    if not rest.startswith("Attributes"):
        raise ODataError(404, "0x8006088a", f"Resource not found for the segment '{rest}'.")
    tail = rest[len("Attributes") :]
    locked = secured.get(table.logical_name, frozenset())
    attrs = [attribute_definition(table, a, a.name in locked) for a in table.attributes.values()]
    if tail.startswith("("):
        akey, _, tail = tail[1:].partition(")")
        parsed = parse_key(akey)
        attrs = [
            a
            for a in attrs
            if (isinstance(parsed, str) and a["MetadataId"] == parsed)
            or (isinstance(parsed, dict) and a["LogicalName"] == str(parsed.get("LogicalName", "")).lower())
        ]
        if not attrs:
            raise ODataError(404, "0x80040217", f"Could not find attribute {akey!r} on {table.logical_name}")
        cast = tail.strip("/")
        if cast and attrs[0]["@odata.type"] != f"#{cast}":
            raise ODataError(400, "0x80060888", f"Attribute {akey} is not a {cast}")
        return ApiResponse.json(
            {
                "@odata.context": f"{root}({table.metadata_id})/Attributes/$entity",
                **_shape(attrs[0], req.query, {}),
            }
        )
    cast = tail.strip("/")
    if cast:
        attrs = [a for a in attrs if a["@odata.type"] == f"#{cast}"]
    attrs = [_shape(a, req.query, {}) for a in attrs if _matches(a, req.query)]
    return ApiResponse.json({"@odata.context": f"{root}({table.metadata_id})/Attributes", "value": attrs})


def _expansions(table: Table, secured: Mapping[str, frozenset[str]]) -> dict[str, Any]:
    locked = secured.get(table.logical_name, frozenset())
    return {
        "Attributes": lambda: [
            attribute_definition(table, a, a.name in locked) for a in table.attributes.values()
        ],
        "Keys": lambda: key_definitions(table),
    }


def csdl(tables: dict[str, Table]) -> str:
    """Return a small CSDL document: entity types with keys and properties, and the entity sets."""
    types, sets = [], []
    for t in tables.values():
        props = "".join(
            f'<Property Name="{escape(a.wire_name)}" Type="{_EDM.get(a.type, "Edm.Int32")}"/>'
            for a in t.attributes.values()
        )
        types.append(
            f'<EntityType Name="{t.logical_name}"><Key><PropertyRef Name="{t.primary_id}"/></Key>'
            f"{props}</EntityType>"
        )
        sets.append(
            f'<EntitySet Name="{t.entity_set}" EntityType="Microsoft.Dynamics.CRM.{t.logical_name}"/>'
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><edmx:Edmx Version="4.0" '
        'xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx"><edmx:DataServices>'
        '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">'
        + "".join(types)
        + '<EntityContainer Name="System">'
        + "".join(sets)
        + "</EntityContainer></Schema></edmx:DataServices></edmx:Edmx>"
    )

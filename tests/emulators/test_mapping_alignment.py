"""Every name an entity file uses exists in the emulators' own metadata.

The entity files (``include/crm_sync/entities/*.yaml``) name Marketo fields and Dataverse columns;
the emulators must serve all of them, or a sync run against the emulators silently drops data. Both
emulators run as real processes and are asked what they serve the way a client asks: Marketo's
``leads/describe2``, ``<object>/describe`` and ``customobjects.json``; Dataverse's
``EntityDefinitions`` with their ``Attributes``. A mapping change the emulators do not follow
fails here with the entity file and the field named.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from crm_sync.config import Cast, Direction, EntityConfig, MarketoObject, load_entities
from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator, start_emulator

ENTITIES = load_entities()

# Marketo describe path per object family (custom objects are listed by customobjects.json).
MARKETO_DESCRIBE = {
    MarketoObject.COMPANY: "companies",
    MarketoObject.OPPORTUNITY: "opportunities",
    MarketoObject.OPPORTUNITY_ROLE: "opportunities/roles",
    MarketoObject.SALES_PERSON: "salespersons",
}
# What an opportunity-role upsert writes (sync-semantics.md §3.4, §3.7); the role rule has no
# field list of its own, so the names come from the reference.
ROLE_FIELDS = ("externalOpportunityId", "leadId", "role", "isPrimary")
ROLE_KEY = ["externalOpportunityId", "leadId", "role"]

# Mapped "columns" that no Dataverse table holds: the extractor derives them from an expansion.
# The entity files mark them only with a comment, so they are listed here with the expansion
# the emulator must serve instead: (entity set, $expand as the extractor sends it).
DERIVED = {
    # team.yaml: member user GUIDs, from its dynamics.expand.
    ("team", "member_ids"): ("teams", ENTITIES["team"].dynamics.expand or "teammembership_association"),
    # opportunity.yaml: a contact customer's parent account (comment on its lookups).
    ("opportunity", "customer_parent_account"): (
        "opportunities",
        "customerid_contact($select=_parentcustomerid_value)",
    ),
}
LOOKUP_TYPES = {"Lookup", "Customer", "Owner"}
CHOICE_TYPES = {"Picklist", "State", "Status"}
# Dataverse attribute types a mapped value of each cast may live in.
DATAVERSE_TYPES = {
    Cast.STRING: {"String", "Memo"},
    Cast.EMAIL: {"String"},
    Cast.INTEGER: {"Integer", "BigInt"},
    Cast.DECIMAL: {"Money", "Decimal", "Double"},  # an Integer column would drop the fraction
    Cast.BOOLEAN: {"Boolean"},
    Cast.DATETIME: {"DateTime"},
    Cast.DATE: {"DateTime"},
    Cast.CHOICE: CHOICE_TYPES,
    Cast.MULTICHOICE: {"MultiSelectPicklist", "Virtual"},
    Cast.GUID: {"Uniqueidentifier", *LOOKUP_TYPES},
}
ANNOTATION = "@Microsoft.Dynamics.CRM.lookuplogicalname"
_TEXT = {"string", "text", "email", "phone", "url"}
# Marketo data types a mapped value of each cast may be stored in.
MARKETO_TYPES = {
    Cast.STRING: _TEXT,
    Cast.EMAIL: {"email", "string"},
    Cast.INTEGER: {"integer", "score"},
    Cast.DECIMAL: {"currency", "float", "percent", "integer"},
    Cast.BOOLEAN: {"boolean"},
    Cast.DATETIME: {"datetime"},
    Cast.DATE: {"date", "datetime"},
    Cast.CHOICE: {"string"},
    Cast.MULTICHOICE: {"string", "text"},
    Cast.GUID: {"string"},
    Cast.STRING_LIST: {"string", "text"},
}


@dataclass
class MarketoObjectMeta:
    """What Marketo's describe says about one object."""

    fields: dict[str, dict[str, Any]]
    id_field: str
    dedupe_fields: list[str]
    searchable: list[list[str]]
    relationships: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DataverseTableMeta:
    """What Dataverse's EntityDefinitions say about one table."""

    entity_set: str
    primary_id: str
    attributes: dict[str, dict[str, Any]]


@dataclass
class Metadata:
    """Both emulators' metadata, read once for the module."""

    marketo: dict[str, MarketoObjectMeta]
    dataverse: dict[str, DataverseTableMeta]
    dynamics: RunningEmulator
    dynamics_token: str


def _marketo_metadata(emu: RunningEmulator) -> dict[str, MarketoObjectMeta]:
    creds = default_credentials("marketo_default")
    with requests.Session() as http:
        http.verify = emu.verify
        token = http.get(
            f"{emu.base_url}/identity/oauth/token",
            params={
                "grant_type": "client_credentials",
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
            },
            timeout=30,
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"

        def result(path: str) -> list[dict[str, Any]]:
            body = http.get(f"{emu.base_url}/rest/v1/{path}", timeout=30).json()
            assert body.get("success"), f"{path}: {body}"
            return list(body["result"])

        def meta(entry: dict[str, Any]) -> MarketoObjectMeta:
            return MarketoObjectMeta(
                fields={f["name"]: f for f in entry["fields"]},
                id_field=entry.get("idField", "id"),
                dedupe_fields=list(entry.get("dedupeFields", [])),
                searchable=[list(g) for g in entry.get("searchableFields", [])],
                relationships=list(entry.get("relationships", [])),
            )

        out = {"lead": meta(result("leads/describe2.json")[0])}
        for kind, path in MARKETO_DESCRIBE.items():
            out[kind.value] = meta(result(f"{path}/describe.json")[0])
        for entry in result("customobjects.json"):
            out[f"custom:{entry['name']}"] = meta(entry)
    return out


def _dynamics_token(emu: RunningEmulator) -> str:
    creds = default_credentials("dynamics_default")
    resp = requests.post(
        f"{emu.base_url}/{creds.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "scope": f"{emu.base_url}/.default",
        },
        verify=emu.verify,
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _dataverse_get(emu: RunningEmulator, token: str, path: str) -> requests.Response:
    return requests.get(
        f"{emu.base_url}/api/data/v9.2/{path}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        verify=emu.verify,
        timeout=30,
    )


def _dataverse_metadata(emu: RunningEmulator, token: str) -> dict[str, DataverseTableMeta]:
    tables = {e.dynamics.table for e in ENTITIES.values()}
    out = {}
    for table in sorted(tables):
        resp = _dataverse_get(emu, token, f"EntityDefinitions(LogicalName='{table}')?$expand=Attributes")
        assert resp.status_code == 200, f"table {table}: {resp.status_code} {resp.text[:300]}"
        body = resp.json()
        out[table] = DataverseTableMeta(
            entity_set=body["EntitySetName"],
            primary_id=body["PrimaryIdAttribute"],
            attributes={a["LogicalName"]: a for a in body["Attributes"]},
        )
    return out


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metadata]:
    """Both emulators, small seeds (so expansions run on real rows), limits off."""
    work = tmp_path_factory.mktemp("alignment")
    marketo = start_emulator("marketo", work / "marketo", ["--limits", "off"])
    try:
        dynamics = start_emulator("dynamics", work / "dynamics", ["--limits", "off"], seed_scale=50)
        try:
            token = _dynamics_token(dynamics)
            yield Metadata(_marketo_metadata(marketo), _dataverse_metadata(dynamics, token), dynamics, token)
        finally:
            dynamics.stop()
    finally:
        marketo.stop()


def _where(entity: EntityConfig) -> str:
    return Path(entity.source_path).name if entity.source_path else f"{entity.name}.yaml"


def _marketo_object(entity: EntityConfig, md: Metadata) -> MarketoObjectMeta | None:
    m = entity.marketo
    if m.object is MarketoObject.CUSTOM_OBJECT:
        return md.marketo.get(f"custom:{m.api_name}")
    return md.marketo.get(m.object.value)


def marketo_problems(entity: EntityConfig, md: Metadata) -> list[str]:
    """Names the entity uses on the Marketo side that the emulator does not serve as needed."""
    where, m = _where(entity), entity.marketo
    obj = _marketo_object(entity, md)
    if obj is None:
        return [f"{where}: Marketo object {m.api_name or m.object.value!r} is not served"]
    label = m.api_name or m.object.value
    problems: list[str] = []

    def need(name: str, what: str, writable: bool = False) -> None:
        spec = obj.fields.get(name)
        if spec is None:
            problems.append(f"{where}: {what} {name!r} missing from Marketo {label} describe")
        elif writable and not spec.get("updateable", True):
            problems.append(
                f"{where}: {what} {name!r} is read-only in Marketo {label}, but the sync writes it"
            )

    if m.object is MarketoObject.LEAD:
        need(m.key, "marketo.key")
        if [m.key] not in obj.searchable:
            problems.append(f"{where}: marketo.key {m.key!r} is not a searchable lead field (read-back)")
    else:
        need(m.key, "marketo.key")
        if m.key not in obj.dedupe_fields:
            problems.append(f"{where}: marketo.key {m.key!r} not in {label} dedupeFields {obj.dedupe_fields}")
    if obj.id_field != m.id_field and m.object is not MarketoObject.LEAD:
        problems.append(f"{where}: marketo.id_field {m.id_field!r} but {label} idField is {obj.id_field!r}")
    need(m.id_field, "marketo.id_field")
    sync_owned = {
        "type_field": (m.type_field, True),
        "deleted_field": (m.deleted_field, True),
        "record_id_field": (m.record_id_field, True),
        "email_field": (m.email_field, False),
        "sync_flag_field": (m.sync_flag_field, False),
    }
    for what, (name, writable) in sync_owned.items():
        if name:
            need(name, f"marketo.{what}", writable)
    for i, f in enumerate(entity.fields):
        writes = entity.field_direction(f).includes(Direction.D2M)
        need(f.marketo, f"fields[{i}].marketo", writable=writes)
        kind = obj.fields.get(f.marketo, {}).get("dataType")
        if kind is not None and kind not in MARKETO_TYPES[f.cast]:
            problems.append(
                f"{where}: fields[{i}] {f.marketo!r} is Marketo {kind}, not a {f.cast.value} field"
            )
    for i, lk in enumerate(entity.lookups):
        spec = obj.fields.get(lk.marketo)
        if spec is not None and spec.get("dataType") == "link":
            # A custom object's link field: it must point where the lookup's value comes from.
            target = {"name": "Lead", "field": "id"} if lk.value == "marketo_id" else None
            rel = next((r for r in obj.relationships if r.get("field") == lk.marketo), None)
            if rel is None or (target is not None and rel.get("relatedTo") != target):
                problems.append(
                    f"{where}: lookups[{i}].marketo {lk.marketo!r} is not a link to {target} in {label}"
                    f" (relationships: {obj.relationships})"
                )
        else:
            need(lk.marketo, f"lookups[{i}].marketo", writable=True)
    if entity.roles:
        roles = md.marketo[MarketoObject.OPPORTUNITY_ROLE.value]
        for name in ROLE_FIELDS:
            if name not in roles.fields:
                problems.append(f"{where}: roles: opportunity role field {name!r} missing from describe")
        if roles.dedupe_fields != ROLE_KEY:
            problems.append(
                f"{where}: roles: opportunity role dedupeFields {roles.dedupe_fields} != {ROLE_KEY}"
            )
    return problems


def _lookup_attribute(name: str) -> str:
    """``_ownerid_value`` -> ``ownerid`` (the attribute behind a lookup's wire name)."""
    if name.startswith("_") and name.endswith("_value"):
        return name[1:-6]
    return name


def _check_derived(entity: EntityConfig, column: str, md: Metadata, problems: list[str]) -> None:
    """A derived column's expansion must answer on real (seeded) rows of its table."""
    entity_set, expand = DERIVED[(entity.name, column)]
    nav = expand.partition("(")[0]
    resp = _dataverse_get(md.dynamics, md.dynamics_token, f"{entity_set}?$top=5&$expand={expand}")
    rows = resp.json().get("value", []) if resp.status_code == 200 else []
    if not rows or not all(nav in row for row in rows):
        problems.append(
            f"{_where(entity)}: {column!r} is derived from $expand={expand} on {entity_set}, which the"
            f" emulator does not serve: {resp.status_code} {resp.text[:200]}"
        )


def dynamics_problems(entity: EntityConfig, md: Metadata) -> list[str]:
    """Columns the entity uses on the Dataverse side that the emulator does not serve as needed."""
    where, d = _where(entity), entity.dynamics
    meta = md.dataverse.get(d.table)
    if meta is None:
        return [f"{where}: Dataverse table {d.table!r} is not served"]
    attrs = meta.attributes
    problems: list[str] = []
    if meta.entity_set != d.entity_set:
        problems.append(
            f"{where}: dynamics.entity_set {d.entity_set!r} but EntitySetName is {meta.entity_set!r}"
        )
    if meta.primary_id != d.key:
        problems.append(f"{where}: dynamics.key {d.key!r} but PrimaryIdAttribute is {meta.primary_id!r}")
    for what, column in (("filter_column", d.filter_column), ("modified_column", d.modified_column)):
        if column and column not in attrs:
            problems.append(f"{where}: dynamics.{what} {column!r} missing from {d.table} Attributes")
    if d.filter_column in attrs and attrs[d.filter_column]["AttributeType"] != "Boolean":
        problems.append(f"{where}: dynamics.filter_column {d.filter_column!r} is not a two-option column")
    for i, f in enumerate(entity.fields):
        if (entity.name, f.dynamics) in DERIVED:
            _check_derived(entity, f.dynamics, md, problems)
            continue
        attr = attrs.get(_lookup_attribute(f.dynamics))
        if attr is None:
            problems.append(f"{where}: fields[{i}].dynamics {f.dynamics!r} missing from {d.table} Attributes")
            continue
        allowed = DATAVERSE_TYPES.get(f.cast)
        if allowed is not None and attr["AttributeType"] not in allowed:
            problems.append(
                f"{where}: fields[{i}] {f.dynamics!r} is {attr['AttributeType']}, not a {f.cast.value} column"
            )
        if f.option_set and attr["AttributeType"] in CHOICE_TYPES:
            codes = {o["Value"] for o in attr["OptionSet"]["Options"]}
            unknown = sorted(set(f.option_set) - codes)
            if unknown:
                problems.append(
                    f"{where}: fields[{i}] {f.dynamics!r}: option codes {unknown} not in the option set"
                )
    for i, lk in enumerate(entity.lookups):
        if (entity.name, lk.dynamics) in DERIVED:
            _check_derived(entity, lk.dynamics, md, problems)
            continue
        attr = attrs.get(_lookup_attribute(lk.dynamics))
        if attr is None or attr["AttributeType"] not in LOOKUP_TYPES or not lk.dynamics.startswith("_"):
            problems.append(f"{where}: lookups[{i}].dynamics {lk.dynamics!r} is not a lookup of {d.table}")
            continue
        missing = sorted(set(lk.targets) - set(attr.get("Targets", [])))
        if missing:
            problems.append(f"{where}: lookups[{i}] {lk.dynamics!r} cannot point at {missing}")
        if lk.type_column and lk.type_column != f"{lk.dynamics}{ANNOTATION}":
            problems.append(
                f"{where}: lookups[{i}].type_column {lk.type_column!r} is not {lk.dynamics}{ANNOTATION}"
            )
    if entity.roles:
        r = entity.roles
        attr = attrs.get(_lookup_attribute(r.lookup), {})
        if r.when_type not in attr.get("Targets", []):
            problems.append(f"{where}: roles.lookup {r.lookup!r} cannot point at {r.when_type!r}")
        if r.type_column != f"{r.lookup}{ANNOTATION}":
            problems.append(f"{where}: roles.type_column {r.type_column!r} is not {r.lookup}{ANNOTATION}")
    return problems


@pytest.mark.parametrize("name", list(ENTITIES))
def test_marketo_emulator_serves_every_mapped_field(metadata: Metadata, name: str) -> None:
    problems = marketo_problems(ENTITIES[name], metadata)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", list(ENTITIES))
def test_dataverse_emulator_serves_every_mapped_column(metadata: Metadata, name: str) -> None:
    problems = dynamics_problems(ENTITIES[name], metadata)
    assert not problems, "\n".join(problems)


def test_the_checks_name_entity_and_field_of_a_gap(metadata: Metadata) -> None:
    # A mapping the emulators do not serve must fail with the file and field named.
    entity = ENTITIES["contact"]
    broken = entity.model_copy(
        update={
            "fields": (
                *entity.fields,
                entity.fields[0].model_copy(update={"marketo": "msdNoSuchField", "dynamics": "new_nosuch"}),
            )
        }
    )
    assert "contact.yaml: fields[" in " ".join(marketo_problems(broken, metadata))
    assert any("'msdNoSuchField' missing from Marketo lead" in p for p in marketo_problems(broken, metadata))
    assert any(
        "'new_nosuch' missing from contact Attributes" in p for p in dynamics_problems(broken, metadata)
    )

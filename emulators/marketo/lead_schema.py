"""The lead fields one emulator database serves: the catalogue, minus bare mode, plus API-created fields.

``fields.LEAD_FIELDS`` names every field the emulator knows and its display name. A database
may differ from it in two ways, both recorded in its ``lead_fields`` table (one row per field
that differs):

* **absent**: bare mode (``--bare``) hides every ``msd…`` field, as on a Marketo instance
  without the native Dynamics sync, until a client creates it through Create Lead Fields;
* **created**: a field made through the API. It behaves with the type it was created with,
  which may differ from the catalogue's (``msdIsDeleted`` created as ``string`` accepts strings),
  and a name outside the catalogue becomes a new custom field with its own lead column.

:class:`LeadSchema` is an immutable snapshot of that state; the store swaps in a new one after
each change, so readers never see a half-applied change. The describe renderers live here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emulators.marketo.fields import (
    LEAD_FIELD_IDS,
    LEAD_FIELD_MAP,
    LEAD_FIELDS,
    STRING_TYPES,
    FieldDef,
    describe_entry,
    stored_value,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

SYNC_PREFIX = "msd"  # the sync-owned fields that bare mode hides
# Types Create Lead Fields accepts (the list Marketo's field editor offers for custom fields).
CREATABLE_TYPES = frozenset(
    {
        "string",
        "text",
        "boolean",
        "integer",
        "float",
        "currency",
        "percent",
        "score",
        "date",
        "datetime",
        "email",
        "phone",
        "url",
    }
)
# Custom fields of these types may be used as filterType / lookupField (reference §3.1).
SEARCHABLE_TYPES = frozenset({"string", "email", "integer"})
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Standard fields the native Dynamics sync fills from the CRM (default field mapping,
# sync-semantics.md §3.1). With --native-sync these and the msd… fields are crmManaged; the
# Marketo-computed ones (scores, Sales Insight, ids, timestamps) never are.
CRM_MAPPED_FIELDS = frozenset(
    {
        "salutation",
        "firstName",
        "middleName",
        "lastName",
        "email",
        "title",
        "phone",
        "mobilePhone",
        "fax",
        "address",
        "city",
        "state",
        "country",
        "postalCode",
        "company",
        "annualRevenue",
        "leadSource",
        "leadStatus",
        "rating",
        "doNotCall",
        "unsubscribed",
    }
)


@dataclass(frozen=True)
class FieldState:
    """One row of the ``lead_fields`` table: how a field differs from the catalogue.

    Attributes:
        name: REST API name.
        present: False while bare mode hides the field.
        data_type: The type it was created with (None for a catalogue field hidden by bare mode).
        display: Its display name as created.
        length: Maximum length of a string-like field.
        description: Free text given at creation.
        hidden: ``isHidden`` as created.
        html_encoding: ``isHtmlEncodingInEmail`` as created.
        sensitive: ``isSensitive`` as created.
        field_id: The id describe reports (catalogue fields keep theirs).
    """

    name: str
    present: bool
    data_type: str | None = None
    display: str | None = None
    length: int | None = None
    description: str | None = None
    hidden: bool = False
    html_encoding: bool = True
    sensitive: bool = False
    field_id: int | None = None

    @property
    def created(self) -> bool:
        """Whether the field was made through the API (as opposed to only hidden)."""
        return self.present and self.data_type is not None


def default_length(data_type: str) -> int | None:
    """Length a new field of ``data_type`` gets: 255 for the short string-like types."""
    return 255 if data_type in STRING_TYPES - {"text"} else None


def _affinity(declared: str) -> str:
    declared = declared.upper()
    if "INT" in declared:
        return "integer"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "real"
    return "text"


def _storage(data_type: str) -> str:
    if data_type in ("integer", "score", "boolean"):
        return "integer"
    if data_type in ("float", "currency", "percent"):
        return "real"
    return "text"


def _created_def(state: FieldState) -> FieldDef:
    data_type = state.data_type or "string"
    return FieldDef(
        state.name,
        state.display or state.name,
        data_type,
        length=state.length,
        searchable=data_type in SEARCHABLE_TYPES,
    )


@dataclass(frozen=True)
class LeadSchema:
    """The lead fields of one database, as clients see them.

    Attributes:
        fields: Present fields in describe order (catalogue order, then new custom fields).
        ids: Field id per present field.
        absent: Fields bare mode hides now.
        created: Fields made through the API, with what they were created with.
        columns: Every column of the ``leads`` table (hidden fields keep theirs, emptied).
        retyped: Present fields whose column was made for another storage type; their values
            are converted when read back (:func:`~emulators.marketo.fields.stored_value`).
        bare: Whether bare mode was ever applied to this database.
        last_id: The highest field id given so far (hidden custom fields included).
    """

    fields: tuple[FieldDef, ...]
    ids: Mapping[str, int]
    absent: frozenset[str]
    created: Mapping[str, FieldState]
    columns: tuple[str, ...]
    retyped: tuple[FieldDef, ...] = ()
    bare: bool = False
    last_id: int = 0
    by_name: Mapping[str, FieldDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    @property
    def searchable(self) -> tuple[str, ...]:
        """Names usable as ``filterType`` / ``lookupField``."""
        return tuple(f.name for f in self.fields if f.searchable)

    @property
    def next_id(self) -> int:
        """The id a new custom field gets (an id is never given twice)."""
        return self.last_id + 1

    def get(self, name: str) -> FieldDef | None:
        """The present field called ``name``, or None (absent or unknown)."""
        return self.by_name.get(name)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a field of this database, present or hidden by bare mode."""
        return name in self.by_name or name in self.absent

    def column_named(self, name: str) -> str | None:
        """The existing lead column whose name equals ``name`` ignoring case (SQLite's rule)."""
        lowered = name.lower()
        return next((c for c in self.columns if c.lower() == lowered), None)

    def coerce_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Convert, in place, the values of retyped fields in a raw database row."""
        for f in self.retyped:
            if f.name in row:
                row[f.name] = stored_value(f, row[f.name])
        return row


def build(states: Iterable[FieldState], columns: Mapping[str, str], bare: bool = False) -> LeadSchema:
    """Return the schema of a database from its ``lead_fields`` rows.

    Args:
        states: The rows of ``lead_fields``.
        columns: Column name -> declared SQL type of the ``leads`` table, in table order.
        bare: Whether bare mode has been applied to the database.
    """
    by_name = {s.name: s for s in states}
    present: list[FieldDef] = []
    ids: dict[str, int] = {}
    absent: set[str] = set()
    for f in LEAD_FIELDS:
        state = by_name.get(f.name)
        if state is not None and not state.present:
            absent.add(f.name)
            continue
        present.append(_created_def(state) if state is not None and state.created else f)
        ids[f.name] = LEAD_FIELD_IDS[f.name]
    custom = [s for s in by_name.values() if s.name not in LEAD_FIELD_MAP]
    for state in sorted(custom, key=lambda s: s.field_id or 0):
        if not state.present:
            absent.add(state.name)
            continue
        present.append(_created_def(state))
        ids[state.name] = state.field_id or 0
    retyped = tuple(
        f for f in present if f.name in columns and _storage(f.value_type) != _affinity(columns[f.name])
    )
    return LeadSchema(
        fields=tuple(present),
        ids=ids,
        absent=frozenset(absent),
        created={s.name: s for s in by_name.values() if s.created},
        columns=tuple(columns),
        retyped=retyped,
        bare=bare,
        last_id=max([*LEAD_FIELD_IDS.values(), *(s.field_id or 0 for s in by_name.values())]),
    )


# ---- describe renderers ----------------------------------------------------------------------------


def describe(schema: LeadSchema) -> list[dict[str, Any]]:
    """Result of ``GET /rest/v1/leads/describe.json`` (one entry per present field)."""
    out = []
    for f in schema.fields:
        entry: dict[str, Any] = {"id": schema.ids[f.name], "displayName": f.display, "dataType": f.data_type}
        if f.max_length is not None:
            entry["length"] = f.max_length
        entry["rest"] = {"name": f.name, "readOnly": not f.updateable}
        entry["soap"] = {"name": f.name[0].upper() + f.name[1:], "readOnly": not f.updateable}
        out.append(entry)
    return out


def crm_managed(name: str, native_sync: bool) -> bool:
    """Whether describe2 marks ``name`` as owned by the CRM: only while the native sync is on."""
    return native_sync and (name.startswith(SYNC_PREFIX) or name in CRM_MAPPED_FIELDS)


def describe2(schema: LeadSchema, native_sync: bool = False) -> list[dict[str, Any]]:
    """Result of ``GET /rest/v1/leads/describe2.json``."""
    fields = [{**describe_entry(f), "crmManaged": crm_managed(f.name, native_sync)} for f in schema.fields]
    searchable = [[n] for n in schema.searchable]
    return [{"name": "API Lead", "searchableFields": searchable, "fields": fields}]


def is_custom(name: str, schema: LeadSchema) -> bool:
    """Whether a field is custom: made through the API, or one of the sync's own fields."""
    return name in schema.created or name.startswith(SYNC_PREFIX) or name == "externalPersonId"


def schema_field(schema: LeadSchema, f: FieldDef) -> dict[str, Any]:
    """One entry of Get Lead Fields / Get Lead Field by Name (Adobe's field metadata shape)."""
    state = schema.created.get(f.name)
    entry: dict[str, Any] = {
        "displayName": f.display,
        "name": f.name,
        "description": state.description if state else None,
        "dataType": f.data_type,
    }
    if f.max_length is not None:
        entry["length"] = f.max_length
    entry.update(
        {
            "isHidden": state.hidden if state else False,
            "isHtmlEncodingInEmail": state.html_encoding if state else f.value_type in STRING_TYPES,
            "isSensitive": state.sensitive if state else False,
            "isCustom": is_custom(f.name, schema),
        }
    )
    return entry

"""Field catalogues of the emulated Marketo objects, and value validation.

The lead fields are Marketo's standard person fields used by the default Dynamics mapping
(sync reference §3.1–3.3) plus the custom fields a non-native sync owns (§3.6, §3.7):
``externalPersonId``, ``msdType``, ``msdRecordId``, ``msdCreatedDate``, ``msdIsDeleted`` and
``msdSyncToDynamics``, and the ``msd…`` fields the entity files map where the reference says
"describe". Field names are the REST API names; every catalogue is data so describe, validation,
storage and the bulk files all come from one place. ``tests/emulators/test_mapping_alignment.py``
checks that every name the entity files use is served.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

STRING_TYPES = frozenset({"string", "text", "email", "phone", "url", "reference", "link"})


@dataclass(frozen=True)
class FieldDef:
    """One field of an emulated object.

    Attributes:
        name: REST API name.
        display: Display name (describe's ``displayName``).
        data_type: Marketo data type (``string``, ``email``, ``integer``, ``datetime``...).
        length: Maximum length for string-like types.
        updateable: Whether API writes may set it.
        searchable: Whether it may be used as ``filterType``.
        related: For ``link`` fields of custom objects: the (object, field) the value points at,
            as describe's ``relationships`` show it (``("Lead", "id")``).
    """

    name: str
    display: str
    data_type: str = "string"
    length: int | None = None
    updateable: bool = True
    searchable: bool = False
    related: tuple[str, str] | None = None

    @property
    def value_type(self) -> str:
        """The type values are checked and stored as: a link to a lead id holds an integer."""
        if self.data_type == "link" and self.related is not None and self.related[1] == "id":
            return "integer"
        return self.data_type

    @property
    def max_length(self) -> int | None:
        if self.length is not None:
            return self.length
        return 255 if self.value_type in STRING_TYPES - {"text"} else None


def describe_entry(f: FieldDef) -> dict[str, Any]:
    """A field as an object describe and the leads describe2 list it."""
    entry: dict[str, Any] = {
        "name": f.name,
        "displayName": f.display,
        "dataType": f.data_type,
        "updateable": f.updateable,
    }
    if f.max_length is not None:
        entry["length"] = f.max_length
    return entry


def _f(name: str, display: str, data_type: str = "string", **kw: Any) -> FieldDef:
    return FieldDef(name, display, data_type, **kw)


LEAD_FIELDS: tuple[FieldDef, ...] = (
    _f("id", "Id", "integer", updateable=False, searchable=True),
    _f("email", "Email Address", "email", searchable=True),
    _f("salutation", "Salutation"),
    _f("firstName", "First Name"),
    _f("middleName", "Middle Name"),
    _f("lastName", "Last Name"),
    _f("title", "Job Title"),
    _f("phone", "Phone Number", "phone"),
    _f("mobilePhone", "Mobile Phone Number", "phone"),
    _f("fax", "Fax Number", "phone"),
    _f("address", "Address", "text"),
    _f("city", "City"),
    _f("state", "State"),
    _f("country", "Country"),
    _f("postalCode", "Postal Code"),
    _f("company", "Company Name"),
    _f("annualRevenue", "Annual Revenue", "currency"),
    _f("website", "Website", "url"),
    _f("leadSource", "Person Source"),
    _f("leadStatus", "Person Status"),
    _f("rating", "Person Rating"),
    _f("doNotCall", "Do Not Call", "boolean"),
    _f("unsubscribed", "Unsubscribed", "boolean"),
    _f("leadScore", "Person Score", "score"),
    _f("relativeScore", "Relative Score", "integer"),
    _f("priority", "Priority", "integer"),
    _f("urgency", "Urgency", "float"),
    _f("leadPartitionId", "Lead Partition Id", "integer", searchable=True),
    _f("externalCompanyId", "External Company Id", searchable=True),
    _f("externalSalesPersonId", "External Sales Person Id", searchable=True),
    # Sync-owned custom fields (sync reference §3.6/§3.7); the keys a sync reads back by.
    _f("externalPersonId", "External Person Id", searchable=True),
    _f("msdType", "Microsoft Type", searchable=True),
    _f("msdRecordId", "Microsoft Record Id", length=36, searchable=True),
    _f("msdCreatedDate", "Microsoft Created Date", "datetime"),
    _f("msdIsDeleted", "Microsoft is Deleted", "boolean"),
    # Mapped fields whose REST names Adobe does not publish (sync reference §3.1: "describe");
    # clients find them by display name in describe2, so the display names are the documented ones.
    _f("msdAddress2", "Microsoft Address 2"),
    _f("msdAddress3", "Microsoft Address 3"),
    _f("msdHomePhone", "Microsoft Home Phone", "phone"),
    _f("msdDoNotEmail", "Microsoft Do Not Email", "boolean"),
    _f("msdDoNotFax", "Microsoft Do Not Fax", "boolean"),
    _f("msdDoNotSendMarketingMaterial", "Microsoft Do Not Send Marketing Material", "boolean"),
    _f("msdPreferredMethodOfContact", "Microsoft Preferred Method Of Contact"),
    _f("msdTopic", "Microsoft Topic"),
    _f("msdStatusReason", "Status Reason"),
    # "Person Notes" (reference §3.1, REST name unpublished): the sync's custom field for description.
    _f("msdPersonNotes", "Person Notes", "text"),
    # Sales Insight values: computed by Marketo, read-only through the API.
    _f("msiLastInterestingMomentDate", "Last Interesting Moment Date", "datetime", updateable=False),
    _f("msiLastInterestingMomentDesc", "Last Interesting Moment Desc", updateable=False),
    _f("msiLastInterestingMomentSource", "Last Interesting Moment Source", updateable=False),
    _f("msiLastInterestingMomentType", "Last Interesting Moment Type", updateable=False),
    _f("createdAt", "Created At", "datetime", updateable=False),
    _f("updatedAt", "Updated At", "datetime", updateable=False),
    # Added after the first catalogue: appended so the field ids above stay stable.
    # The "Sync Person to Microsoft" flag (reference §2.8): a Marketo-only person with it set is
    # created as a Dynamics lead by the sync (the entity files' ``sync_flag_field``).
    _f("msdSyncToDynamics", "Sync Person to Microsoft", "boolean"),
)
LEAD_FIELD_MAP = {f.name: f for f in LEAD_FIELDS}
# Field ids as describe reports them (Data Value Change activities carry them too).
LEAD_FIELD_IDS = {f.name: i + 1 for i, f in enumerate(LEAD_FIELDS)}
LEAD_DEFAULT_FIELDS = ("id", "email", "updatedAt", "createdAt", "firstName", "lastName")
LEAD_SEARCHABLE = tuple(f.name for f in LEAD_FIELDS if f.searchable)


@dataclass(frozen=True)
class ObjectType:
    """A non-lead Lead-Database object (company, opportunity, role, sales person, custom object).

    Attributes:
        kind: Storage kind and stats label (``company``, ``opportunity``...).
        name: Describe ``name``.
        id_field: ``id`` (integer ids) or ``marketoGUID``.
        dedupe_fields: Fields forming the external key (several = compound key).
        searchable: Searchable field groups (describe ``searchableFields``).
        fields: All fields, system fields included.
        links: Field name -> (object kind, field) the value must exist in, for references
            checked on write (opportunity roles point at opportunities and leads).
    """

    kind: str
    name: str
    id_field: str
    dedupe_fields: tuple[str, ...]
    searchable: tuple[tuple[str, ...], ...]
    fields: tuple[FieldDef, ...]
    links: tuple[tuple[str, str, str], ...] = ()
    api_name: str | None = None
    plural_name: str | None = None

    @property
    def field_map(self) -> dict[str, FieldDef]:
        return {f.name: f for f in self.fields}

    @property
    def default_fields(self) -> tuple[str, ...]:
        return (self.id_field, *self.dedupe_fields, "createdAt", "updatedAt")


_SYSTEM = (
    _f("createdAt", "Created At", "datetime", updateable=False),
    _f("updatedAt", "Updated At", "datetime", updateable=False),
)
_GUID = _f("marketoGUID", "Marketo GUID", length=36, updateable=False)
_INT_ID = _f("id", "Id", "integer", updateable=False)

COMPANY = ObjectType(
    kind="company",
    name="Company",
    id_field="id",
    dedupe_fields=("externalCompanyId",),
    searchable=(("externalCompanyId",), ("id",), ("company",)),
    fields=(
        _INT_ID,
        _f("externalCompanyId", "External Company Id", length=100, updateable=False),
        _f("company", "Company Name"),
        _f("billingStreet", "Billing Address", "text"),
        _f("billingCity", "Billing City"),
        _f("billingState", "Billing State"),
        _f("billingCountry", "Billing Country"),
        _f("billingPostalCode", "Billing Postal Code"),
        _f("mainPhone", "Main Phone", "phone"),
        _f("annualRevenue", "Annual Revenue", "currency"),
        _f("industry", "Industry"),
        _f("sicCode", "SIC Code", length=40),
        _f("website", "Website", "url"),
        _f("numberOfEmployees", "Num Employees", "integer"),
        _f("msdBillingAddress2", "Microsoft Billing Address 2"),
        _f("msdBillingAddress3", "Microsoft Billing Address 3"),
        _f("msdBusinessType", "Business Type"),
        _f("msdAccountNumber", "Microsoft Account Number"),
        _f("msdCompanyStatus", "Microsoft Company Status"),
        _f("msdCompanyNotes", "Company Notes", "text"),
        _f("msdCreatedDate", "Microsoft Created Date", "datetime"),
        _f("externalSalesPersonId", "External Sales Person Id"),
        *_SYSTEM,
    ),
)

OPPORTUNITY = ObjectType(
    kind="opportunity",
    name="Opportunity",
    id_field="marketoGUID",
    dedupe_fields=("externalOpportunityId",),
    searchable=(("externalOpportunityId",), ("marketoGUID",), ("externalCompanyId",)),
    fields=(
        _GUID,
        _f("externalOpportunityId", "External Opportunity Id", length=50, updateable=False),
        _f("name", "Name"),
        _f("description", "Description", "text"),
        _f("stage", "Stage"),
        _f("probability", "Probability", "integer"),
        _f("amount", "Amount", "currency"),
        _f("closeDate", "Close Date", "date"),
        _f("isClosed", "Is Closed", "boolean"),
        _f("isWon", "Is Won", "boolean"),
        _f("externalCreatedDate", "External Created Date", "datetime"),
        _f("externalCompanyId", "External Company Id"),
        _f("externalSalesPersonId", "External Sales Person Id"),
        *_SYSTEM,
    ),
    links=(("externalSalesPersonId", "salesperson", "externalSalesPersonId"),),
)

OPPORTUNITY_ROLE = ObjectType(
    kind="opportunityrole",
    name="Opportunity Role",
    id_field="marketoGUID",
    dedupe_fields=("externalOpportunityId", "leadId", "role"),
    searchable=(
        ("externalOpportunityId", "leadId", "role"),
        ("marketoGUID",),
        ("leadId",),
        ("externalOpportunityId",),
    ),
    fields=(
        _GUID,
        _f("externalOpportunityId", "External Opportunity Id", length=50, updateable=False),
        _f("leadId", "Lead Id", "integer", updateable=False),
        _f("role", "Role", updateable=False),
        _f("isPrimary", "Is Primary", "boolean"),
        _f("externalCreatedDate", "External Created Date", "datetime"),
        *_SYSTEM,
    ),
    links=(
        ("externalOpportunityId", "opportunity", "externalOpportunityId"),
        ("leadId", "lead", "id"),
    ),
)

SALES_PERSON = ObjectType(
    kind="salesperson",
    name="Sales Person",
    id_field="id",
    dedupe_fields=("externalSalesPersonId",),
    searchable=(("externalSalesPersonId",), ("id",), ("email",)),
    fields=(
        _INT_ID,
        _f("externalSalesPersonId", "External Sales Person Id", updateable=False),
        _f("email", "Email", "email"),
        _f("firstName", "First Name"),
        _f("lastName", "Last Name"),
        _f("phone", "Phone", "phone"),
        _f("mobilePhone", "Mobile Phone", "phone"),
        _f("title", "Title"),
        # Sync-owned custom fields: teams travel as sales-person-like owners (team.yaml), with
        # their members' user GUIDs ';'-joined (long for big teams, hence text) and the kind.
        _f("msdTeamMembers", "Microsoft Team Members", "text"),
        _f("msdOwnerKind", "Microsoft Owner Kind"),
        *_SYSTEM,
    ),
)

# The demo custom object: the counterpart of the Dataverse custom table ``new_project``
# (entity file new_project.yaml), one record per project, linked to a person by Marketo lead id.
PROJECT = ObjectType(
    kind="co.project_c",
    name="project_c",
    api_name="project_c",
    plural_name="Projects",
    id_field="marketoGUID",
    dedupe_fields=("externalProjectId",),
    searchable=(("externalProjectId",), ("marketoGUID",), ("leadID",)),
    fields=(
        _GUID,
        _f("externalProjectId", "External Project Id", length=36, updateable=False),
        _f("projectName", "Project Name"),
        _f("budget", "Budget", "currency"),
        _f("startDate", "Start Date", "date"),
        _f("projectStatus", "Project Status"),
        _f("leadID", "Lead Id", "link", related=("Lead", "id")),
        *_SYSTEM,
    ),
)

OBJECT_TYPES: dict[str, ObjectType] = {
    "companies": COMPANY,
    "opportunities": OPPORTUNITY,
    "opportunities/roles": OPPORTUNITY_ROLE,
    "salespersons": SALES_PERSON,
}
CUSTOM_OBJECTS: dict[str, ObjectType] = {"project_c": PROJECT}


class FieldValueError(ValueError):
    """A value that does not fit its field; ``code`` is the Marketo reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _invalid(value: Any, data_type: str, name: str) -> FieldValueError:
    # Marketo's 1001 wording, plus the field name so the caller can tell which value failed.
    return FieldValueError(
        "1001", f"Invalid value '{value}'. Required of type '{data_type}' for field '{name}'"
    )


def format_datetime(value: dt.datetime) -> str:
    """Render a datetime the way Marketo does in records: UTC, seconds, ``Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> dt.datetime:
    """Parse ISO-8601 with ``Z``, ``+0000`` or ``+00:00`` offsets; naive values are UTC.

    Raises:
        ValueError: ``text`` is not a datetime.
    """
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def normalize(field: FieldDef, value: Any) -> Any:
    """Return ``value`` as stored for ``field`` (None for null/empty).

    Raises:
        FieldValueError: The value does not fit the field's type (code 1001).
    """
    if value is None or (isinstance(value, str) and value.strip() == "") or value == "null":
        return None
    kind = field.value_type
    if kind in STRING_TYPES:
        if isinstance(value, (dict, list, bool)):
            raise _invalid(value, kind, field.name)
        text = str(value)
        if kind == "email" and (not text.isascii() or not _EMAIL.match(text)):
            raise _invalid(text, "email", field.name)
        limit = field.max_length
        if limit is not None and len(text) > limit:
            raise FieldValueError("1001", f"Invalid value for '{field.name}': longer than {limit} characters")
        return text
    if kind in ("integer", "score"):
        if isinstance(value, bool):
            raise _invalid(value, "integer", field.name)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise _invalid(value, "integer", field.name)
    if kind in ("float", "currency", "percent"):
        if isinstance(value, bool):
            raise _invalid(value, kind, field.name)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _invalid(value, kind, field.name) from None
    if kind == "boolean":
        if isinstance(value, bool):
            return int(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        raise _invalid(value, "boolean", field.name)
    if kind == "datetime":
        try:
            return format_datetime(parse_datetime(str(value)))
        except ValueError:
            raise _invalid(value, "datetime", field.name) from None
    if kind == "date":
        try:
            return dt.date.fromisoformat(str(value)[:10]).isoformat()
        except ValueError:
            raise _invalid(value, "date", field.name) from None
    return value


def stored_value(field: FieldDef, stored: Any) -> Any:
    """Return a database value as ``field``'s type holds it.

    A lead field created through the API may sit in a column made for another type (its
    catalogue type, or the type it had before bare mode hid it), and SQLite then keeps what it
    can in the column's own affinity: ``"7"`` comes back as ``7`` from an INTEGER column.
    """
    if stored is None:
        return None
    kind = field.value_type
    if kind in STRING_TYPES:
        return stored if isinstance(stored, str) else str(stored)
    try:
        if kind in ("integer", "score", "boolean") and not isinstance(stored, int):
            return int(stored)
        if kind in ("float", "currency", "percent") and not isinstance(stored, float):
            return float(stored)
    except (TypeError, ValueError):
        return stored  # written before the field got its type; shown as it is
    return stored


def to_json(field: FieldDef, stored: Any) -> Any:
    """Return a stored value as the API shows it (booleans back to true/false)."""
    value = stored_value(field, stored)
    if value is not None and field.value_type == "boolean" and isinstance(value, int):
        return bool(value)
    return value


def to_csv(field: FieldDef, stored: Any) -> str:
    """Return a stored value as a bulk file cell; null is the literal ``null`` as in Marketo."""
    value = stored_value(field, stored)
    if value is None:
        return "null"
    if field.value_type == "boolean" and isinstance(value, int):
        return "true" if value else "false"
    return str(value)

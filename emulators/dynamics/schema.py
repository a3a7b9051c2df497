"""The tables the Dataverse emulator serves: columns, types, lookups and alternate keys.

Names and types follow the Dataverse standard table definitions listed in
``dynamics-web-api.md`` §10 and the default field mapping of ``sync-semantics.md`` §3. This module
is the *initial* schema: the live schema is kept in the emulator's database (table
``attribute_meta``) so that schema-drift tests can drop or rename a column at run time.

Storage convention: a lookup column ``parentaccountid`` is stored in SQL column ``parentaccountid``
(the GUID) and exposed on the wire as ``_parentaccountid_value``; a polymorphic lookup (owner,
customer) also stores the target table in ``<name>type`` (Dataverse's own EntityName column).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# Attribute types as Dataverse names them in ``AttributeType``.
STRING = "String"
MEMO = "Memo"
INTEGER = "Integer"
BIGINT = "BigInt"
MONEY = "Money"
DECIMAL = "Decimal"
DOUBLE = "Double"
BOOLEAN = "Boolean"
DATETIME = "DateTime"
PICKLIST = "Picklist"
STATE = "State"
STATUS = "Status"
LOOKUP = "Lookup"
CUSTOMER = "Customer"
OWNER = "Owner"
UNIQUEID = "Uniqueidentifier"

LOOKUP_TYPES = frozenset({LOOKUP, CUSTOMER, OWNER})
CHOICE_TYPES = frozenset({PICKLIST, STATE, STATUS})

METADATA_NAMESPACE = uuid.UUID("6f0d3c1e-8f5e-4bb8-9d8c-6c7f1d9a2e10")

# Table SchemaNames of the standard tables (privilege names are built from them). A table stored
# by an older emulator has no SchemaName of its own and gets its name from here.
STANDARD_SCHEMA_NAMES = {
    "lead": "Lead",
    "contact": "Contact",
    "account": "Account",
    "opportunity": "Opportunity",
    "systemuser": "SystemUser",
    "team": "Team",
    "businessunit": "BusinessUnit",
    "connection": "Connection",
    "connectionrole": "ConnectionRole",
}


def attribute_metadata_id(table: str, column: str) -> str:
    """The ``MetadataId`` of a column (stable: the same table and column give the same id)."""
    return str(uuid.uuid5(METADATA_NAMESPACE, f"{table}.{column}"))


@dataclass(frozen=True)
class Attribute:
    """One column of a table.

    Attributes:
        name: Logical name (lower case), also the SQL column name.
        type: Dataverse ``AttributeType``.
        targets: Tables a lookup may point to (several for customer and owner lookups).
        date_only: For ``DateTime`` columns with ``DateOnly`` behaviour (``2024-05-01``).
        read_only: Computed or server-maintained (not valid for create/update).
        options: Choice values and labels (a Boolean column's are its true and false labels).
        custom: A custom column (publisher prefix), for ``IsCustomAttribute``.
        schema_name: ``SchemaName`` as created (the logical name when empty).
        display_name: ``DisplayName`` label (the logical name when empty).
        max_length: Longest accepted text of a String or Memo column (the type's limit when None).
        required_level: ``RequiredLevel`` as created (reported only; the Web API does not enforce
            ``ApplicationRequired``).
        default: Value a create without this column stores (a Boolean column's ``DefaultValue``;
            a server-kept counter's starting value, such as a list's ``membercount``).
    """

    name: str
    type: str
    targets: tuple[str, ...] = ()
    date_only: bool = False
    read_only: bool = False
    options: tuple[tuple[int, str], ...] = ()
    custom: bool = False
    schema_name: str = ""
    display_name: str = ""
    max_length: int | None = None
    required_level: str = "None"
    default: bool | int | None = None

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def polymorphic(self) -> bool:
        return len(self.targets) > 1

    @property
    def wire_name(self) -> str:
        """The JSON property name: ``_x_value`` for lookups, the logical name otherwise."""
        return f"_{self.name}_value" if self.is_lookup else self.name


@dataclass
class Table:
    """One Dataverse table as the emulator serves it.

    Attributes:
        change_tracking: ``ChangeTrackingEnabled`` (a table stored by an older emulator has it on).
        schema_name: The table's ``SchemaName`` (privilege names end with it).
        key_info: Per alternate key (columns joined by ``,``): its ``SchemaName``, ``DisplayName``
            and ``EntityKeyIndexStatus`` when it was created through the Web API.
        is_activity: ``IsActivity``: rows are activities (primary key ``activityid``), mirrored
            into ``activitypointer`` and bound to their regarding record as
            ``regardingobjectid_<target>_<table>`` (see :mod:`emulators.dynamics.activities`).
    """

    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    attributes: dict[str, Attribute] = field(default_factory=dict)
    alternate_keys: tuple[tuple[str, ...], ...] = ()
    custom: bool = False
    object_type_code: int = 10000
    change_tracking: bool = True
    schema_name: str = ""
    key_info: dict[str, dict[str, str]] = field(default_factory=dict)
    is_activity: bool = False

    def __post_init__(self) -> None:
        if not self.schema_name:
            self.schema_name = STANDARD_SCHEMA_NAMES.get(self.logical_name, self.logical_name)

    @property
    def metadata_id(self) -> str:
        return str(uuid.uuid5(METADATA_NAMESPACE, self.logical_name))

    def create_defaults(self) -> dict[str, int]:
        """Stored values of the columns a create fills when the body leaves them out.

        Cached for the current ``attributes`` dict (same rule as :meth:`by_wire_name`).
        """
        cached = self.__dict__.get("_default_cache")
        if cached is None or cached[0] is not self.attributes:
            defaults = {a.name: int(a.default) for a in self.attributes.values() if a.default is not None}
            cached = (self.attributes, defaults)
            self.__dict__["_default_cache"] = cached
        return cached[1]

    def by_wire_name(self) -> dict[str, Attribute]:
        """Map JSON property names (``_x_value`` for lookups) to attributes.

        Cached for the current ``attributes`` dict (a schema change replaces it), because the
        write path asks once per record.
        """
        cached = self.__dict__.get("_wire_cache")
        if cached is None or cached[0] is not self.attributes:
            cached = (self.attributes, {a.wire_name: a for a in self.attributes.values()})
            self.__dict__["_wire_cache"] = cached
        return cached[1]

    def navigation(self) -> dict[str, tuple[Attribute, str]]:
        """Cached :meth:`build_navigation` (same rule as :meth:`by_wire_name`)."""
        cached = self.__dict__.get("_nav_cache")
        if cached is None or cached[0] is not self.attributes:
            cached = (self.attributes, self.build_navigation())
            self.__dict__["_nav_cache"] = cached
        return cached[1]

    def build_navigation(self) -> dict[str, tuple[Attribute, str]]:
        """Map ``@odata.bind`` navigation property names to (lookup attribute, target table).

        A single-target lookup binds under its own name (``parentaccountid``); a customer lookup
        binds as ``<name>_<target>`` (``parentcustomerid_account``), as Dataverse names them. The
        owner binds as ``ownerid`` whatever the target, which the bound URL's entity set decides.
        An activity's regarding lookup also binds as ``regardingobjectid_<target>_<activity>``
        (``regardingobjectid_contact_campaignresponse``), the name Dataverse documents for it.
        """
        nav: dict[str, tuple[Attribute, str]] = {}
        for attr in self.attributes.values():
            if not attr.is_lookup:
                continue
            if attr.type == OWNER or not attr.polymorphic:
                nav[attr.name] = (attr, attr.targets[0])
                continue
            for target in attr.targets:
                nav[f"{attr.name}_{target}"] = (attr, target)
                if self.is_activity and attr.name == "regardingobjectid":
                    nav[f"{attr.name}_{target}_{self.logical_name}"] = (attr, target)
        return nav


def _opts(*labels: str, start: int = 1) -> tuple[tuple[int, str], ...]:
    return tuple((start + i, label) for i, label in enumerate(labels))


_ADDRESS = [
    Attribute(f"address1_{part}", STRING)
    for part in ("line1", "line2", "line3", "city", "stateorprovince", "postalcode", "country")
]
_SALES_INSIGHT = [  # created by the vendor's solution in a real org (sync-semantics.md §3.1 note A)
    Attribute("mkt_leadscore", INTEGER, custom=True),
    Attribute("mkt_relativescore", INTEGER, custom=True),
    Attribute("mkt_priority", INTEGER, custom=True),
    Attribute("mkt_urgency", DOUBLE, custom=True),  # a float in Marketo; lead.yaml casts it decimal
    Attribute("mkt_lastinterestingmomentdate", DATETIME, custom=True),
    Attribute("mkt_lastinterestingmomentdesc", STRING, custom=True),
    Attribute("mkt_leadinterestingmomentsource", STRING, custom=True),
    Attribute("mkt_lastinterestingmomenttype", STRING, custom=True),
]
_CONTACT_PREFS = [
    Attribute("donotemail", BOOLEAN),
    Attribute("donotphone", BOOLEAN),
    Attribute("donotbulkemail", BOOLEAN),
    Attribute("donotfax", BOOLEAN),
    Attribute("donotsendmm", BOOLEAN),
    Attribute("preferredcontactmethodcode", PICKLIST, options=_opts("Any", "Email", "Phone", "Fax", "Mail")),
]
_PERSON = [
    Attribute("salutation", STRING),
    Attribute("firstname", STRING),
    Attribute("middlename", STRING),
    Attribute("lastname", STRING),
    Attribute("fullname", STRING, read_only=True),
    Attribute("emailaddress1", STRING),
    Attribute("jobtitle", STRING),
    Attribute("telephone1", STRING),
    Attribute("telephone2", STRING),
    Attribute("mobilephone", STRING),
    Attribute("fax", STRING),
    Attribute("description", MEMO),
]


def _system_columns(owned: bool, sync_filter: bool) -> list[Attribute]:
    cols = [
        Attribute("createdon", DATETIME, read_only=True),
        Attribute("modifiedon", DATETIME, read_only=True),
        Attribute("versionnumber", BIGINT, read_only=True),
        Attribute("createdby", LOOKUP, targets=("systemuser",), read_only=True),
        Attribute("modifiedby", LOOKUP, targets=("systemuser",), read_only=True),
    ]
    if owned:
        cols.append(Attribute("ownerid", OWNER, targets=("systemuser", "team")))
    if sync_filter:
        cols.append(Attribute("new_synctomkto", BOOLEAN, custom=True))
    return cols


def _merged(logical: str) -> list[Attribute]:
    """The columns the ``Merge`` action sets on the subordinate record (read-only otherwise)."""
    return [
        Attribute("merged", BOOLEAN, read_only=True),
        Attribute("masterid", LOOKUP, targets=(logical,), read_only=True),
    ]


def _table(
    logical: str,
    entity_set: str,
    primary_name: str,
    columns: list[Attribute],
    *,
    owned: bool = True,
    sync_filter: bool = True,
    keys: tuple[tuple[str, ...], ...] = (),
    custom: bool = False,
    otc: int,
) -> Table:
    pk = Attribute(f"{logical}id", UNIQUEID)
    attrs = [pk, *columns, *_system_columns(owned, sync_filter)]
    return Table(
        logical_name=logical,
        entity_set=entity_set,
        primary_id=pk.name,
        primary_name=primary_name,
        attributes={a.name: a for a in attrs},
        alternate_keys=keys,
        custom=custom,
        object_type_code=otc,
    )


# The standard account industry option set (codes 1-33), as account.yaml maps it.
INDUSTRIES = (
    "Accounting",
    "Agriculture and Non-petrol Natural Resource Extraction",
    "Broadcasting Printing and Publishing",
    "Brokers",
    "Building Supply Retail",
    "Business Services",
    "Consulting",
    "Consumer Services",
    "Design, Direction and Creative Management",
    "Distributors, Dispatchers and Processors",
    "Doctor's Offices and Clinics",
    "Durable Manufacturing",
    "Eating and Drinking Places",
    "Entertainment Retail",
    "Equipment Rental and Leasing",
    "Financial",
    "Food and Tobacco Processing",
    "Inbound Capital Intensive Processing",
    "Inbound Repair and Services",
    "Insurance",
    "Legal Services",
    "Non-Durable Merchandise Retail",
    "Outbound Consumer Service",
    "Petrochemical Extraction and Distribution",
    "Service Retail",
    "SIG Affiliations",
    "Social Services",
    "Special Outbound Trade Contractors",
    "Specialty Realty",
    "Transportation",
    "Utility Creation and Distribution",
    "Vehicle Retail",
    "Wholesale",
)
LEAD_STATUS = _opts(
    "New", "Contacted", "Qualified", "Lost", "Cannot Contact", "No Longer Interested", "Canceled"
)
OPEN_CLOSED = (STATE, STATUS)


def initial_tables() -> dict[str, Table]:
    """Return the tables a fresh emulator database starts with, keyed by logical name."""
    tables = [
        _table(
            "lead",
            "leads",
            "fullname",
            [
                Attribute("subject", STRING),
                *_PERSON,
                Attribute("companyname", STRING),
                Attribute("websiteurl", STRING),
                *_ADDRESS,
                *_CONTACT_PREFS,
                Attribute(
                    "leadsourcecode",
                    PICKLIST,
                    options=_opts(
                        "Advertisement",
                        "Employee Referral",
                        "External Referral",
                        "Partner",
                        "Public Relations",
                        "Seminar",
                        "Trade Show",
                        "Web",
                        "Word of Mouth",
                        "Other",
                    ),
                ),
                Attribute("leadqualitycode", PICKLIST, options=_opts("Hot", "Warm", "Cold")),
                Attribute("revenue", MONEY),
                Attribute("statecode", STATE, options=_opts("Open", "Qualified", "Disqualified", start=0)),
                Attribute("statuscode", STATUS, options=LEAD_STATUS),
                Attribute("parentaccountid", LOOKUP, targets=("account",)),
                Attribute("parentcontactid", LOOKUP, targets=("contact",)),
                Attribute("qualifyingopportunityid", LOOKUP, targets=("opportunity",)),
                *_merged("lead"),
                *_SALES_INSIGHT,
            ],
            otc=4,  # no alternate key on leads: duplicate lead emails are allowed, as in a default org
        ),
        _table(
            "contact",
            "contacts",
            "fullname",
            [
                *_PERSON,
                *_ADDRESS,
                *_CONTACT_PREFS,
                Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
                Attribute("statuscode", STATUS, options=_opts("Active", "Inactive")),
                Attribute("parentcustomerid", CUSTOMER, targets=("account", "contact")),
                Attribute("originatingleadid", LOOKUP, targets=("lead",)),
                *_merged("contact"),
                *_SALES_INSIGHT,
            ],
            keys=(("emailaddress1",),),
            otc=2,
        ),
        _table(
            "account",
            "accounts",
            "name",
            [
                Attribute("name", STRING),
                Attribute("accountnumber", STRING),
                Attribute("websiteurl", STRING),
                Attribute("telephone1", STRING),
                Attribute("emailaddress1", STRING),
                Attribute("industrycode", PICKLIST, options=_opts(*INDUSTRIES)),
                Attribute("businesstypecode", PICKLIST, options=_opts("Corporation", "Partnership", "Other")),
                Attribute("revenue", MONEY),
                Attribute("numberofemployees", INTEGER),
                Attribute("sic", STRING),
                Attribute("description", MEMO),
                *_ADDRESS,
                Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
                Attribute("statuscode", STATUS, options=_opts("Active", "Inactive")),
                Attribute("primarycontactid", LOOKUP, targets=("contact",)),
                Attribute("parentaccountid", LOOKUP, targets=("account",)),
                Attribute("originatingleadid", LOOKUP, targets=("lead",)),
                *_merged("account"),
            ],
            keys=(("accountnumber",),),
            otc=1,
        ),
        _table(
            "opportunity",
            "opportunities",
            "name",
            [
                Attribute("name", STRING),
                Attribute("description", MEMO),
                Attribute("estimatedvalue", MONEY),
                Attribute("estimatedclosedate", DATETIME, date_only=True),
                Attribute("actualvalue", MONEY),
                Attribute("actualclosedate", DATETIME, date_only=True),
                Attribute("closeprobability", INTEGER),
                Attribute("stepname", STRING),
                Attribute(
                    "salesstage", PICKLIST, options=_opts("Qualify", "Develop", "Propose", "Close", start=0)
                ),
                Attribute("statecode", STATE, options=_opts("Open", "Won", "Lost", start=0)),
                Attribute(
                    "statuscode",
                    STATUS,
                    options=_opts("In Progress", "On Hold", "Won", "Canceled", "Out-Sold"),
                ),
                Attribute("customerid", CUSTOMER, targets=("account", "contact")),
                Attribute("parentaccountid", LOOKUP, targets=("account",)),
                Attribute("parentcontactid", LOOKUP, targets=("contact",)),
                Attribute("originatingleadid", LOOKUP, targets=("lead",)),
            ],
            otc=3,
        ),
        _table(
            "systemuser",
            "systemusers",
            "fullname",
            [
                Attribute("firstname", STRING),
                Attribute("lastname", STRING),
                Attribute("fullname", STRING, read_only=True),
                Attribute("internalemailaddress", STRING),
                Attribute("domainname", STRING),
                Attribute("title", STRING),
                Attribute("mobilephone", STRING),
                Attribute("address1_telephone1", STRING),
                Attribute("isdisabled", BOOLEAN),
                Attribute("azureactivedirectoryobjectid", UNIQUEID),
                Attribute("applicationid", UNIQUEID),
                Attribute(
                    "accessmode",
                    PICKLIST,
                    options=_opts(
                        "Read-Write", "Administrative", "Read", "Support User", "Non-interactive", start=0
                    ),
                ),
                Attribute("businessunitid", LOOKUP, targets=("businessunit",)),
            ],
            owned=False,
            sync_filter=False,
            otc=8,
        ),
        _table(
            "team",
            "teams",
            "name",
            [
                Attribute("name", STRING),
                Attribute("description", MEMO),
                Attribute(
                    "teamtype",
                    PICKLIST,
                    options=_opts(
                        "Owner",
                        "Access",
                        "Microsoft Entra ID Security Group",
                        "Microsoft Entra ID Office Group",
                        start=0,
                    ),
                ),
                Attribute("isdefault", BOOLEAN),
                Attribute("azureactivedirectoryobjectid", UNIQUEID),
                Attribute("businessunitid", LOOKUP, targets=("businessunit",)),
                Attribute("administratorid", LOOKUP, targets=("systemuser",)),
            ],
            owned=False,
            sync_filter=False,
            otc=9,
        ),
        _table(
            "businessunit",
            "businessunits",
            "name",
            [Attribute("name", STRING)],
            owned=False,
            sync_filter=False,
            otc=10,
        ),
        # Opportunity roles as Dataverse models them: connections between an opportunity
        # (record1) and a contact (record2) carrying a connection role (sync-semantics.md §3.4).
        _table(
            "connectionrole",
            "connectionroles",
            "name",
            [
                Attribute("name", STRING),
                Attribute(
                    "category",
                    PICKLIST,
                    options=_opts(
                        "Business",
                        "Family",
                        "Social",
                        "Sales",
                        "Other",
                        "Stakeholder",
                        "Sales Team",
                        "Service",
                    ),
                ),
            ],
            owned=False,
            sync_filter=False,
            otc=3231,
        ),
        _table(
            "connection",
            "connections",
            "name",
            [
                Attribute("name", STRING),
                Attribute("description", MEMO),
                Attribute("ismaster", BOOLEAN),
                Attribute("record1id", LOOKUP, targets=("opportunity", "account", "contact", "lead")),
                Attribute("record2id", LOOKUP, targets=("contact", "account", "lead", "systemuser")),
                Attribute("record1roleid", LOOKUP, targets=("connectionrole",)),
                Attribute("record2roleid", LOOKUP, targets=("connectionrole",)),
                Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
            ],
            sync_filter=False,
            otc=3234,
        ),
        _table(
            "new_project",
            "new_projects",
            "new_name",
            [
                Attribute("new_name", STRING, custom=True),
                Attribute("new_code", STRING, custom=True),
                Attribute("new_budget", MONEY, custom=True),
                Attribute("new_startdate", DATETIME, date_only=True, custom=True),
                Attribute(
                    "new_status",
                    PICKLIST,
                    custom=True,
                    options=_opts("Planned", "Active", "Done", start=100000000),
                ),
                Attribute("new_description", MEMO, custom=True),
                Attribute("new_accountid", LOOKUP, targets=("account",), custom=True),
                Attribute("new_contactid", LOOKUP, targets=("contact",), custom=True),
                Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
                Attribute("statuscode", STATUS, options=_opts("Active", "Inactive")),
            ],
            keys=(("new_code",),),
            custom=True,
            otc=10001,
        ),
    ]
    # Campaigns, marketing lists and activities (issue 20); imported here, as that module builds
    # its tables from this one's helpers.
    from emulators.dynamics.marketing_schema import marketing_tables

    tables.extend(marketing_tables())
    return {t.logical_name: t for t in tables}


# Records the Web API computes from others (Dataverse's default full-name format "First Last").
COMPUTED_FULLNAME = frozenset({"lead", "contact", "systemuser"})

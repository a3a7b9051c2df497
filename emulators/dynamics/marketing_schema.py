"""Campaigns, marketing lists and activities: the tables issue 20 syncs Marketo programs into.

Names, types and choice values follow Microsoft's table references (campaign, list, listmember,
campaignitem, campaignresponse, activitypointer, activityparty). What the references do not settle
is marked "unconfirmed" beside it.

- ``campaign`` / ``campaigns``: a Marketo program's counterpart. There is no ``actualcost``
  column in the current reference: costs are ``budgetedcost``, ``othercost`` and the computed,
  read-only ``totalactualcost`` (left empty here: no campaign activities are emulated).
- ``list`` / ``lists``: marketing lists; ``createdfromcode`` (1 account, 2 contact, 4 lead) fixes
  the member table and cannot change after create; ``type`` false = static; ``membercount`` is
  kept by the member actions (the reference lists it as writable; writes to it are ignored here).
- ``listmember`` / ``listmembers``: one row per member, written only by the list actions
  (:mod:`emulators.dynamics.marketing`); read with ``GET listmembers?$filter=_listid_value eq …``.
- ``campaignitem`` / ``campaignitems``: a list attached to a campaign (``AddItemCampaign``);
  ``entityid`` is a plain GUID and ``entitytype`` the item's table, as documented.
- ``campaignresponse`` and the custom ``new_marketoactivity`` are activities (``IsActivity``):
  primary key ``activityid``, a ``regardingobjectid`` lookup, mirrored into the read-only
  ``activitypointer`` table that timelines read, parties in ``activityparty``
  (:mod:`emulators.dynamics.activities`).
"""

from __future__ import annotations

from emulators.dynamics.schema import (
    BOOLEAN,
    DATETIME,
    INTEGER,
    LOOKUP,
    MEMO,
    MONEY,
    PICKLIST,
    STATE,
    STATUS,
    STRING,
    UNIQUEID,
    Attribute,
    Table,
    _opts,
    _system_columns,
)

ACTIVITY_ID = "activityid"
POINTER = "activitypointer"
PARTY = "activityparty"
CUSTOM_ACTIVITY = "new_marketoactivity"
# Member table per ``createdfromcode`` of a list.
MEMBER_TABLES = {1: "account", 2: "contact", 4: "lead"}
CUSTOMER_PARTY = 11  # participationtypemask "Customer"

PRIORITY = _opts("Low", "Normal", "High", start=0)
PARTICIPATION = _opts(
    "Sender",
    "To Recipient",
    "CC Recipient",
    "BCC Recipient",
    "Required attendee",
    "Optional attendee",
    "Organizer",
    "Regarding",
    "Owner",
    "Resource",
    "Customer",
)


def _make(
    logical: str,
    entity_set: str,
    schema_name: str,
    primary_id: str,
    primary_name: str,
    columns: list[Attribute],
    *,
    otc: int,
    owned: bool = True,
    custom: bool = False,
    is_activity: bool = False,
    change_tracking: bool = True,
    keys: tuple[tuple[str, ...], ...] = (),
    key_info: dict[str, dict[str, str]] | None = None,
) -> Table:
    attrs = [Attribute(primary_id, UNIQUEID), *columns, *_system_columns(owned, sync_filter=False)]
    return Table(
        logical_name=logical,
        entity_set=entity_set,
        primary_id=primary_id,
        primary_name=primary_name,
        attributes={a.name: a for a in attrs},
        alternate_keys=keys,
        custom=custom,
        object_type_code=otc,
        change_tracking=change_tracking,
        schema_name=schema_name,
        key_info=dict(key_info or {}),
        is_activity=is_activity,
    )


def _activity_columns(regarding: tuple[str, ...], *, read_only: bool = False) -> list[Attribute]:
    """The columns every activity shares with ``activitypointer``."""
    return [
        Attribute("subject", STRING, max_length=200, read_only=read_only),
        Attribute("description", MEMO, read_only=read_only),
        Attribute("actualstart", DATETIME, read_only=read_only),
        Attribute("actualend", DATETIME, read_only=read_only),
        Attribute("scheduledstart", DATETIME, read_only=read_only),
        Attribute("scheduledend", DATETIME, read_only=read_only),
        Attribute("prioritycode", PICKLIST, options=PRIORITY, read_only=read_only),
        Attribute("regardingobjectid", LOOKUP, targets=regarding, read_only=read_only),
        Attribute("activitytypecode", STRING, read_only=True),
    ]


def _campaign() -> Table:
    status = _opts("Proposed", "Ready To Launch", "Launched", "Completed", "Canceled", "Suspended", start=0)
    return _make(
        "campaign",
        "campaigns",
        "Campaign",
        "campaignid",
        "name",
        [
            Attribute("name", STRING, max_length=128, required_level="SystemRequired"),
            Attribute("codename", STRING, max_length=32),
            Attribute(
                "typecode",
                PICKLIST,
                options=_opts("Advertisement", "Direct Marketing", "Event", "Co-branding", "Other"),
            ),
            Attribute("description", MEMO, max_length=2000),
            Attribute("objective", MEMO, max_length=2000),
            Attribute("message", STRING, max_length=256),
            Attribute("promotioncodename", STRING, max_length=128),
            Attribute("budgetedcost", MONEY),
            Attribute("othercost", MONEY),
            Attribute("expectedrevenue", MONEY),
            Attribute("totalactualcost", MONEY, read_only=True),
            Attribute("expectedresponse", INTEGER),
            Attribute("proposedstart", DATETIME),
            Attribute("proposedend", DATETIME),
            Attribute("actualstart", DATETIME),
            Attribute("actualend", DATETIME),
            Attribute("istemplate", BOOLEAN, default=False),
            Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
            Attribute("statuscode", STATUS, options=(*status, (6, "Inactive"))),
        ],
        otc=4400,
    )


def _list() -> Table:
    return _make(
        "list",
        "lists",
        "List",
        "listid",
        "listname",
        [
            Attribute("listname", STRING, max_length=128, required_level="SystemRequired"),
            Attribute(
                "createdfromcode",
                PICKLIST,
                options=((1, "Account"), (2, "Contact"), (4, "Lead")),
                required_level="SystemRequired",
            ),
            Attribute("type", BOOLEAN, options=((1, "Dynamic"), (0, "Static")), default=False),
            Attribute("membercount", INTEGER, read_only=True, default=0),
            Attribute("lockstatus", BOOLEAN, default=False),
            Attribute("description", MEMO, max_length=2000),
            Attribute("purpose", STRING, max_length=512),
            Attribute("source", STRING, max_length=128),
            Attribute("query", STRING, max_length=1_073_741_823),
            Attribute("cost", MONEY),
            Attribute("lastusedon", DATETIME),
            Attribute("donotsendonoptout", BOOLEAN, default=True),
            Attribute("ignoreinactivelistmembers", BOOLEAN, default=True),
            Attribute("statecode", STATE, options=_opts("Active", "Inactive", start=0)),
            Attribute("statuscode", STATUS, options=_opts("Active", "Inactive", start=0)),
        ],
        otc=4300,
    )


def _list_member() -> Table:
    return _make(
        "listmember",
        "listmembers",
        "ListMember",
        "listmemberid",
        "name",
        [
            Attribute("name", STRING, read_only=True),
            Attribute("listid", LOOKUP, targets=("list",), read_only=True),
            Attribute("entityid", LOOKUP, targets=("account", "contact", "lead"), read_only=True),
            Attribute("entitytype", STRING, read_only=True),
        ],
        otc=4301,
        owned=False,  # OwnershipType None in the reference
    )


def _campaign_item() -> Table:
    return _make(
        "campaignitem",
        "campaignitems",
        "CampaignItem",
        "campaignitemid",
        "name",
        [
            Attribute("name", STRING, read_only=True),
            Attribute("campaignid", LOOKUP, targets=("campaign",), read_only=True),
            Attribute("entityid", UNIQUEID, read_only=True),
            Attribute("entitytype", STRING, read_only=True),
        ],
        otc=4403,  # unconfirmed
    )


def _campaign_response() -> Table:
    return _make(
        "campaignresponse",
        "campaignresponses",
        "CampaignResponse",
        ACTIVITY_ID,
        "subject",
        [
            *_activity_columns(("campaign", "lead", "contact", "account")),
            Attribute(
                "responsecode",
                PICKLIST,
                options=_opts("Interested", "Not Interested", "Do Not Send Marketing Materials", "Error"),
            ),
            Attribute(
                "channeltypecode",
                PICKLIST,
                options=_opts("Email", "Phone", "Fax", "Letter", "Appointment", "Others"),
            ),
            Attribute("receivedon", DATETIME),
            Attribute("firstname", STRING),
            Attribute("lastname", STRING),
            Attribute("companyname", STRING),
            Attribute("emailaddress", STRING),
            Attribute("telephone", STRING),
            Attribute("promotioncodename", STRING),
            Attribute("category", STRING),
            Attribute("subcategory", STRING),
            Attribute("statecode", STATE, options=_opts("Open", "Closed", "Canceled", start=0)),
            Attribute("statuscode", STATUS, options=_opts("Open", "Closed", "Canceled")),
        ],
        otc=4401,
        is_activity=True,
    )


def _marketo_activity() -> Table:
    """The custom activity one Marketo activity becomes, upserted by its Marketo id."""
    return _make(
        CUSTOM_ACTIVITY,
        "new_marketoactivities",
        CUSTOM_ACTIVITY,
        ACTIVITY_ID,
        "subject",
        [
            *_activity_columns(("lead", "contact")),
            Attribute("new_marketoactivityid", STRING, max_length=100, custom=True),
            Attribute("new_marketoleadid", INTEGER, custom=True),
            Attribute("new_activitytypeid", INTEGER, custom=True),
            Attribute("new_activitytypename", STRING, max_length=200, custom=True),
            Attribute("new_primaryattributevalue", STRING, max_length=4000, custom=True),
            Attribute("new_attributes", MEMO, custom=True),
            Attribute("statecode", STATE, options=_opts("Open", "Completed", "Canceled", start=0)),
            Attribute("statuscode", STATUS, options=_opts("Open", "Completed", "Canceled")),
        ],
        otc=10002,
        custom=True,
        is_activity=True,
        keys=(("new_marketoactivityid",),),
        key_info={
            "new_marketoactivityid": {
                "SchemaName": "new_marketoactivityid_key",
                "DisplayName": "Marketo activity id",
                "Status": "Active",
            }
        },
    )


def _activity_pointer() -> Table:
    """Every activity's shared columns, read-only (``GET`` only, as documented)."""
    return _make(
        POINTER,
        "activitypointers",
        "ActivityPointer",
        ACTIVITY_ID,
        "subject",
        [
            *_activity_columns(("campaign", "lead", "contact", "account"), read_only=True),
            Attribute(
                "statecode",
                STATE,
                options=_opts("Open", "Completed", "Canceled", "Scheduled", start=0),
                read_only=True,
            ),
            Attribute(
                "statuscode",
                STATUS,
                options=_opts("Open", "Completed", "Canceled", "Scheduled"),
                read_only=True,
            ),
        ],
        otc=4200,
        change_tracking=False,  # unconfirmed whether Dataverse can track activitypointer
    )


def _activity_party() -> Table:
    """Who takes part in an activity, and how (``GET`` of the collection only, as documented)."""
    return _make(
        PARTY,
        "activityparties",
        "ActivityParty",
        "activitypartyid",
        "partyidname",
        [
            Attribute("partyidname", STRING, read_only=True),
            Attribute("activityid", LOOKUP, targets=(POINTER,), read_only=True),
            Attribute("partyid", LOOKUP, targets=("account", "contact", "lead", "systemuser", "campaign")),
            Attribute("participationtypemask", PICKLIST, options=PARTICIPATION),
            Attribute("addressused", STRING),
        ],
        otc=135,
        owned=False,
        change_tracking=False,  # unconfirmed
    )


def marketing_tables() -> list[Table]:
    """The campaign, list and activity tables of a fresh emulator database."""
    return [
        _campaign(),
        _list(),
        _list_member(),
        _campaign_item(),
        _campaign_response(),
        _marketo_activity(),
        _activity_pointer(),
        _activity_party(),
    ]

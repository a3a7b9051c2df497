"""The activity types the emulator writes or accepts, as ``GET /rest/v1/activities/types.json`` lists them.

Ids and names are Marketo's standard ones (Adobe's activity type table: 1 Visit Webpage, 2 Fill
Out Form, 6 Send Email, 7 Email Delivered, 10 Open Email, 11 Click Email, 12 New Lead, 13 Change
Data Value, 32 Merge Leads, 37 Delete Lead, 46 Interesting Moment, 104 Change Status in
Progression). Attribute lists: Fill Out Form as in Adobe's types sample, Visit Webpage as in its
activities sample, Change Status in Progression as in its bulk activity sample; the others'
attribute and primary attribute names are unconfirmed.
"""

from __future__ import annotations

from typing import Any

VISIT_WEBPAGE, FILL_OUT_FORM, SEND_EMAIL, EMAIL_DELIVERED, OPEN_EMAIL, CLICK_EMAIL = 1, 2, 6, 7, 10, 11
NEW_LEAD, CHANGE_DATA_VALUE, MERGE_LEADS, DELETE_LEAD = 12, 13, 32, 37
INTERESTING_MOMENT, CHANGE_STATUS_IN_PROGRESSION = 46, 104


def _type(
    ident: int, name: str, description: str, primary: tuple[str, str], *attrs: tuple[str, str]
) -> dict[str, Any]:
    return {
        "id": ident,
        "name": name,
        "description": description,
        "primaryAttribute": {"name": primary[0], "dataType": primary[1]},
        "attributes": [{"name": n, "dataType": t} for n, t in attrs],
    }


_MAILING = ("Mailing ID", "integer")
_EMAIL_ATTRS = (("Campaign Run ID", "integer"), ("Choice Number", "integer"), ("Step ID", "integer"))
_CLIENT = (("Device", "string"), ("Is Mobile Device", "boolean"), ("Platform", "string"),
           ("User Agent", "string"))  # fmt: skip

ACTIVITY_TYPES: list[dict[str, Any]] = [
    _type(VISIT_WEBPAGE, "Visit Webpage", "User visits a web page", ("Webpage ID", "integer"),
          ("Client IP Address", "string"), ("Query Parameters", "string"), ("Referrer URL", "string"),
          ("User Agent", "string"), ("Webpage URL", "string")),
    _type(FILL_OUT_FORM, "Fill Out Form", "User fills out and submits form on web page",
          ("Webform ID", "integer"), ("Client IP Address", "string"), ("Form Fields", "text"),
          ("Query Parameters", "string"), ("Referrer URL", "string"), ("User Agent", "string"),
          ("Webpage ID", "integer")),
    _type(SEND_EMAIL, "Send Email", "Send Marketo Email to a person", _MAILING, *_EMAIL_ATTRS),
    _type(EMAIL_DELIVERED, "Email Delivered", "Marketo Email is delivered to a person", _MAILING,
          *_EMAIL_ATTRS),
    _type(OPEN_EMAIL, "Open Email", "User opens Marketo Email", _MAILING, *_EMAIL_ATTRS, *_CLIENT),
    _type(CLICK_EMAIL, "Click Email", "User clicks on a link in a Marketo Email", _MAILING,
          *_EMAIL_ATTRS, *_CLIENT, ("Link", "string")),
    _type(NEW_LEAD, "New Lead", "New person/record is added to the lead database", ("Lead ID", "integer"),
          ("Source Type", "string")),
    _type(CHANGE_DATA_VALUE, "Change Data Value", "Changed attribute value for a person",
          ("Attribute Name", "integer"), ("New Value", "text"), ("Old Value", "text"), ("Reason", "text"),
          ("Source", "string")),
    _type(MERGE_LEADS, "Merge Leads", "Merge leads", ("Lead ID", "integer"), ("Merge IDs", "text"),
          ("Merged in Sales", "boolean"), ("Merge Source", "string"), ("Master Updated", "boolean")),
    _type(DELETE_LEAD, "Delete Lead", "Delete lead from the lead database", ("Lead ID", "integer"),
          ("Remove from CRM", "boolean")),
    _type(INTERESTING_MOMENT, "Interesting Moment", "Interesting moment", ("Milestone ID", "integer"),
          ("Type", "string"), ("Description", "text"), ("Source", "string")),
    _type(CHANGE_STATUS_IN_PROGRESSION, "Change Status in Progression", "Change a program member's status",
          ("Program ID", "integer"), ("Acquired By", "boolean"), ("New Status ID", "integer"),
          ("New Status", "string"), ("Old Status ID", "integer"), ("Old Status", "string"),
          ("Program Member ID", "integer"), ("Reason", "string"), ("Success", "boolean")),
]  # fmt: skip

TYPE_IDS = frozenset(t["id"] for t in ACTIVITY_TYPES)

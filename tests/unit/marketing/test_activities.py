"""The activity mapping file and the transform of Marketo activities into timeline rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from crm_sync.config import ConfigError
from crm_sync.marketing.activities import (
    INVALID,
    WAITING,
    PersonTable,
    from_export,
    from_feed,
    person_targets,
    to_timeline_rows,
    upsert_records,
)
from crm_sync.marketing.activity_config import (
    ActivityMapping,
    load_activities,
    parse_activities,
    resolve_types,
)

TYPES = [
    {"id": 1, "name": "Visit Webpage"},
    {"id": 2, "name": "Fill Out Form"},
    {"id": 6, "name": "Send Email"},
    {"id": 7, "name": "Email Delivered"},
    {"id": 10, "name": "Open Email"},
    {"id": 11, "name": "Click Email"},
    {"id": 46, "name": "Interesting Moment"},
]
LEAD = PersonTable("lead", "lead", "leads")
CONTACT = PersonTable("contact", "contact", "contacts")
LEAD_GUID = "00000000-0000-0000-0000-00000000000a"
CONTACT_GUID = "00000000-0000-0000-0000-00000000000c"


@pytest.fixture(scope="module")
def mapping() -> ActivityMapping:
    return load_activities()


def _links(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["entity", "dynamics_id", "marketo_id", "state"])


def _feed(*items: tuple[int, int, int, str, Any]) -> pd.DataFrame:
    return from_feed(
        [
            {
                "id": aid,
                "marketoGUID": str(aid),
                "leadId": lead,
                "activityTypeId": type_id,
                "activityDate": "2026-03-01T10:00:00Z",
                "primaryAttributeValue": primary,
                "attributes": [
                    {"name": "Link", "value": "https://x.test/a"},
                    {"name": "Device", "value": "Mac"},
                ],
            }
            for aid, lead, type_id, primary, _ in items
        ]
    )


def test_the_shipped_mapping_names_the_six_required_types(mapping: ActivityMapping) -> None:
    names = {t.name for t in mapping.types}
    assert {"Email Delivered", "Open Email", "Click Email", "Fill Out Form", "Visit Webpage"} <= names
    assert "Interesting Moment" in names
    assert set(resolve_types(mapping, TYPES)) == {1, 2, 7, 10, 11, 46}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"types": [{"name": "Open Email", "subject": "{nope}"}]}, "types[0].subject"),
        ({"types": [{"name": "Open Email"}, {"name": "open email"}]}, "mapped twice"),
        ({"batch_size": 5000}, "batch_size"),
        ({"types": [{"name": f"T{i}"} for i in range(11)]}, "types"),
        ({"dynamics": {"table": "x", "entity_set": "xs"}}, "dynamics.key"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_mapping_names_the_file_and_key(
    mapping: ActivityMapping, change: dict[str, Any], message: str
) -> None:
    data = mapping.model_dump(mode="json", exclude={"source_path"})
    with pytest.raises(ConfigError, match=r"activities\.yaml") as err:
        parse_activities({**data, **change}, Path("activities.yaml"))
    assert message in str(err.value)


def test_an_unknown_type_name_is_an_error_naming_the_key(mapping: ActivityMapping) -> None:
    with pytest.raises(ConfigError, match=r"types\[\d\]\.name: Marketo has no activity type 'Open Email'"):
        resolve_types(mapping, [t for t in TYPES if t["name"] != "Open Email"])


def test_activities_become_rows_regarding_the_linked_lead_or_contact(mapping: ActivityMapping) -> None:
    types = resolve_types(mapping, TYPES)
    links = _links(
        [
            ("lead", LEAD_GUID, "501", "active"),
            ("contact", CONTACT_GUID, "502", "active"),
            ("lead", "00000000-0000-0000-0000-0000000000ff", "502", "active"),  # contact wins
            ("lead", "00000000-0000-0000-0000-0000000000ee", "503", "converted"),  # not active
        ]
    )
    feed = _feed((1, 501, 11, "Mail A", None), (2, 502, 10, "Mail B", None), (3, 503, 7, "Mail C", None))
    out = to_timeline_rows(feed, types, person_targets(links, [CONTACT, LEAD]), mapping)

    assert out.activity_ids == ["1", "2"]
    first, second = upsert_records(out.rows)
    assert first["regardingobjectid_lead_new_marketoactivity@odata.bind"] == f"/leads({LEAD_GUID})"
    assert "regardingobjectid_contact_new_marketoactivity@odata.bind" not in first
    assert second["regardingobjectid_contact_new_marketoactivity@odata.bind"] == f"/contacts({CONTACT_GUID})"
    assert first["new_marketoactivityid"] == "1"
    assert first["subject"] == "Email link clicked: Mail A"
    assert first["actualstart"] == "2026-03-01T10:00:00Z"
    assert first["new_activitytypeid"] == 11
    assert first["new_activitytypename"] == "Click Email"
    assert first["new_marketoleadid"] == 501
    assert json.loads(first["new_attributes"]) == {"Device": "Mac", "Link": "https://x.test/a"}
    assert json.loads(second["new_attributes"]) == {"Device": "Mac"}  # Open Email keeps 3 names
    (waiting,) = out.waiting["activity_id"]
    assert waiting == "3"
    (error,) = out.errors.to_dict("records")
    assert error["code"] == WAITING
    assert error["field"] == "leadId"
    assert "activity 3" in error["reason"]
    assert "Marketo lead 503" in error["reason"]


def test_unmapped_types_are_dropped_and_duplicates_collapse(mapping: ActivityMapping) -> None:
    types = resolve_types(mapping, TYPES)
    links = _links([("lead", LEAD_GUID, "501", "active")])
    feed = _feed((1, 501, 6, "Send", None), (2, 501, 7, "Mail", None), (2, 501, 7, "Mail", None))
    out = to_timeline_rows(feed, types, person_targets(links, [LEAD]), mapping)
    assert out.activity_ids == ["2"]
    assert out.errors.empty


def test_a_malformed_activity_is_an_error_naming_the_record_and_field(mapping: ActivityMapping) -> None:
    types = resolve_types(mapping, TYPES)
    feed = from_feed(
        [
            {"marketoGUID": "9", "leadId": 501, "activityTypeId": 7, "activityDate": "yesterday"},
            {"marketoGUID": "8", "leadId": None, "activityTypeId": 7, "activityDate": "2026-01-01T00:00:00Z"},
        ]
    )
    out = to_timeline_rows(feed, types, {}, mapping)
    errors = {r["record_id"]: r for r in out.errors.to_dict("records")}
    assert errors["9"]["field"] == "activityDate"
    assert errors["9"]["code"] == INVALID
    assert "activity 9" in errors["9"]["reason"]
    assert errors["8"]["field"] == "leadId"
    assert out.rows.empty


def test_an_export_file_reads_like_the_feed(tmp_path: Path, mapping: ActivityMapping) -> None:
    path = tmp_path / "activities.csv"
    path.write_text(
        "marketoGUID,leadId,activityDate,activityTypeId,campaignId,primaryAttributeValueId,"
        "primaryAttributeValue,attributes\n"
        "77,501,2025-04-02T08:30:00Z,46,null,5,null,"
        '"{""Description"":""Asked for a demo"",""Type"":""Web""}"\n'
    )
    frame = from_export(path)
    types = resolve_types(mapping, TYPES)
    out = to_timeline_rows(frame, types, {"501": (LEAD, LEAD_GUID)}, mapping)
    (row,) = upsert_records(out.rows)
    assert row["subject"] == "Interesting moment: Asked for a demo"
    assert row["new_primaryattributevalue"] is None
    assert row["actualstart"] == "2025-04-02T08:30:00Z"


def test_a_subject_is_cut_at_the_column_length(mapping: ActivityMapping) -> None:
    types = resolve_types(mapping, TYPES)
    feed = _feed((1, 501, 7, "x" * 500, None))
    out = to_timeline_rows(feed, types, {"501": (LEAD, LEAD_GUID)}, mapping)
    assert len(out.rows.loc[0, "subject"]) == mapping.dynamics.subject_max_length

"""Membership planning both ways: adds, status changes, removals, waiting persons, no echo, budget."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from crm_sync.guards import GuardSettings
from crm_sync.guards.quota import QuotaDeferred, check_low_priority
from crm_sync.marketing.membership_dynamics import (
    LISTMEMBER_COLUMNS,
    learned_rows,
    plan_list_changes,
    plan_to_marketo,
    responses_frame,
)
from crm_sync.marketing.program_config import ProgramLink, ResolvedStatuses
from crm_sync.marketing.program_membership import (
    activity_type_id,
    changes_from_activities,
    changes_from_export,
    pending_errors,
    plan_to_dynamics,
    response_id,
)

CAMPAIGN = "3f2b7c4e-0000-4000-8000-000000000001"
CONTACT = "0a000000-0000-4000-8000-00000000000a"
LEAD = "0b000000-0000-4000-8000-00000000000b"
LINK = ProgramLink(
    1001, CAMPAIGN, ResolvedStatuses({"Registered": 1, "Attended": 1, "No Show": 2}, {1: "Attended"}), "id"
)
LINKS = {1001: LINK}


def activity(lead: int, status: str, program: int = 1001, ident: int = 1) -> dict[str, Any]:
    return {
        "id": ident,
        "leadId": lead,
        "activityDate": "2026-03-02T10:00:00Z",
        "activityTypeId": 104,
        "primaryAttributeValueId": program,
        "primaryAttributeValue": "Webinar - Spring",
        "attributes": [
            {"name": "Old Status", "value": "Not in Program"},
            {"name": "New Status", "value": status},
        ],
    }


def agreed_row(
    status: str | None, dynamics_id: str = CONTACT, in_list: bool = True, **extra: Any
) -> dict[str, Any]:
    return {
        "program_id": 1001,
        "marketo_id": "7",
        "campaign_id": CAMPAIGN,
        "person_entity": "contact",
        "dynamics_id": dynamics_id,
        "status": status,
        "list_id": "l1",
        "listmember_id": "m1",
        "in_list": in_list,
        **extra,
    }


def test_the_status_activity_type_is_found_by_name() -> None:
    types = [{"id": 1, "name": "Visit Web Page"}, {"id": 104, "name": "Change Status in Progression"}]
    assert activity_type_id(types) == 104
    with pytest.raises(ValueError, match="no activity type named 'Nope'"):
        activity_type_id(types, "Nope")


def test_an_activity_without_its_new_status_is_named() -> None:
    bad = activity(7, "Registered", ident=55)
    bad["attributes"] = []
    with pytest.raises(ValueError, match=r"activity 55: field attributes\['New Status'\] is missing"):
        changes_from_activities([bad])


def test_export_rows_become_changes_and_a_blank_lead_is_named() -> None:
    members = pd.DataFrame(
        {"programId": ["1001"], "leadId": ["7"], "statusName": ["Registered"], "membershipDate": [None]}
    )
    (change,) = changes_from_export(members).to_dict("records")
    assert (change["program_id"], change["marketo_id"], change["status"]) == (1001, "7", "Registered")
    with pytest.raises(ValueError, match="row 0: field leadId is empty"):
        changes_from_export(members.assign(leadId=[None]))


def test_a_new_member_joins_the_contact_list_with_a_response() -> None:
    changes = changes_from_activities([activity(7, "Invited", ident=1), activity(7, "Registered", ident=2)])
    plan = plan_to_dynamics(changes, LINKS, {"7": ("contact", CONTACT)}, {})
    assert plan.adds == {(1001, CAMPAIGN, "contact"): [CONTACT]}
    (response,) = plan.responses
    assert response["activityid"] == response_id(1001, "7", "Registered")
    assert response["responsecode"] == 1
    assert response["receivedon"] == "2026-03-02T10:00:00Z"
    assert response["regardingobjectid_campaign_campaignresponse@odata.bind"] == f"/campaigns({CAMPAIGN})"
    assert response["campaignresponse_activity_parties"] == [
        {"partyid_contact@odata.bind": f"/contacts({CONTACT})", "participationtypemask": 11}
    ]
    assert [m["status"] for m in plan.memberships] == ["Registered"]


def test_the_agreed_status_is_no_change_and_a_new_one_is_a_response_only() -> None:
    persons = {"7": ("contact", CONTACT)}
    same = plan_to_dynamics(
        changes_from_activities([activity(7, "Registered")]),
        LINKS,
        persons,
        {(1001, "7"): agreed_row("Registered")},
    )
    assert (same.writes, same.unchanged, same.memberships) == (0, 1, [])
    moved = plan_to_dynamics(
        changes_from_activities([activity(7, "No Show")]),
        LINKS,
        persons,
        {(1001, "7"): agreed_row("Registered")},
    )
    assert moved.adds == {}
    assert [r["responsecode"] for r in moved.responses] == [2]
    assert moved.memberships[0]["listmember_id"] == "m1"


def test_a_status_set_from_dynamics_joins_the_list_without_a_second_response() -> None:
    agreed = {(1001, "7"): agreed_row("Attended", in_list=False, listmember_id=None)}
    plan = plan_to_dynamics(
        changes_from_activities([activity(7, "Attended")]), LINKS, {"7": ("contact", CONTACT)}, agreed
    )
    assert plan.adds == {(1001, CAMPAIGN, "contact"): [CONTACT]}
    assert plan.responses == []


def test_a_removal_leaves_the_list_once() -> None:
    change = changes_from_activities([activity(7, "Not in Program")])
    plan = plan_to_dynamics(
        change, LINKS, {"7": ("contact", CONTACT)}, {(1001, "7"): agreed_row("Registered")}
    )
    assert plan.removes == {(1001, CAMPAIGN, "contact"): [CONTACT]}
    assert plan.memberships[0]["status"] is None
    again = plan_to_dynamics(
        change, LINKS, {"7": ("contact", CONTACT)}, {(1001, "7"): agreed_row(None, in_list=False)}
    )
    assert (again.writes, again.unchanged) == (0, 1)


def test_an_unlinked_person_waits_and_other_programs_are_ignored() -> None:
    changes = changes_from_activities([activity(8, "Registered"), activity(7, "Registered", program=999)])
    plan = plan_to_dynamics(changes, LINKS, {}, {})
    assert plan.writes == 0
    assert [(p["program_id"], p["person_id"], p["status"]) for p in plan.pending] == [
        (1001, "8", "Registered")
    ]
    (error,) = pending_errors(plan.pending, "m2d").to_dict("records")
    assert (error["record_id"], error["code"], error["field"]) == ("1001:8", "PERSON_NOT_SYNCED", "leadId")
    assert f"program 1001 / campaign {CAMPAIGN}: Marketo person 8 is not synced yet" in error["reason"]


def _responses(*rows: tuple[str, int, str]) -> pd.DataFrame:
    responses = [
        {
            "activityid": aid,
            "responsecode": code,
            "_regardingobjectid_value": CAMPAIGN,
            "receivedon": "2026-03-02T10:00:00Z",
        }
        for aid, code, _ in rows
    ]
    parties = [{"_activityid_value": aid, "_partyid_value": party} for aid, _, party in rows]
    return responses_frame(responses, parties)


def test_an_allowed_response_sets_the_status_and_others_do_not() -> None:
    persons = {CONTACT: ("contact", "7"), LEAD: ("lead", "8")}
    frame = _responses(("r1", 1, CONTACT), ("r2", 2, LEAD))
    plan = plan_to_marketo(frame, LINKS, persons, {(1001, "7"): agreed_row("Registered")})
    assert plan.status_sets == {(1001, "Attended", True): ["7"]}
    assert plan.not_allowed == 1  # Not Interested sets nothing: the YAML allows only Interested
    assert plan.memberships[(1001, "7")]["status"] == "Attended"


def test_the_syncs_own_response_and_the_agreed_status_are_no_change() -> None:
    persons = {CONTACT: ("contact", "7")}
    own = plan_to_marketo(_responses((response_id(1001, "7", "Registered"), 1, CONTACT)), LINKS, persons, {})
    assert (own.own, own.status_sets) == (1, {})
    agreed = plan_to_marketo(
        _responses(("r1", 1, CONTACT)), LINKS, persons, {(1001, "7"): agreed_row("Attended")}
    )
    assert (agreed.unchanged, agreed.status_sets) == (1, {})


def test_the_syncs_own_response_after_a_users_one_does_not_hide_it() -> None:
    frame = _responses(("r1", 1, CONTACT), (response_id(1001, "7", "Registered"), 1, CONTACT))
    plan = plan_to_marketo(frame, LINKS, {CONTACT: ("contact", "7")}, {(1001, "7"): agreed_row("Registered")})
    assert (plan.own, plan.status_sets) == (1, {(1001, "Attended", True): ["7"]})


def test_a_response_of_an_unlinked_person_waits() -> None:
    plan = plan_to_marketo(_responses(("r1", 1, LEAD)), LINKS, {}, {})
    assert [(p["direction"], p["person_id"], p["status"]) for p in plan.pending] == [
        ("d2m", LEAD, "Attended")
    ]


def test_a_list_member_removed_in_dynamics_leaves_the_program_unless_the_sync_removed_it() -> None:
    plan = plan_to_marketo(_responses(), LINKS, {}, {})
    added = pd.DataFrame(
        [{"listmember_id": "m9", "list_id": "l1", "entity_id": CONTACT}], columns=list(LISTMEMBER_COLUMNS)
    )
    lists = {"l1": (1001, CAMPAIGN, "contact")}
    by_listmember = {"m1": agreed_row("Registered"), "m2": agreed_row(None, marketo_id="9")}
    plan_list_changes(plan, added, ["m1", "m2", "unknown"], lists, {CONTACT: ("contact", "7")}, by_listmember)
    assert plan.removals == {1001: ["7"]}
    assert plan.unchanged == 1
    assert plan.learned == [{"program_id": 1001, "marketo_id": "7", "list_id": "l1", "listmember_id": "m9"}]
    (row,) = learned_rows(plan.learned, {(1001, "7"): agreed_row("Registered", listmember_id=None)})
    assert row["listmember_id"] == "m9"


@pytest.mark.parametrize(("left", "deferred"), [(40_000, False), (10_003, True)])
def test_the_budget_check_defers_under_the_headroom(left: int, deferred: bool) -> None:
    status = {
        "usable": 40_000,
        "left": left,
        "used_today": 40_000 - left,
        "daily_quota": 50_000,
        "reserve": 10_000,
        "resets_at": "tomorrow",
    }
    settings = GuardSettings()  # headroom 25 % of the usable budget: 10,000
    if deferred:
        with pytest.raises(QuotaDeferred, match="under the 10000 kept for the entity syncs"):
            check_low_priority("program_membership", 4, status, settings)
    else:
        check_low_priority("program_membership", 4, status, settings)
    check_low_priority("program_membership", 0, {**status, "left": 0}, settings)  # nothing to spend

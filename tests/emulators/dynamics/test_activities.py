"""Activities: campaign responses with their customer party, the custom Marketo activity upserted
by its alternate key, the ``activitypointers`` timeline, change tracking and the table metadata.

One unseeded emulator (limits off) serves the module; Microsoft's Dataverse SDK
(powerplatform-dataverse-client) reads and writes the custom activity table unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from PowerPlatform.Dataverse.client import DataverseClient

from tests.emulators.dynamics.conftest import Dataverse, MsalCredential, token_for
from tests.emulators.dynamics.test_batch import _batch, _changeset, _part, _statuses
from tests.emulators.dynamics.test_marketing import changes, create, delta_link, person
from tests.support.emulator_procs import start_emulator

PARTIES = "campaignresponse_activity_parties"
CUSTOMER = 11


@pytest.fixture(scope="module")
def dv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("activities"), ["--limits", "off"])
    try:
        yield Dataverse(emu, token_for(emu))
    finally:
        emu.stop()


def response(dv: Dataverse, campaign: str, contact: str, **extra: Any) -> str:
    return create(
        dv,
        "campaignresponses",
        {
            "subject": "Registered",
            "responsecode": 1,
            "receivedon": "2026-03-02T10:00:00Z",
            "regardingobjectid_campaign_campaignresponse@odata.bind": f"/campaigns({campaign})",
            PARTIES: [
                {"partyid_contact@odata.bind": f"/contacts({contact})", "participationtypemask": CUSTOMER}
            ],
            **extra,
        },
    )


def marketo_activity(dv: Dataverse, marketo_id: str, regarding: str, **values: Any) -> Any:
    body = {
        "subject": "Opened email: March newsletter",
        "actualstart": "2026-03-01T09:30:00Z",
        "actualend": "2026-03-01T09:30:00Z",
        "new_activitytypeid": 10,
        "new_activitytypename": "Open Email",
        "new_primaryattributevalue": "March newsletter",
        "new_attributes": '{"Device": "iPhone"}',
        "regardingobjectid_contact_new_marketoactivity@odata.bind": f"/contacts({regarding})",
        **values,
    }
    return dv.call("PATCH", f"new_marketoactivities(new_marketoactivityid='{marketo_id}')", json=body)


def timeline(dv: Dataverse, regarding: str) -> list[dict[str, Any]]:
    return dv.get(
        "activitypointers?$select=subject,activitytypecode,_regardingobjectid_value,actualstart"
        f"&$filter=_regardingobjectid_value eq {regarding}&$orderby=actualstart desc",
        headers={"Prefer": 'odata.include-annotations="Microsoft.Dynamics.CRM.lookuplogicalname"'},
    ).json()["value"]


def test_a_campaign_response_carries_its_customer_as_an_activity_party(dv: Dataverse) -> None:
    campaign, contact = create(dv, "campaigns", {"name": "Webinar"}), person(dv)
    activity = response(dv, campaign, contact)
    got = dv.get(
        f"campaignresponses({activity})?$select=subject,responsecode,receivedon,_regardingobjectid_value,"
        f"statecode,statuscode&$expand={PARTIES}($select=_partyid_value,participationtypemask)"
    ).json()
    assert (got["subject"], got["responsecode"], got["receivedon"]) == (
        "Registered",
        1,
        "2026-03-02T10:00:00Z",
    )
    assert got["_regardingobjectid_value"] == campaign
    assert (got["statecode"], got["statuscode"]) == (0, 1)  # Open
    assert [(p["_partyid_value"], p["participationtypemask"]) for p in got[PARTIES]] == [(contact, CUSTOMER)]
    parties = dv.get(f"activityparties?$filter=_activityid_value eq {activity}").json()["value"]
    assert [p["_partyid_value"] for p in parties] == [contact]


def test_a_patch_replaces_the_parties_and_a_party_of_the_wrong_table_is_refused(dv: Dataverse) -> None:
    campaign, contact, lead = create(dv, "campaigns", {"name": "Fair"}), person(dv), person(dv, "leads")
    activity = response(dv, campaign, contact)
    swap = {PARTIES: [{"partyid_lead@odata.bind": f"/leads({lead})", "participationtypemask": CUSTOMER}]}
    assert dv.call("PATCH", f"campaignresponses({activity})", json=swap).status_code == 204
    parties = dv.get(f"activityparties?$filter=_activityid_value eq {activity}").json()["value"]
    assert [p["_partyid_value"] for p in parties] == [lead]
    list_id = create(dv, "lists", {"listname": "Not a party", "createdfromcode": 2})
    wrong = {PARTIES: [{"partyid_list@odata.bind": f"/lists({list_id})", "participationtypemask": CUSTOMER}]}
    refused = dv.call("PATCH", f"campaignresponses({activity})", json=wrong)
    assert refused.status_code == 400
    assert "partyid_list" in refused.json()["error"]["message"]
    assert len(dv.get(f"activityparties?$filter=_activityid_value eq {activity}").json()["value"]) == 1
    assert dv.call("POST", "activityparties", json={"participationtypemask": 11}).status_code == 405


def test_upserting_a_marketo_activity_by_its_alternate_key_is_idempotent(dv: Dataverse) -> None:
    contact, marketo_id = person(dv), str(uuid.uuid4().int % 10**9)
    first = marketo_activity(dv, marketo_id, contact)
    again = marketo_activity(dv, marketo_id, contact, description="re-run")
    assert (first.status_code, again.status_code) == (204, 204), again.text
    assert first.headers["OData-EntityId"] == again.headers["OData-EntityId"]
    rows = dv.get(
        "new_marketoactivities?$select=new_marketoactivityid,description,new_activitytypename"
        f"&$filter=new_marketoactivityid eq '{marketo_id}'"
    ).json()["value"]
    assert [(r["new_marketoactivityid"], r["description"], r["new_activitytypename"]) for r in rows] == [
        (marketo_id, "re-run", "Open Email")
    ]
    pointers = dv.get(f"activitypointers?$filter=_regardingobjectid_value eq {contact}").json()["value"]
    assert [p["activityid"] for p in pointers] == [rows[0]["activityid"]]
    assert pointers[0]["description"] == "re-run"


def _activity_body(marketo_id: str, contact: str, **values: Any) -> dict[str, Any]:
    return {
        "subject": f"Visited page {marketo_id}",
        "regardingobjectid_contact_new_marketoactivity@odata.bind": f"/contacts({contact})",
        **values,
    }


def _upsert_part(marketo_id: str, contact: str, **values: Any) -> str:
    url = f"new_marketoactivities(new_marketoactivityid='{marketo_id}')?$select=activityid"
    body = _activity_body(marketo_id, contact, **values)
    return _part("PATCH", url, body, headers={"Prefer": "return=representation"})


def _taken_id_part(marketo_id: str, contact: str, taken: str) -> str:
    """A create that names the id of another activity (``activityid`` is unique across them)."""
    body = _activity_body(marketo_id, contact, activityid=taken, new_marketoactivityid=marketo_id)
    return _part("POST", "new_marketoactivities", body)


def _pointer_ids(dv: Dataverse, regarding: str) -> list[str]:
    rows = dv.get(f"activitypointers?$select=activityid&$filter=_regardingobjectid_value eq {regarding}")
    return sorted(r["activityid"] for r in rows.json()["value"])


def _activity_ids(dv: Dataverse, marketo_ids: list[str]) -> dict[str, str]:
    wanted = " or ".join(f"new_marketoactivityid eq '{m}'" for m in marketo_ids)
    rows = dv.get(f"new_marketoactivities?$select=new_marketoactivityid&$filter={wanted}").json()["value"]
    return {r["new_marketoactivityid"]: r["activityid"] for r in rows}


def test_an_activity_id_another_activity_holds_is_refused_and_leaves_nothing(dv: Dataverse) -> None:
    campaign, contact = create(dv, "campaigns", {"name": "Shared id"}), person(dv)
    taken = response(dv, campaign, contact)
    marketo_id = f"dup-{uuid.uuid4().hex[:8]}"
    body = _activity_body(marketo_id, contact, activityid=taken, new_marketoactivityid=marketo_id)
    refused = dv.call("POST", "new_marketoactivities", json=body)
    assert refused.status_code == 412, refused.text
    assert refused.json()["error"]["code"] == "0x80040237"
    assert "activitypointer" in refused.json()["error"]["message"]
    assert _activity_ids(dv, [marketo_id]) == {}  # the refused activity left no row ...
    assert _pointer_ids(dv, contact) == []  # ... and no pointer
    pointer = dv.get(f"activitypointers({taken})?$select=activitytypecode,subject").json()
    assert (pointer["activitytypecode"], pointer["subject"]) == ("campaignresponse", "Registered")


def test_a_refused_part_of_an_activity_batch_takes_its_row_and_pointer_back(dv: Dataverse) -> None:
    campaign, contact = create(dv, "campaigns", {"name": "Batch"}), person(dv)
    taken = response(dv, campaign, contact)
    tag = uuid.uuid4().hex[:8]
    ids = [f"{tag}-1", f"{tag}-2", f"{tag}-3"]
    parts = [
        _upsert_part(ids[0], contact),
        _taken_id_part(ids[1], contact, taken),
        _upsert_part(ids[2], contact),
    ]
    resp = _batch(dv, parts, prefer="odata.continue-on-error")
    assert resp.status_code == 200, resp.text
    assert _statuses(resp) == [201, 412, 201]
    written = _activity_ids(dv, ids)
    assert sorted(written) == [ids[0], ids[2]]
    assert _pointer_ids(dv, contact) == sorted(written.values())
    in_a_change_set = _batch(dv, [_changeset([_upsert_part(f"{tag}-4", contact), parts[1]])])
    assert in_a_change_set.status_code == 400
    assert _statuses(in_a_change_set) == [412]
    assert sorted(_activity_ids(dv, [*ids, f"{tag}-4"])) == [ids[0], ids[2]]
    assert _pointer_ids(dv, contact) == sorted(written.values())
    again = _batch(dv, [_upsert_part(ids[0], contact, subject="Seen again")])
    assert _statuses(again) == [200]  # an update by the alternate key: the same row, its pointer follows
    assert dv.get(f"activitypointers({written[ids[0]]})?$select=subject").json()["subject"] == "Seen again"
    assert _pointer_ids(dv, contact) == sorted(written.values())


def test_the_timeline_of_a_record_is_read_from_activitypointers(dv: Dataverse) -> None:
    contact, other = person(dv), person(dv)
    campaign = create(dv, "campaigns", {"name": "Timeline"})
    older = marketo_activity(dv, "t-1", contact, subject="Visited page", actualstart="2026-02-01T08:00:00Z")
    newer = marketo_activity(
        dv, "t-2", contact, subject="Filled out form", actualstart="2026-02-03T08:00:00Z"
    )
    assert older.status_code == newer.status_code == 204
    assert marketo_activity(dv, "t-3", other).status_code == 204
    response(dv, campaign, contact, actualstart="2026-02-02T08:00:00Z")
    rows = timeline(dv, contact)
    assert [r["subject"] for r in rows] == ["Filled out form", "Visited page"]
    assert {r["activitytypecode"] for r in rows} == {"new_marketoactivity"}
    assert rows[0]["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "contact"
    [on_campaign] = timeline(dv, campaign)
    assert (on_campaign["activitytypecode"], on_campaign["subject"]) == ("campaignresponse", "Registered")


def test_activitypointers_are_read_only(dv: Dataverse) -> None:
    contact = person(dv)
    assert marketo_activity(dv, "ro-1", contact).status_code == 204
    [row] = timeline(dv, contact)
    pointer = f"activitypointers({row['activityid']})"
    assert dv.get(pointer).json()["subject"] == "Opened email: March newsletter"
    assert dv.call("POST", "activitypointers", json={"subject": "x"}).status_code == 405
    assert dv.call("PATCH", pointer, json={"subject": "x"}).status_code == 405
    assert dv.call("DELETE", pointer).status_code == 405


def test_a_deleted_activity_leaves_the_timeline_with_its_parties(dv: Dataverse) -> None:
    campaign, contact = create(dv, "campaigns", {"name": "Gone"}), person(dv)
    activity = response(dv, campaign, contact)
    assert dv.call("DELETE", f"campaignresponses({activity})").status_code == 204
    assert timeline(dv, campaign) == []
    assert dv.get(f"activitypointers({activity})").status_code == 404
    assert dv.get(f"activityparties?$filter=_activityid_value eq {activity}").json()["value"] == []


@pytest.mark.parametrize("entity_set", ["campaignresponses", "new_marketoactivities"])
def test_activity_tables_are_change_tracked(dv: Dataverse, entity_set: str) -> None:
    campaign, contact = create(dv, "campaigns", {"name": "Tracked"}), person(dv)
    link = delta_link(dv, entity_set, "subject")

    def make(tag: str) -> str:
        if entity_set == "campaignresponses":
            return response(dv, campaign, contact)
        resp = marketo_activity(dv, f"ct-{tag}-{uuid.uuid4().hex[:6]}", contact)
        return str(resp.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")"))

    updated, removed = make("u"), make("d")
    assert dv.call("PATCH", f"{entity_set}({updated})", json={"subject": "Changed"}).status_code == 204
    assert dv.call("DELETE", f"{entity_set}({removed})").status_code == 204
    changed, deleted = changes(dv, link, "activityid")
    assert updated in changed
    assert removed in deleted


def test_the_custom_activity_table_is_described_like_any_table(dv: Dataverse) -> None:
    table = dv.get(
        "EntityDefinitions(LogicalName='new_marketoactivity')?$select=LogicalName,EntitySetName,"
        "PrimaryIdAttribute,PrimaryNameAttribute,IsActivity,IsCustomEntity,ChangeTrackingEnabled"
    ).json()
    assert {k: v for k, v in table.items() if not k.startswith("@") and k != "MetadataId"} == {
        "LogicalName": "new_marketoactivity",
        "EntitySetName": "new_marketoactivities",
        "PrimaryIdAttribute": "activityid",
        "PrimaryNameAttribute": "subject",
        "IsActivity": True,
        "IsCustomEntity": True,
        "ChangeTrackingEnabled": True,
    }
    [key] = dv.get("EntityDefinitions(LogicalName='new_marketoactivity')/Keys").json()["value"]
    assert (key["SchemaName"], key["KeyAttributes"], key["EntityKeyIndexStatus"]) == (
        "new_marketoactivityid_key",
        ["new_marketoactivityid"],
        "Active",
    )
    regarding = dv.get(
        "EntityDefinitions(LogicalName='new_marketoactivity')/Attributes(LogicalName='regardingobjectid')"
    ).json()
    assert regarding["Targets"] == ["lead", "contact"]


def test_the_dataverse_sdk_writes_and_reads_the_custom_activity(dv: Dataverse, monkeypatch: Any) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(dv.emu.ca_file))
    contact = person(dv)
    campaign = create(dv, "campaigns", {"name": "SDK campaign", "typecode": 2})
    credential = MsalCredential(dv.emu)
    try:
        with DataverseClient(dv.emu.base_url, credential) as sdk:
            new_id = sdk.records.create(
                "new_marketoactivity",
                {
                    "subject": "Clicked link",
                    "new_marketoactivityid": "sdk-42",
                    "new_activitytypename": "Click Email",
                    "regardingobjectid_contact_new_marketoactivity@odata.bind": f"/contacts({contact})",
                },
            )
            got = sdk.records.retrieve(
                "new_marketoactivity",
                new_id,
                select=["subject", "new_marketoactivityid", "_regardingobjectid_value"],
            )
            campaigns = list(
                sdk.records.list("campaign", select=["name", "typecode"], filter="name eq 'SDK campaign'")
            )
    finally:
        credential.close()
    assert got is not None
    assert (got["subject"], got["new_marketoactivityid"], got["_regardingobjectid_value"]) == (
        "Clicked link",
        "sdk-42",
        contact,
    )
    assert [(c["campaignid"], c["typecode"]) for c in campaigns] == [(campaign, 2)]
    assert [r["activityid"] for r in timeline(dv, contact)] == [new_id]

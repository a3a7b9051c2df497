"""The independent client ``marketorestpython`` (0.5.25) works unchanged against the emulator.

Why a wrapper at all: ``MarketoClient`` builds its base URL from the munchkin id
(``https://<id>.mktorest.com``) with no option to change it, so ``local_client`` overrides the
``host`` attribute after construction, the smallest change that points it at 127.0.0.1. The
client calls ``requests.get/post`` directly, so ``REQUESTS_CA_BUNDLE`` is enough for our CA.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
import uuid
from typing import Any

import pytest
from marketorestpython.client import MarketoClient

from emulators.common.credentials import default_credentials
from tests.support.emulator_procs import RunningEmulator


@pytest.fixture
def mc(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> MarketoClient:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emulator.ca_file))
    return local_client(emulator)


def local_client(emu: RunningEmulator) -> MarketoClient:
    """A stock ``MarketoClient`` whose host is the local emulator instead of ``<munchkin>.mktorest.com``."""
    creds = default_credentials("marketo_default")
    client = MarketoClient("123-ABC-456", creds.client_id, creds.client_secret, max_retry_time=30)
    client.host = emu.base_url
    return client


def test_leads_create_update_get_delete(mc: MarketoClient) -> None:
    tag = uuid.uuid4().hex[:8]
    emails = [f"mrp-{tag}-{i}@example.com" for i in range(3)]
    created = mc.execute(
        method="create_update_leads",
        leads=[{"email": e, "firstName": "One"} for e in emails],
        action="createOnly",
        lookupField="email",
    )
    assert [r["status"] for r in created] == ["created"] * 3
    assert mc.scope  # the client reads scope from the token response

    updated = mc.execute(method="create_update_leads", leads=[{"email": emails[0], "firstName": "Two"}])
    assert updated == [{"id": created[0]["id"], "status": "updated"}]

    found = mc.execute(
        method="get_multiple_leads_by_filter_type",
        filterType="email",
        filterValues=emails,
        fields=["id", "firstName"],
        batchSize=2,
    )
    assert sorted((r["id"], r["firstName"]) for r in found) == sorted(
        [(created[0]["id"], "Two"), (created[1]["id"], "One"), (created[2]["id"], "One")]
    )
    one = mc.execute(method="get_lead_by_id", id=created[1]["id"], fields=["email"])
    assert one == [{"email": emails[1]}]

    deleted = mc.execute(method="delete_lead", id=[created[2]["id"]])
    assert deleted == [{"id": created[2]["id"], "status": "deleted"}]
    assert {f["rest"]["name"] for f in mc.execute(method="describe")} >= {"email", "msdRecordId"}


def test_lead_changes_since_a_paging_token(mc: MarketoClient) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = mc.execute(method="get_paging_token", sinceDatetime=since)
    email = f"mrp-chg-{uuid.uuid4().hex[:8]}@example.com"
    lead_id = mc.execute(method="create_update_leads", leads=[{"email": email, "title": "A"}])[0]["id"]
    mc.execute(method="create_update_leads", leads=[{"email": email, "title": "B"}])
    changes = mc.execute(method="get_lead_changes", fields=["title"], nextPageToken=token)
    mine = [
        (c["activityTypeId"], [f["newValue"] for f in c["fields"]]) for c in changes if c["leadId"] == lead_id
    ]
    assert mine == [(12, []), (13, ["B"])]


def test_merge_keeps_the_winner_fills_its_gaps_and_logs_it(mc: MarketoClient) -> None:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    made = mc.execute(
        method="create_update_leads",
        leads=[
            {"email": f"win-{tag}@example.com", "firstName": "Winner", "title": None},
            {"email": f"lose-{tag}@example.com", "firstName": "Loser", "title": "CFO", "unsubscribed": True},
        ],
        action="createOnly",
        lookupField="email",
    )
    winner, loser = (r["id"] for r in made)

    assert mc.execute(method="merge_lead", id=winner, leadIds=[loser]) is True

    (kept,) = mc.execute(
        method="get_lead_by_id", id=winner, fields=["email", "firstName", "title", "unsubscribed"]
    )
    assert (kept["email"], kept["firstName"], kept["title"]) == (f"win-{tag}@example.com", "Winner", "CFO")
    assert kept["unsubscribed"] is True, "an unsubscribe survives the merge"
    assert mc.execute(method="get_lead_by_id", id=loser, fields=["email"]) == []
    merges = mc.execute(method="get_lead_activities", activityTypeIds=["32"], sinceDatetime=since)
    (merge,) = [a for a in merges if a["leadId"] == winner]
    attrs = {a["name"]: a["value"] for a in merge["attributes"]}
    assert attrs["Merge IDs"] == str(loser)
    deleted = mc.execute(method="get_deleted_leads", sinceDatetime=since)
    assert loser in [d["leadId"] for d in deleted]
    with pytest.raises(Exception, match="1004"):
        mc.execute(method="merge_lead", id=winner, leadIds=[loser])


def test_companies_opportunities_and_custom_objects(mc: MarketoClient) -> None:
    company = str(uuid.uuid4())
    res = mc.execute(
        method="create_update_companies", input=[{"externalCompanyId": company, "company": "Initech"}]
    )
    assert res[0]["status"] == "created"
    got = mc.execute(
        method="get_companies", filterType="externalCompanyId", filterValues=[company], fields=["company"]
    )
    assert [r["company"] for r in got] == ["Initech"]

    opp = str(uuid.uuid4())
    res = mc.execute(
        method="create_update_opportunities",
        input=[{"externalOpportunityId": opp, "name": "Deal", "externalCompanyId": company}],
    )
    assert res[0]["status"] == "created"
    got = mc.execute(
        method="get_opportunities",
        filterType="externalOpportunityId",
        filterValues=[opp],
        fields=["name", "externalCompanyId"],
    )
    assert [(r["name"], r["externalCompanyId"]) for r in got] == [("Deal", company)]

    assert [o["name"] for o in mc.execute(method="get_list_of_custom_objects")] == ["project_c"]
    project = str(uuid.uuid4())
    res = mc.execute(
        method="create_update_custom_objects",
        name="project_c",
        input=[{"externalProjectId": project, "projectName": "P", "budget": 7}],
    )
    assert res[0]["status"] == "created"
    got = mc.execute(
        method="get_custom_objects",
        name="project_c",
        input=[{"externalProjectId": project}],
        filterType="dedupeFields",
        fields=["externalProjectId", "budget"],
    )
    assert [(r["externalProjectId"], r["budget"]) for r in got] == [(project, 7)]
    res = mc.execute(method="delete_custom_objects", name="project_c", input=[{"externalProjectId": project}])
    assert res[0]["status"] == "deleted"


def test_client_backs_off_on_606_and_recovers(mc: MarketoClient, emulator: RunningEmulator) -> None:
    mc.execute(method="describe")  # token first
    emulator.admin(
        "PUT", "limits", json={"enabled": True, "rate_limit": 2, "rate_window_s": 20, "time_scale": 0.05}
    )
    emulator.admin("POST", "reset-counters")
    try:
        emails = [f"mrp-606-{uuid.uuid4().hex[:6]}@example.com" for _ in range(4)]
        for e in emails:
            assert mc.execute(method="create_update_leads", leads=[{"email": e}])[0]["status"] == "created"
        stats = emulator.admin("GET", "stats").json()
        assert stats["limit_hits"].get("606", 0) >= 1  # the limit did bite, and the client retried
    finally:
        emulator.admin("PUT", "limits", json={"enabled": False})


def _wait_completed(mc: MarketoClient, entity: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (status,) = mc.execute(method=f"get_{entity}_export_job_status", job_id=job_id)
        if status["status"] == "Completed":
            return dict(status)
    raise AssertionError(f"{entity} export {job_id} did not complete")


def test_programs_members_and_their_activities(mc: MarketoClient, emulator: RunningEmulator) -> None:
    name = f"MRP Webinar {uuid.uuid4().hex[:8]}"
    spec = {"name": name, "type": "Event with Webinar", "channel": "Webinar"}
    program = emulator.admin("POST", "programs", json=spec).json()["result"][0]
    assert name in [p["name"] for p in mc.execute(method="browse_programs", maxReturn=200)]
    assert mc.execute(method="get_program_by_id", id=program["id"])[0]["channel"] == "Webinar"
    assert mc.execute(method="get_program_by_name", name=name)[0]["id"] == program["id"]

    since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:8]
    made = mc.execute(
        method="create_update_leads", leads=[{"email": f"mrp-pm-{tag}-{i}@example.com"} for i in range(3)]
    )
    ids = [r["id"] for r in made]
    body = {"programId": program["id"], "statusName": "Registered", "leadIds": ids}
    emulator.admin("POST", "program-members", json=body)
    changed = mc.execute(
        method="change_lead_program_status", id=program["id"], leadIds=ids[:1], status="Attended"
    )
    assert changed == [{"id": ids[0], "status": "updated"}]

    members = mc.execute(
        method="get_multiple_leads_by_program_id",
        programId=program["id"],
        fields=["id", "email"],
        batchSize=2,
    )
    assert [(m["id"], m["membership"]["progressionStatus"]) for m in members] == [
        (ids[0], "Attended"),
        (ids[1], "Registered"),
        (ids[2], "Registered"),
    ]
    assert 104 in {t["id"] for t in mc.execute(method="get_activity_types")}
    moves = mc.execute(method="get_lead_activities", activityTypeIds=["104"], sinceDatetime=since)
    mine = [
        (a["leadId"], {x["name"]: x["value"] for x in a["attributes"]}["New Status"])
        for a in moves
        if a["primaryAttributeValueId"] == program["id"]
    ]
    assert mine == [
        (ids[0], "Registered"),
        (ids[1], "Registered"),
        (ids[2], "Registered"),
        (ids[0], "Attended"),
    ]

    job = mc.execute(
        method="create_program_members_export_job",
        fields=["leadId", "statusName"],
        filters={"programId": program["id"]},
    )[0]
    mc.execute(method="enqueue_program_members_export_job", job_id=job["exportId"])
    assert _wait_completed(mc, "program_members", job["exportId"])["numberOfRecords"] == 3
    data = mc.execute(method="get_program_members_export_job_file", job_id=job["exportId"]).decode()
    assert data.splitlines() == [
        "Lead Id,Status",
        f"{ids[0]},Attended",
        f"{ids[1]},Registered",
        f"{ids[2]},Registered",
    ]

    window = {
        "startAt": since,
        "endAt": (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    job = mc.execute(
        method="create_activities_export_job", filters={"createdAt": window, "activityTypeIds": [104]}
    )[0]
    mc.execute(method="enqueue_activities_export_job", job_id=job["exportId"])
    _wait_completed(mc, "activities", job["exportId"])
    rows = list(
        csv.DictReader(
            io.StringIO(mc.execute(method="get_activities_export_job_file", job_id=job["exportId"]).decode())
        )
    )
    exported = [
        (int(r["leadId"]), json.loads(r["attributes"])["New Status"])
        for r in rows
        if r["primaryAttributeValueId"] == str(program["id"])
    ]
    assert exported == mine

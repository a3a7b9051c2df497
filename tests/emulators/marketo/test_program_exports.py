"""Bulk activity and program member extracts: job life cycle, CSV contents, filters, shared limits.

A module fixture lays down three months of activity history (January to March 2025) for a few
leads through the admin area; nothing else in this module writes activities in that period, so
the exports can be compared row for row.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.emulators.marketo.conftest import Api, error_code, wait_for
from tests.support.emulator_procs import RunningEmulator

ACT = "/bulk/v1/activities/export"
PM = "/bulk/v1/program/members/export"
START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
DEFAULT_COLUMNS = [
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
]


def _z(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _history(lead_ids: list[int]) -> list[dict[str, Any]]:
    """Emails delivered/opened/clicked, page visits, form fills and interesting moments, 90 days."""
    out: list[dict[str, Any]] = []
    for i, lead in enumerate(lead_ids):
        for day in range(0, 90, 3):
            base = START + dt.timedelta(days=day)
            mailing = 5000 + day // 7
            email = {
                "primaryAttributeValueId": mailing,
                "primaryAttributeValue": f"Newsletter.Issue {mailing}",
            }
            out.append(
                {
                    "leadId": lead,
                    "activityTypeId": 7,
                    "activityDate": _z(base.replace(hour=9)),
                    "campaignId": 77,
                    **email,
                    "attributes": {"Campaign Run ID": day, "Step ID": 1},
                }
            )
            if (day + i) % 2 == 0:
                out.append(
                    {
                        "leadId": lead,
                        "activityTypeId": 10,
                        "activityDate": _z(base.replace(hour=10)),
                        **email,
                        "attributes": {"Device": "Desktop", "Is Mobile Device": False},
                    }
                )
            if (day + i) % 6 == 0:
                out.append(
                    {
                        "leadId": lead,
                        "activityTypeId": 11,
                        "activityDate": _z(base.replace(hour=11)),
                        **email,
                        "attributes": {"Link": "https://example.com/offer"},
                    }
                )
            if day % 9 == 0:
                out.append(
                    {
                        "leadId": lead,
                        "activityTypeId": 1,
                        "activityDate": _z(base.replace(hour=12)),
                        "primaryAttributeValueId": 71,
                        "primaryAttributeValue": "example.com/pricing",
                        "attributes": [{"name": "Webpage URL", "value": "/pricing"}],
                    }
                )
            if day % 30 == 0:
                out.append(
                    {
                        "leadId": lead,
                        "activityTypeId": 2,
                        "activityDate": _z(base.replace(hour=13)),
                        "primaryAttributeValueId": 16,
                        "primaryAttributeValue": "Contact Us",
                        "attributes": {"Form Fields": json.dumps({"Email": f"lead{lead}@example.com"})},
                    }
                )
            if day % 15 == 0:
                out.append(
                    {
                        "leadId": lead,
                        "activityTypeId": 46,
                        "activityDate": _z(base.replace(hour=14)),
                        "attributes": {"Type": "Web", "Description": "Visited pricing twice"},
                    }
                )
    # A deleted lead in the same weeks: the bulk export never carries Delete Lead.
    out.append(
        {
            "leadId": 424242,
            "activityTypeId": 37,
            "activityDate": "2025-01-15T08:00:00Z",
            "primaryAttributeValueId": 424242,
            "primaryAttributeValue": "Gone Person",
        }
    )
    return out


@pytest.fixture(scope="module")
def history(emulator: RunningEmulator) -> Iterator[list[dict[str, Any]]]:
    api = Api(emulator)
    tag = uuid.uuid4().hex[:8]
    leads = [
        int(r["id"])
        for r in api.post(
            "/rest/v1/leads.json", {"input": [{"email": f"hist-{tag}-{i}@example.com"} for i in range(4)]}
        )["result"]
    ]
    items = _history(leads)
    added = emulator.admin("POST", "activities", json={"activities": items}).json()
    assert added["added"] == len(items)
    yield items
    api.session.close()


def _run(api: Api, prefix: str, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    created = api.post(f"{prefix}/create.json", body)
    assert created["success"], created
    export_id = created["result"][0]["exportId"]
    assert api.post(f"{prefix}/{export_id}/enqueue.json")["result"][0]["status"] == "Queued"
    done = wait_for(
        lambda: (
            (s := api.get(f"{prefix}/{export_id}/status.json")["result"][0])["status"] == "Completed" and s
        )
    )
    data = api.call("GET", f"{prefix}/{export_id}/file.json").content
    assert done["fileChecksum"] == "sha256:" + hashlib.sha256(data).hexdigest()
    return done, data


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def _window(first: str, last: str, **extra: Any) -> dict[str, Any]:
    return {"format": "CSV", "filter": {"createdAt": {"startAt": first, "endAt": last}, **extra}}


def test_activity_export_life_cycle_and_csv(api: Api, history: list[dict[str, Any]]) -> None:
    body = _window("2025-01-01T00:00:00Z", "2025-01-31T23:59:59Z")
    created = api.post(f"{ACT}/create.json", body)["result"][0]
    assert created["status"] == "Created"
    early = api.call("GET", f"{ACT}/{created['exportId']}/file.json")
    assert (early.status_code, early.text.startswith("{")) == (404, False)
    assert error_code(api.get(f"/bulk/v1/leads/export/{created['exportId']}/status.json")) == "1003"
    api.post(f"{ACT}/{created['exportId']}/cancel.json")

    done, data = _run(api, ACT, body)
    rows = _rows(data)
    january = [h for h in history if h["activityDate"] < "2025-02" and h["activityTypeId"] != 37]
    assert list(rows[0]) == DEFAULT_COLUMNS
    assert done["numberOfRecords"] == len(rows) == len(january)
    assert [r["activityDate"] for r in rows] == sorted(h["activityDate"] for h in january)
    assert "37" not in {r["activityTypeId"] for r in rows}
    click = next(r for r in rows if r["activityTypeId"] == "11")
    assert json.loads(click["attributes"]) == {"Link": "https://example.com/offer"}
    assert click["campaignId"] == "null"
    delivered = next(r for r in rows if r["activityTypeId"] == "7")
    assert (delivered["campaignId"], json.loads(delivered["attributes"])["Step ID"]) == ("77", 1)
    moment = next(r for r in rows if r["activityTypeId"] == "46")
    assert (moment["primaryAttributeValueId"], moment["primaryAttributeValue"]) == ("null", "null")
    jobs = api.get(f"{ACT}.json", status="Completed")["result"]
    assert done["exportId"] in {j["exportId"] for j in jobs}
    assert done["exportId"] not in {j["exportId"] for j in api.get("/bulk/v1/leads/export.json")["result"]}


def test_activity_export_filters(api: Api, history: list[dict[str, Any]]) -> None:
    february = [h for h in history if "2025-02" <= h["activityDate"] < "2025-03"]
    opens = _window("2025-02-01T00:00:00Z", "2025-02-28T23:59:59Z", activityTypeIds=[10, 11])
    _, data = _run(api, ACT, {**opens, "fields": ["leadId", "activityTypeId"]})
    rows = _rows(data)
    assert list(rows[0]) == ["leadId", "activityTypeId"]
    assert len(rows) == len([h for h in february if h["activityTypeId"] in (10, 11)])
    mailing = february[0]["primaryAttributeValueId"]
    one = _window(
        "2025-02-01T00:00:00Z",
        "2025-02-28T23:59:59Z",
        activityTypeIds=[7],
        primaryAttributeValueIds=[mailing],
    )
    _, data = _run(api, ACT, one)
    expected = [h for h in february if h["activityTypeId"] == 7 and h["primaryAttributeValueId"] == mailing]
    assert len(_rows(data)) == len(expected) > 0


@pytest.mark.parametrize(
    ("body", "code", "text"),
    [
        (_window("2025-01-01T00:00:00Z", "2025-02-01T00:00:01Z"), "1003", "31 days"),
        ({"filter": {"activityTypeIds": [7]}}, "1003", "createdAt"),
        (
            _window("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", activityTypeIds=[37]),
            "1003",
            "Delete Lead",
        ),
        (_window("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", staticListId=5), "1035", "staticListId"),
        ({**_window("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"), "fields": ["email"]}, "1006", "email"),
        (_window("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z", primaryAttributeValueIds=[1]), "1003", ""),
    ],
)
def test_activity_export_rejects(api: Api, body: dict[str, Any], code: str, text: str) -> None:
    answer = api.post(f"{ACT}/create.json", body)
    assert error_code(answer) == code
    assert text in answer["errors"][0]["message"]


def _members_program(api: Api) -> tuple[dict[str, Any], list[int]]:
    name = f"Export Webinar {uuid.uuid4().hex[:8]}"
    program = api.emu.admin("POST", "programs", json={"name": name, "type": "Event", "channel": "Webinar"})
    prog = program.json()["result"][0]
    tag = uuid.uuid4().hex[:8]
    records = [{"email": f"pmx-{tag}-{i}@example.com", "firstName": f"P{i}"} for i in range(5)]
    leads = [int(r["id"]) for r in api.post("/rest/v1/leads.json", {"input": records})["result"]]
    for status, who in (("Registered", leads), ("Attended", leads[:2]), ("No Show", leads[2:3])):
        body = {"programId": prog["id"], "statusName": status, "leadIds": who, "at": "2025-03-01T10:00:00Z"}
        api.emu.admin("POST", "program-members", json=body)
    return prog, leads


def test_program_member_export_csv(api: Api) -> None:
    prog, leads = _members_program(api)
    fields = ["leadId", "firstName", "email", "statusName", "reachedSuccess", "membershipDate", "program"]
    done, data = _run(api, PM, {"fields": fields, "filter": {"programId": prog["id"]}})
    rows = _rows(data)
    assert list(rows[0]) == ["Lead Id", "firstName", "email", "Status", "Success", "Member Date", "Program"]
    assert done["numberOfRecords"] == len(rows) == 5
    assert [int(r["Lead Id"]) for r in rows] == leads
    assert [r["Status"] for r in rows] == ["Attended", "Attended", "No Show", "Registered", "Registered"]
    assert [r["Success"] for r in rows] == ["true", "true", "false", "false", "false"]
    assert {r["Member Date"] for r in rows} == {"2025-03-01T10:00:00Z"}
    assert rows[0]["firstName"] == "P0"
    assert rows[0]["Program"] == prog["name"]

    other, _ = _members_program(api)
    body = {
        "fields": ["leadId", "statusName"],
        "columnHeaderNames": {"statusName": "status"},
        "filter": {"programIds": [prog["id"], other["id"]], "statusNames": ["Attended"]},
    }
    _, data = _run(api, PM, body)
    rows = _rows(data)
    assert list(rows[0]) == ["programId", "Lead Id", "status"]
    assert [(int(r["programId"]), r["status"]) for r in rows] == [(prog["id"], "Attended")] * 2 + [
        (other["id"], "Attended")
    ] * 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"filter": {"programId": 1001}}, "701"),
        ({"fields": ["leadId", "nope"], "filter": {"programId": 1001}}, "1006"),
        ({"fields": ["leadId"], "filter": {"programId": 987654}}, "1013"),
        ({"fields": ["leadId"], "filter": {"programId": 1001, "programIds": [1001]}}, "1003"),
        ({"fields": ["leadId"], "filter": {"programId": 1001, "statusNames": ["Opened"]}}, "1003"),
        ({"fields": ["leadId"], "filter": {"programId": 1001, "nurtureCadence": "norm"}}, "1035"),
    ],
)
def test_program_member_export_rejects(api: Api, body: dict[str, Any], code: str) -> None:
    assert error_code(api.post(f"{PM}/create.json", body)) == code


def test_queue_and_daily_volume_are_shared_by_every_object(api: Api, history: list[dict[str, Any]]) -> None:
    api.emu.admin("PUT", "limits", json={"enabled": True, "bulk_job_s": 200, "rate_limit": 10_000})
    lead = {
        "fields": ["id"],
        "filter": {"createdAt": {"startAt": "2025-01-01T00:00:00Z", "endAt": "2025-01-02T00:00:00Z"}},
    }
    act = _window("2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z")
    member = {"fields": ["leadId"], "filter": {"programId": 1001}}
    plan = [("/bulk/v1/leads/export", lead)] * 4 + [(ACT, act)] * 3 + [(PM, member)] * 4
    jobs = [
        (prefix, api.post(f"{prefix}/create.json", body)["result"][0]["exportId"]) for prefix, body in plan
    ]
    try:
        for prefix, export_id in jobs[:10]:
            assert api.post(f"{prefix}/{export_id}/enqueue.json")["success"]
        refused = api.post(f"{jobs[10][0]}/{jobs[10][1]}/enqueue.json")
        assert (error_code(refused), refused["errors"][0]["message"]) == ("1029", "Too many jobs in queue")

        def states() -> dict[str, int] | None:
            seen = [api.get(f"{p}/{e}/status.json")["result"][0]["status"] for p, e in jobs[:10]]
            tally = {s: seen.count(s) for s in set(seen)}
            return tally if tally.get("Processing") == 2 else None

        assert wait_for(states) == {"Processing": 2, "Queued": 8}
    finally:
        for prefix, export_id in jobs:
            api.post(f"{prefix}/{export_id}/cancel.json")
    api.emu.admin("PUT", "limits", json={"bulk_job_s": 1})
    _run(api, ACT, act)  # a finished activity export uses some of today's volume ...
    api.emu.admin("PUT", "limits", json={"export_daily_mb": 0.000001})
    refused = api.post(f"{PM}/create.json", member)  # ... which program member exports share
    assert error_code(refused) == "1029"
    assert "Export daily quota" in refused["errors"][0]["message"]


def test_files_expire_after_seven_days(api: Api, emulator: RunningEmulator) -> None:
    done, _ = _run(api, PM, {"fields": ["leadId"], "filter": {"programId": 1001}})
    old = _z(dt.datetime.now(dt.UTC) - dt.timedelta(days=8))
    with sqlite3.connect(emulator.db_path, timeout=10) as conn:
        conn.execute("UPDATE export_jobs SET finishedAt = ? WHERE exportId = ?", (old, done["exportId"]))
    assert api.call("GET", f"{PM}/{done['exportId']}/file.json").status_code == 404
    assert api.get(f"{PM}/{done['exportId']}/status.json")["result"][0]["status"] == "Completed"


def test_admin_history_refuses_unknown_types(emulator: RunningEmulator) -> None:
    bad = {"activities": [{"leadId": 1, "activityTypeId": 999, "activityDate": "2025-01-01T00:00:00Z"}]}
    with pytest.raises(requests.HTTPError, match="400"):
        emulator.admin("POST", "activities", json=bad)

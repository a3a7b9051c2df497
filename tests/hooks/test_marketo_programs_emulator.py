"""MarketoHook's program, membership and activity-export methods against a real emulator over HTTPS."""

from __future__ import annotations

import csv
import gc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from crm_sync_hooks.errors import CallBudgetExhausted, FatalApiError
from crm_sync_hooks.marketo import MarketoHook
from crm_sync_hooks.results import WriteStatus
from tests.hooks.test_marketo_emulator import FAST, calls, connect
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = pytest.mark.e2e

START = datetime(2025, 4, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory) -> Iterator[RunningEmulator]:
    emu = start_emulator(
        "marketo", tmp_path_factory.mktemp("marketo"), ["--time-scale", "0.01"], seed_scale=20
    )
    yield emu
    gc.collect()
    emu.stop()


@pytest.fixture(autouse=True)
def _clean_emulator(emulator) -> None:
    emulator.admin("DELETE", "faults")
    emulator.admin("POST", "stats/reset")


@pytest.fixture
def hook(monkeypatch, emulator, tmp_path) -> Iterator[MarketoHook]:
    hook = MarketoHook(connect(monkeypatch, emulator, tmp_path), retry_policy=FAST)
    yield hook
    hook.close()


def _program(emulator: RunningEmulator, channel: str = "Webinar", ptype: str = "Event") -> dict[str, Any]:
    spec = {"name": f"Hook {channel} {uuid.uuid4().hex[:8]}", "type": ptype, "channel": channel}
    return dict(emulator.admin("POST", "programs", json=spec).json()["result"][0])


def _leads(hook: MarketoHook, count: int) -> list[int]:
    tag = uuid.uuid4().hex[:8]
    results = hook.sync_leads(
        [{"email": f"hp-{tag}-{i}@example.com", "firstName": f"H{i}"} for i in range(count)]
    )
    return [int(r.id) for r in results if r.id]


def test_programs_are_browsed_in_pages_and_read_by_id_and_name(hook, emulator):
    made = [_program(emulator) for _ in range(3)]
    pages = list(hook.get_programs(max_return=2))
    assert all(1 <= len(p) <= 2 for p in pages)
    listed = [p["id"] for page in pages for p in page]
    assert {p["id"] for p in made} <= set(listed)
    assert len(listed) == len(set(listed))
    assert calls(emulator)["GET /rest/asset/v1/programs.json"] == len(listed) // 2 + 1
    assert hook.get_program(made[0]["id"])["name"] == made[0]["name"]
    assert hook.get_program_by_name(made[1]["name"])["id"] == made[1]["id"]
    assert hook.get_program(987654) is None
    statuses = {s["name"]: s for s in hook.get_channel("Webinar")["progressionStatuses"]}
    assert statuses["Attended"]["success"] is True
    assert hook.get_channel("No Such Channel") is None


def test_member_status_paging_removal_and_the_activity_feed(hook, emulator):
    program = _program(emulator)
    leads = _leads(hook, 5)
    token = hook.get_paging_token(datetime.now(UTC) + timedelta(days=1))
    created = hook.set_program_member_status(program["id"], [*leads, 99_999_999], "Registered")
    assert [r.status for r in created] == [WriteStatus.CREATED] * 5 + [WriteStatus.SKIPPED]
    assert (created[5].id, created[5].code) == ("99999999", "1004")
    back = hook.set_program_member_status(program["id"], leads[:1], "Invited")
    assert (back[0].status, back[0].code, back[0].id) == (WriteStatus.SKIPPED, "1037", str(leads[0]))
    attended = hook.set_program_member_status(program["id"], leads[:2], "Attended")
    assert [r.status for r in attended] == [WriteStatus.UPDATED] * 2
    with pytest.raises(FatalApiError, match=r"1025|not found"):
        hook.set_program_member_status(program["id"], leads[:1], "Opened")

    pages = list(hook.get_program_members(program["id"], fields=["leadId", "statusName"], batch_size=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    members = {m["leadId"]: m["statusName"] for page in pages for m in page}
    assert members == {**dict.fromkeys(leads, "Registered"), leads[0]: "Attended", leads[1]: "Attended"}
    successes = list(hook.get_program_members(program["id"], filter_values=[True], fields=["leadId"]))
    assert sorted(m["leadId"] for page in successes for m in page) == sorted(leads[:2])

    removed = hook.remove_program_members(program["id"], [leads[4], leads[4]])
    assert [(r.status, r.code) for r in removed] == [
        (WriteStatus.DELETED, None),
        (WriteStatus.SKIPPED, "1037"),
    ]
    changed = hook.change_lead_program_status(program["id"], [leads[3], leads[4]], "No Show")
    assert [r.status for r in changed] == [WriteStatus.UPDATED, WriteStatus.SKIPPED]  # members only
    assert [(m["id"], m["progressionStatus"]) for m in hook.get_lead_program_memberships(leads[3])] == [
        (program["id"], "No Show")
    ]
    assert hook.get_lead_program_memberships(leads[4]) == []

    # An incremental sync reads membership changes from the activity feed (type 104).
    types = {t["name"]: t["id"] for t in hook.get_activity_types()}
    feed = [
        r
        for page in hook.get_activities(token, [types["Change Status in Progression"]])
        for r in page.records
    ]
    moves = [(r["leadId"], {a["name"]: a["value"] for a in r["attributes"]}["New Status"]) for r in feed]
    assert moves[:5] == [(lead, "Registered") for lead in leads]
    assert moves[5:] == [
        (leads[0], "Attended"),
        (leads[1], "Attended"),
        (leads[4], "Not in Program"),
        (leads[3], "No Show"),
    ]


def test_export_program_members_to_a_file(hook, emulator, tmp_path):
    program = _program(emulator, "Email Send", "Email")
    leads = _leads(hook, 4)
    hook.set_program_member_status(program["id"], leads, "Sent")
    hook.set_program_member_status(program["id"], leads[:1], "Clicked")
    dest = tmp_path / "members.csv"
    out = hook.export_program_members(
        program["id"], ["leadId", "firstName", "statusName", "reachedSuccess"], dest
    )
    assert out.path == dest
    assert out.rows == 4
    assert len(out.export_ids) == 1
    with dest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["leadId", "firstName", "statusName", "reachedSuccess"]  # REST names, always
    assert [(int(r["leadId"]), r["statusName"], r["reachedSuccess"]) for r in rows] == [
        (leads[0], "Clicked", "true"),
        *((lead, "Sent", "false") for lead in leads[1:]),
    ]
    assert calls(emulator)["POST /bulk/v1/program/members/export/create.json"] == 1


def _history(lead_ids: list[int]) -> list[dict[str, Any]]:
    out = []
    for day in range(0, 90, 2):
        when = START + timedelta(days=day, hours=8)
        for n, lead in enumerate(lead_ids):
            kind = (7, 10, 11, 1, 2, 46)[(day + n) % 6]
            stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(
                {
                    "leadId": lead,
                    "activityTypeId": kind,
                    "activityDate": stamp,
                    "primaryAttributeValueId": 9000 + day,
                    "attributes": {"Note": f"day {day}"},
                }
            )
    # Exactly on a window boundary (START + 31 days): must land in one file only.
    boundary = (START + timedelta(days=31)).strftime("%Y-%m-%dT%H:%M:%SZ")
    out.append({"leadId": lead_ids[0], "activityTypeId": 46, "activityDate": boundary})
    out.append({"leadId": lead_ids[0], "activityTypeId": 37, "activityDate": boundary})
    return out


def test_export_three_months_of_activities_to_one_file(hook, emulator, tmp_path):
    leads = _leads(hook, 3)
    history = _history(leads)
    emulator.admin("POST", "activities", json={"activities": history})
    emulator.admin("POST", "stats/reset")
    dest = tmp_path / "activities.csv"
    out = hook.export_activities(START, START + timedelta(days=90), dest, poll_seconds=0.05)
    with dest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = sorted(h["activityDate"] for h in history if h["activityTypeId"] != 37)
    assert [r["activityDate"] for r in rows] == expected
    assert out.rows == len(rows)
    assert len({r["marketoGUID"] for r in rows}) == len(rows)  # the boundary activity once
    assert "37" not in {r["activityTypeId"] for r in rows}
    assert len(out.export_ids) == 3  # 31 + 31 + 28 days
    assert calls(emulator)["POST /bulk/v1/activities/export/create.json"] == 3
    assert calls(emulator)["GET /bulk/v1/activities/export/{id}/file.json"] == 3

    clicks = hook.export_activities(
        START,
        START + timedelta(days=31),
        tmp_path / "c.csv",
        activity_type_ids=[11],
        fields=["leadId", "activityTypeId"],
        poll_seconds=0.05,
    )
    with clicks.path.open(newline="") as fh:
        assert {tuple(r) for r in csv.reader(fh)} >= {("leadId", "activityTypeId"), (str(leads[0]), "11")}
    with pytest.raises(ValueError, match="31 days"):
        hook.export_activities(START, START + timedelta(days=60), dest, window=timedelta(days=40))


def test_program_calls_count_against_the_daily_budget(monkeypatch, emulator, tmp_path):
    emulator.admin("POST", "reset-counters")
    hook = MarketoHook(
        connect(monkeypatch, emulator, tmp_path, "mkto_pbudget", daily_call_budget=2), retry_policy=FAST
    )
    hook.get_activity_types()
    hook.get_program(1001)
    with pytest.raises(CallBudgetExhausted, match="daily call budget of 2"):
        list(hook.get_programs())
    assert "GET /rest/asset/v1/programs.json" not in calls(emulator)
    hook.close()

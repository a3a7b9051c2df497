"""``sync_program_membership`` end to end: real DAG runs against both emulators.

One Marketo program paired with one Dynamics campaign (an explicit pair in a test mapping file);
two persons, contact ``a`` linked in the id map from the start and contact ``b`` linked only later
(as if ``sync_contact`` had just synced it). One walk through the issue's acceptance: membership
and status both ways, removal both ways, the waiting person retried until it lands, a re-run that
writes nothing, and a run deferred when the Marketo budget is nearly spent.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from crm_sync.state import make_engine, session_scope, upgrade, upsert_links
from crm_sync.state.models import RecordError, RunLedger, Watermark
from tests.e2e.conftest import write_calls

if TYPE_CHECKING:
    from tests.e2e.conftest import SyncEnv

DAG_FILE = Path(__file__).resolve().parents[2] / "dags" / "sync_program_membership.py"
DAG_ID = "sync_program_membership"
PARTIES = "campaignresponse_activity_parties"

MAPPING = """
status_maps:
  webinar:
    to_dynamics: {{Registered: Interested, Attended: Interested, No Show: Not Interested}}
    to_marketo: {{Interested: Attended}}
programs:
  - program_id: {program_id}
    campaign_id: {campaign_id}
    status_map: webinar
"""


def run_dag(expect: str = "success") -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags[DAG_ID]
    for task in dag.tasks:
        task.retries = 0  # a failure shows at once instead of after three delayed retries
    run = dag.test()
    assert run.state == expect, f"{DAG_ID} run ended {run.state}"
    return run


class Org:
    """The program, campaign and persons of the test, and readers of both systems."""

    def __init__(self, env: SyncEnv) -> None:
        self.env = env
        program = env.marketo.admin(
            "POST",
            "programs",
            json={"programs": [{"name": "Webinar - Spring", "type": "Event", "channel": "Webinar"}]},
        ).json()["result"][0]
        self.program_id = int(program["id"])
        self.campaign_id = str(uuid.uuid4())
        self.contacts = {name: str(uuid.uuid4()) for name in ("a", "b")}
        dyn, mkto = env.dyn(), env.mkto()
        try:
            assert dyn.upsert_records(
                "campaigns",
                [{"campaignid": self.campaign_id, "name": "Spring"}],
                ["campaignid"],
                id_column="campaignid",
            )[0].ok
            rows = [
                {"contactid": g, "lastname": n, "emailaddress1": f"{n}@example.com"}
                for n, g in self.contacts.items()
            ]
            assert all(
                r.ok for r in dyn.upsert_records("contacts", rows, ["contactid"], id_column="contactid")
            )
            made = mkto.sync_leads(
                [{"email": f"{n}@example.com"} for n in self.contacts], action="createOnly"
            )
            self.leads = {n: int(r.id or 0) for n, r in zip(self.contacts, made, strict=True)}
        finally:
            dyn.close()
            mkto.close()

    def link(self, name: str) -> None:
        with session_scope(make_engine(self.env.state_url)) as session:
            upsert_links(
                session,
                "contact",
                [
                    {
                        "dynamics_id": self.contacts[name],
                        "marketo_id": str(self.leads[name]),
                        "person_type": "Contact",
                    }
                ],
            )

    def set_status(self, name: str, status: str) -> None:
        hook = self.env.mkto()
        try:
            assert hook.set_program_member_status(self.program_id, [self.leads[name]], status)[0].ok
        finally:
            hook.close()

    def marketo_status(self) -> dict[str, str]:
        hook = self.env.mkto()
        try:
            pages = hook.get_program_members(self.program_id, fields=["leadId", "statusName"])
            by_id = {int(m["leadId"]): str(m["statusName"]) for page in pages for m in page}
        finally:
            hook.close()
        return {n: by_id[i] for n, i in self.leads.items() if i in by_id}

    def dyn_rows(
        self, entity_set: str, select_: list[str], filter_: str, expand: str | None = None
    ) -> list[dict[str, Any]]:
        hook = self.env.dyn()
        try:
            return [
                r
                for page in hook.query(entity_set, select=select_, filter=filter_, expand=expand)
                for r in page
            ]
        finally:
            hook.close()

    def list_members(self) -> set[str]:
        (item,) = self.dyn_rows("campaignitems", ["entityid"], f"_campaignid_value eq {self.campaign_id}")
        rows = self.dyn_rows("listmembers", ["_entityid_value"], f"_listid_value eq {item['entityid']}")
        names = {g: n for n, g in self.contacts.items()}
        return {names[r["_entityid_value"]] for r in rows}

    def responses(self) -> list[tuple[str, int]]:
        rows = self.dyn_rows(
            "campaignresponses",
            ["activityid", "responsecode"],
            f"_regardingobjectid_value eq {self.campaign_id}",
            expand=f"{PARTIES}($select=_partyid_value,participationtypemask)",
        )
        names = {g: n for n, g in self.contacts.items()}
        return sorted((names[p["_partyid_value"]], int(r["responsecode"])) for r in rows for p in r[PARTIES])


@pytest.fixture
def org(sync_env: SyncEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Org:
    conn = json.loads(os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"])
    conn["extra"]["bulk_poll_seconds"] = 0.5  # the emulator's export jobs finish in well under a second
    monkeypatch.setenv("AIRFLOW_CONN_MARKETO_DEFAULT", json.dumps(conn))
    upgrade(sync_env.state_url)
    made = Org(sync_env)
    mapping = tmp_path / "programs.yaml"
    mapping.write_text(MAPPING.format(program_id=made.program_id, campaign_id=made.campaign_id))
    monkeypatch.setenv("MDS_PROGRAMS_FILE", str(mapping))
    return made


def open_errors(env: SyncEnv) -> list[tuple[str, str, str]]:
    with session_scope(make_engine(env.state_url)) as session:
        rows = session.execute(
            select(RecordError.source_id, RecordError.code, RecordError.message).where(
                RecordError.entity == "program_membership", RecordError.resolved_at.is_(None)
            )
        )
        return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_membership_both_ways_with_status_changes_removals_and_a_waiting_person(
    org: Org, sync_env: SyncEnv
) -> None:
    # Before the first run: both are registered in Marketo; only a is linked to its contact.
    org.link("a")
    org.set_status("a", "Registered")
    org.set_status("b", "Registered")

    run_dag()  # first run: the bulk program-member export
    calls = sync_env.marketo.stats()["calls"]
    assert calls.get("POST /bulk/v1/program/members/export/create.json") == 1
    assert org.list_members() == {"a"}
    assert org.responses() == [("a", 1)]  # Registered -> Interested
    (error,) = open_errors(sync_env)
    assert error[:2] == (f"{org.program_id}:{org.leads['b']}", "PERSON_NOT_SYNCED")
    assert f"program {org.program_id} / campaign {org.campaign_id}" in error[2]
    assert str(org.leads["b"]) in error[2]
    # The sync's own Interested response did not set Attended (to_marketo) in Marketo: no echo.
    assert org.marketo_status() == {"a": "Registered", "b": "Registered"}

    # b is synced now; a attends (a status change through the activity feed).
    org.link("b")
    org.set_status("a", "Attended")
    run_dag()
    assert org.list_members() == {"a", "b"}
    assert org.responses() == [("a", 1), ("a", 1), ("b", 1)]
    assert open_errors(sync_env) == []
    assert org.marketo_status() == {"a": "Attended", "b": "Registered"}

    # Dynamics -> Marketo: an Interested response recorded for b sets Attended (the YAML allows it).
    hook = sync_env.dyn()
    try:
        hook.call(
            "POST",
            "campaignresponses",
            json={
                "subject": "Called back",
                "responsecode": 1,
                "regardingobjectid_campaign_campaignresponse@odata.bind": f"/campaigns({org.campaign_id})",
                PARTIES: [
                    {
                        "partyid_contact@odata.bind": f"/contacts({org.contacts['b']})",
                        "participationtypemask": 11,
                    }
                ],
            },
        )
    finally:
        hook.close()
    run_dag()
    assert org.marketo_status() == {"a": "Attended", "b": "Attended"}

    # Removal Marketo -> Dynamics: a leaves the program, and its list.
    hook_m = sync_env.mkto()
    try:
        assert hook_m.remove_program_members(org.program_id, [org.leads["a"]])[0].ok
    finally:
        hook_m.close()
    run_dag()
    assert org.list_members() == {"b"}
    assert org.marketo_status() == {"b": "Attended"}
    # b's Attended, set by the sync, came back through the feed as no change: no second response.
    assert org.responses() == [("a", 1), ("a", 1), ("b", 1), ("b", 1)]

    # Removal Dynamics -> Marketo: b is taken off the campaign's list.
    (item,) = org.dyn_rows("campaignitems", ["entityid"], f"_campaignid_value eq {org.campaign_id}")
    hook = sync_env.dyn()
    try:
        assert all(r.ok for r in hook.remove_list_members(item["entityid"], [org.contacts["b"]]))
    finally:
        hook.close()
    run_dag()
    assert org.marketo_status() == {}
    assert org.list_members() == set()

    # A re-run writes nothing on either side.
    responses = org.responses()
    sync_env.reset_stats()
    run_dag()
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}
    assert (org.responses(), org.list_members(), org.marketo_status()) == (responses, set(), {})
    with session_scope(make_engine(sync_env.state_url)) as session:
        ledger = session.execute(
            select(RunLedger.status, RunLedger.api_calls).where(RunLedger.entity == "program_membership")
        ).all()
    assert [status for status, _ in ledger] == ["success"] * 6
    assert all(calls > 0 for _, calls in ledger)  # every run's calls counted into its ledger row
    # A quiet run costs 2 Marketo calls (activity types, one feed page) and 2 Dataverse calls
    # (one delta read each of campaignresponses and listmembers).
    assert ledger[-1][1] == 4


def test_a_run_defers_when_the_marketo_budget_is_nearly_spent(
    org: Org, sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    org.link("a")
    org.set_status("a", "Registered")
    # usable 4 (reserve 1), headroom 1: the extract's 4 calls would leave 0
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MARKETO_DAILY_QUOTA", "5")
    run = run_dag()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == dict.fromkeys(
        ("extract_changes", "load_to_dynamics", "load_to_marketo", "commit"), "skipped"
    )
    with session_scope(make_engine(sync_env.state_url)) as session:
        assert session.execute(
            select(RunLedger.status).where(RunLedger.entity == "program_membership")
        ).scalars().all() == ["deferred"]
        assert session.execute(select(Watermark.entity)).scalars().all() == []
    assert org.responses() == []

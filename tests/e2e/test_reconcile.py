"""Reconciliation end to end: real sync runs against the emulators, then both systems compared.

"Behind the sync's back" is made real: records are changed, deleted and duplicated through the
emulators' public APIs, then the sync's watermarks are moved past those changes (a fresh delta
link, a fresh person-feed token), as if the changes had been lost. Only a reconciliation can
find them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select

from crm_sync.reconcile.__main__ import main as reconcile_cli
from crm_sync.state import lookup_links, session_scope, set_watermark
from tests.e2e.conftest import SyncEnv

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.e2e

ORDER = ("sync_user", "sync_team", "sync_account", "sync_contact", "sync_lead")
RECONCILE_DAG = Path(__file__).resolve().parents[2] / "dags" / "reconcile.py"


def _full_sync(env: SyncEnv) -> None:
    for dag_id in ORDER:
        env.run(dag_id)


def _reconcile(env: SyncEnv, **conf: Any) -> tuple[str, list[tuple[Any, ...]], Any]:
    """One real ``reconcile`` DAG run; returns its state, the stored findings and the run row."""
    from airflow.dag_processing.dagbag import DagBag

    from crm_sync.reconcile.store import ReconcileRun, load_differences

    bag = DagBag(dag_folder=str(RECONCILE_DAG))
    assert bag.import_errors == {}, bag.import_errors
    run = bag.dags["reconcile"].test(run_conf=conf)
    engine = env.state()
    try:
        with session_scope(engine) as session:
            stored = session.execute(
                select(ReconcileRun).where(ReconcileRun.run_id == run.run_id)
            ).scalar_one()
            found = load_differences(session, stored.id)
            session.expunge(stored)
    finally:
        engine.dispose()
    rows = [(r["kind"], r["dynamics_id"], r["marketo_id"], r["field"]) for r in found.to_dict("records")]
    return str(run.state), sorted(rows, key=str), stored


def _hide_changes(env: SyncEnv) -> None:
    """Move the lead sync past everything that happened so far, as if those changes were lost."""
    time.sleep(1.1)  # the paging token has second resolution
    dyn, mkto = env.dyn(), env.mkto()
    try:
        delta = [p.delta_link for p in dyn.track_changes("leads", ["leadid"]) if p.delta_link][-1]
        token = mkto.get_paging_token(datetime.now(UTC))
    finally:
        dyn.close()
        mkto.close()
    engine = env.state()
    with session_scope(engine) as session:
        set_watermark(session, "lead", "d2m", str(delta))
        for name in ("lead", "contact", "_person_feed"):
            set_watermark(session, name, "m2d", token)
    engine.dispose()


def _linked_leads(env: SyncEnv) -> list[tuple[str, str]]:
    engine = env.state()
    with session_scope(engine) as session:
        links = lookup_links(session, "lead")
    engine.dispose()
    active = links[links["state"].eq("active") & links["marketo_id"].notna()]
    return sorted(zip(active["dynamics_id"].astype(str), active["marketo_id"].astype(str), strict=True))


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 300}], indirect=True)
def test_reconcile_finds_exactly_the_hidden_changes_and_repair_clears_them(
    sync_env: SyncEnv,
    new_guid: Callable[[], str],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _full_sync(sync_env)
    linked = _linked_leads(sync_env)
    assert len(linked) > 200
    # About 1 % of the synced leads altered on each side: updates, deletes, a duplicate, and a
    # person flagged deleted in Marketo while its lead still exists.
    (d_upd, d_upd_id), (d_del, d_del_id), (d_src, _), (m_upd, m_upd_id), (m_del, m_del_id), (m_dup, _) = (
        linked[:6]
    )
    m_flag, m_flag_id = linked[6]
    d_new = new_guid()
    dyn = sync_env.dyn()
    try:
        assert all(
            r.ok
            for r in dyn.upsert_records(
                "leads", [{"leadid": d_upd, "jobtitle": "Set in Dynamics"}], ["leadid"], id_column="leadid"
            )
        )
        assert all(r.ok for r in dyn.delete_records("leads", [d_del]))
        (src,) = [
            r
            for p in dyn.query("leads", select=["lastname", "emailaddress1"], filter=f"leadid eq {d_src}")
            for r in p
        ]
        copy = {"leadid": d_new, "lastname": src["lastname"], "emailaddress1": src["emailaddress1"]}
        assert all(r.ok for r in dyn.upsert_records("leads", [copy], ["leadid"], id_column="leadid"))
    finally:
        dyn.close()
    mkto = sync_env.mkto()
    try:
        assert all(
            r.ok
            for r in mkto.sync_leads(
                [{"externalPersonId": m_upd, "title": "Set in Marketo"}], "updateOnly", "externalPersonId"
            )
        )
        assert all(r.ok for r in mkto.delete_leads([int(m_del_id)]))
        flag = [{"id": int(m_flag_id), "msdIsDeleted": True}]
        assert all(r.ok for r in mkto.sync_leads(flag, "updateOnly", "id"))
        (dup,) = mkto.sync_leads(
            [{"externalPersonId": m_dup, "msdType": "Lead", "lastName": "Twin"}], "createDuplicate"
        )
        assert dup.ok, dup
    finally:
        mkto.close()
    _hide_changes(sync_env)

    # A plain incremental run sees none of it.
    sync_env.reset_stats()
    sync_env.run("sync_lead")
    assert sync_env.marketo.stats()["records"].get("lead.write", 0) == 0

    expected = sorted(
        [
            ("divergent", d_upd, d_upd_id, "title"),
            ("orphan", d_del, d_del_id, None),
            ("missing_in_marketo", d_new, None, None),
            ("divergent", m_upd, m_upd_id, "title"),
            ("missing_in_marketo", m_del, None, None),
            ("missing_in_marketo", m_flag, m_flag_id, None),  # flagged deleted, record still there
            ("duplicate_in_marketo", m_dup, str(dup.id), None),
        ],
        key=str,
    )
    # Over the threshold: the run fails (the failure alert fires), the report is stored anyway.
    caplog.set_level(logging.ERROR, logger="crm_sync.alerting")
    state, found, stored = _reconcile(sync_env, entities=["lead"], threshold=0.001, poll_seconds=0.5)
    assert state == "failed"
    (alert,) = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("Task failed: dag=reconcile")
    ]
    assert "ReconcileThresholdExceeded" in alert
    assert "lead 2.33%" in alert  # 7 records differ out of 300 Dataverse rows
    assert found == expected
    assert stored.total == 7
    assert Path(stored.csv_path.removeprefix("file://")).read_text().count("\n") == 8  # header + 7
    assert "duplicate_in_marketo" in Path(stored.html_path.removeprefix("file://")).read_text()

    state, _, stored = _reconcile(sync_env, entities=["lead"], repair=True, threshold=1.0, poll_seconds=0.5)
    assert state == "success"
    assert stored.repaired
    sync_env.run("sync_lead")  # one incremental run carries the repairs
    capsys.readouterr()
    # The CLI (the demo's agreement check) over every entity: nothing differs any more.
    status = reconcile_cli(["check", "--entities", "user,team,account,contact,lead", "--poll-seconds", "0.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "no differences" in out, out
    for entity in ("user", "team", "account", "contact", "lead"):
        assert f"{entity}: " in out, out

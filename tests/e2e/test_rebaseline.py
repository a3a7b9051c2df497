"""Dynamics sandbox refresh end to end: the sync stops with an alert, ``rebaseline`` re-links."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from crm_sync.airflow_api import AirflowApi
from crm_sync.reconcile.__main__ import main as reconcile_cli
from tests.e2e.conftest import SyncEnv
from tests.support.emulator_procs import free_port

pytestmark = pytest.mark.e2e

ORDER = ("sync_user", "sync_team", "sync_account", "sync_contact", "sync_lead")
REBASELINE_DAG = Path(__file__).resolve().parents[2] / "dags" / "rebaseline.py"


def _active_persons(env: SyncEnv) -> Counter[str]:
    """Linked, not-deleted Marketo persons by Dataverse key (bulk export of every person)."""
    hook = env.mkto()
    try:
        fields = ["id", "externalPersonId", "msdType", "msdIsDeleted"]
        start = datetime.now(UTC) - timedelta(days=1)
        rows = [
            r
            for b in hook.bulk_extract_leads(
                fields, start, datetime.now(UTC) + timedelta(minutes=1), poll_seconds=0.5
            )
            for r in b
        ]
    finally:
        hook.close()
    return Counter(
        str(r["externalPersonId"]).lower()
        for r in rows
        if r.get("externalPersonId") and str(r.get("msdIsDeleted")).lower() not in ("true", "1")
    )


@pytest.fixture
def airflow_api(sync_env: SyncEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AirflowApi]:
    """Airflow's real API server (its own FastAPI app under uvicorn, 127.0.0.1) on this test's
    metadata DB, with an ``airflow_api`` connection the tasks use to pause and unpause DAGs."""
    import uvicorn
    from airflow.api_fastapi.app import create_app, purge_cached_app

    password = secrets.token_urlsafe(16)
    (tmp_path / "passwords.json").write_text(json.dumps({"admin": password}))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "passwords.json"))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(64))
    monkeypatch.setenv("AIRFLOW__API__SECRET_KEY", secrets.token_urlsafe(64))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "API server stopped while starting"
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    conn = {
        "conn_type": "http",
        "host": base,
        "login": "admin",
        "password": password,
        "extra": {"allow_http": True},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_API", json.dumps(conn))
    try:
        yield AirflowApi(base, "admin", password)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        purge_cached_app()


def _paused(api: AirflowApi, dag_id: str) -> bool:
    return bool(api._call("GET", f"dags/{dag_id}")["is_paused"])


def _states(run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _report(env: SyncEnv, run_id: str) -> pd.DataFrame:
    """The dry-run report of a rebaseline run (``report.csv`` in its staging folder)."""
    from crm_sync.engine.staging import run_key

    return pd.read_csv(env.staging / "rebaseline" / run_key(run_id) / "report.csv", dtype=str)


def _strand_a_run(api: AirflowApi, dag_id: str) -> str:
    """A run of ``dag_id`` the scheduler had started when the pause came: ``running`` in the
    metadata DB, where a paused DAG's scheduler leaves it (it examines unpaused DAGs' runs only)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import update

    run_id = api.trigger(dag_id)
    with create_session() as session:
        session.execute(
            update(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
            .values(state=DagRunState.RUNNING)
        )
    assert list(api.runs(dag_id, state="running")) == [run_id]
    return run_id


def _rebaseline(env: SyncEnv, **conf: Any) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REBASELINE_DAG))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["rebaseline"].test(run_conf=conf)


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 100}], indirect=True)
def test_sandbox_refresh_stops_the_sync_then_rebaseline_relinks_without_duplicates(
    sync_env: SyncEnv,
    airflow_api: AirflowApi,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for dag_id in ORDER:
        sync_env.run(dag_id)
    for dag_id in ORDER:
        airflow_api.set_paused(dag_id, False)
    before = _active_persons(sync_env)
    assert len(before) > 50
    assert set(before.values()) == {1}

    refreshed = sync_env.dynamics.admin("POST", "sandbox-refresh").json()
    assert refreshed["records_reissued"] > 100

    caplog.set_level(logging.ERROR, logger="crm_sync.rebaseline")
    run = sync_env.dag("sync_lead").test()
    assert run.state == "failed", "the sync must stop on a refreshed org"
    alerts = [r.getMessage() for r in caplog.records if "sandbox refresh suspected" in r.getMessage()]
    assert len(alerts) == 1, alerts
    assert refreshed["organization_id"] in alerts[0]
    assert "rebaseline" in alerts[0]
    assert "Paused: " in alerts[0]
    assert all(_paused(airflow_api, d) for d in ORDER), "every sync DAG paused"
    # A contact run caught mid-way by the pause holds data of the old org; it must not go on.
    stranded = _strand_a_run(airflow_api, "sync_contact")

    # Report only: nothing changes without confirm; the report lists every record it would touch.
    dry = _rebaseline(sync_env, poll_seconds=0.5)
    assert dry.state == "success"
    assert _active_persons(sync_env) == before
    report = _report(sync_env, dry.run_id)
    deletes = report[report["action"].isin(["delete", "flag_deleted"])]
    assert len(deletes) > 10, report["action"].value_counts()
    assert set(report["entity"]) >= {"account", "lead"}

    # Confirmed, but the mass-delete guard wants the deletes confirmed too: nothing is written.
    # (Its floor lowered to one record: the seeded org has fewer than ten accounts.)
    monkeypatch.setenv("AIRFLOW_VAR_MDS_MASS_DELETE_MIN_RECORDS", "1")
    blocked = _rebaseline(sync_env, confirm=True, poll_seconds=0.5)
    assert blocked.state == "failed"
    assert _states(blocked)["relink"] == "failed"
    assert _active_persons(sync_env) == before
    assert all(_paused(airflow_api, d) for d in ORDER), "the sync DAGs stay paused"
    assert airflow_api.run_state("sync_contact", stranded) == "running", "held while nothing was relinked"

    run = _rebaseline(sync_env, confirm=True, confirm_deletes=True, poll_seconds=0.5)
    assert run.state == "success"
    assert not any(_paused(airflow_api, d) for d in ORDER), "the sync DAGs run again"
    assert airflow_api.run_state("sync_contact", stranded) == "failed", "the held run was failed first"
    for dag_id in ORDER:
        sync_env.run(dag_id)

    after = _active_persons(sync_env)
    assert set(after.values()) == {1}, "no Marketo person is linked twice"
    assert len(after) == len(before), "every person re-linked, none created twice"
    assert not set(after) & set(before), "every key now names a record of the refreshed org"
    capsys.readouterr()
    status = reconcile_cli(["check", "--entities", "user,team,account,contact,lead", "--poll-seconds", "0.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "no differences" in out, out


def _companies(env: SyncEnv, ids: list[str]) -> list[str]:
    hook = env.mkto()
    try:
        pages = hook.query_objects("companies", "externalCompanyId", ids, ["externalCompanyId"])
        return sorted(str(r["externalCompanyId"]) for page in pages for r in page)
    finally:
        hook.close()


def test_rebaseline_deletes_nothing_when_rows_are_hidden_or_the_org_was_not_refreshed(
    sync_env: SyncEnv, caplog: pytest.LogCaptureFixture
) -> None:

    from tests.e2e.persons_support import dyn_upsert

    # Ten GUIDs the emulator's visible_fraction 0.25 shows (first hex digit 0-3), thirty it hides.
    ids = sorted([("1" if i < 10 else "b") + str(uuid.uuid4())[1:] for i in range(40)])
    dyn_upsert(
        sync_env, "accounts", "accountid", [{"accountid": a, "name": f"Co {i}"} for i, a in enumerate(ids)]
    )
    sync_env.run("sync_account")
    assert _companies(sync_env, ids) == ids

    # A narrowed security role: the application user sees a quarter of the accounts, no error.
    shown = sync_env.dynamics.admin("POST", "visibility", json={"table": "account", "visible_fraction": 0.25})
    assert shown.json()["visible_fraction"] == 0.25
    caplog.set_level(logging.ERROR, logger="crm_sync.rebaseline")
    for conf in ({}, {"confirm": True, "confirm_deletes": True}):
        run = _rebaseline(sync_env, entities=["account"], poll_seconds=0.5, **conf)
        assert run.state == "failed", conf
        assert _states(run)["plan"] == "failed"
        assert _companies(sync_env, ids) == ids, "nothing deleted in Marketo"
    alerts = [r.getMessage() for r in caplog.records if "sees" in r.getMessage()]
    assert alerts, "the collapse is alerted"
    assert "account: the Dynamics application user sees 10 rows" in alerts[-1]
    assert "the last full read saw 40" in alerts[-1]

    # Every row visible again, every guard confirmed: still nothing, the org was not refreshed.
    sync_env.dynamics.admin("POST", "visibility", json={"table": "account", "visible_fraction": 1})
    run = _rebaseline(sync_env, entities=["account"], confirm=True, confirm_deletes=True, poll_seconds=0.5)
    assert run.state == "failed"
    states = _states(run)
    assert (states["plan"], states["relink"]) == ("success", "failed")
    assert _companies(sync_env, ids) == ids


def test_a_full_copy_on_a_refreshed_org_stops_with_the_same_alert(
    sync_env: SyncEnv, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.e2e.full_copy_support import full_copy_dag, run_full_copy
    from tests.e2e.persons_support import dyn_upsert

    dyn_upsert(
        sync_env, "systemusers", "systemuserid", [{"systemuserid": str(uuid.uuid4()), "lastname": "U"}]
    )
    run_full_copy(entities=["user"])  # the state store now belongs to this org
    refreshed = sync_env.dynamics.admin("POST", "sandbox-refresh").json()
    caplog.set_level(logging.ERROR)

    dag = full_copy_dag()
    for task in dag.tasks:
        task.retries = 0
    run = dag.test(run_conf={"entities": ["user"]})

    assert run.state == "failed"
    assert _states(run)["user.extract"] == "failed"
    alerts = [r.getMessage() for r in caplog.records if "sandbox refresh suspected" in r.getMessage()]
    assert alerts, "the copy alerts like the sync DAGs"
    assert "dag=full_copy task=user.extract" in alerts[0]
    assert refreshed["organization_id"] in alerts[0]

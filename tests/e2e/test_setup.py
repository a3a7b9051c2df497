"""``python -m crm_sync.setup check|apply`` against bare emulators, then real DAG runs.

Bare emulators (``--bare``) hold no ``msd…`` Marketo person fields, no Dataverse
``new_synctomkto`` column, and change tracking is off on the custom table: a real org before
set-up. The check must list exactly what the entity files need of that, apply must create it
(and, run again, write nothing), and then the full copy and a ``sync_lead`` cycle succeed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from crm_sync.config import MarketoObject, load_entities
from crm_sync.guards.drift import marketo_needs
from crm_sync.setup.__main__ import main as setup_cli
from tests.e2e.conftest import write_calls
from tests.e2e.full_copy_support import run_full_copy

if TYPE_CHECKING:
    from tests.e2e.conftest import SyncEnv

pytestmark = pytest.mark.e2e

BARE = [{"dynamics_seed": 60, "bare": True}]
DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


def check_connections_dag() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(DAGS_DIR / "check_connections.py")).dags["check_connections"]
    for task in dag.tasks:
        task.retries = 0
    return dag


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    status = setup_cli([*argv, "--json"])
    out = capsys.readouterr().out
    return status, json.loads(out)


def _found(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(f["system"], f["object"], f["item"]) for f in report["findings"]}


def expected_on_bare(env: SyncEnv) -> set[tuple[str, str, str]]:
    """What the entity files need that a bare org lacks, computed from the files alone."""
    entities = load_entities(env.entities_dir).values()
    expected = {
        ("marketo", "leads", need.name)
        for e in entities
        if e.marketo.object is MarketoObject.LEAD
        for need in marketo_needs(e)
        if need.name.startswith("msd")
    }
    expected |= {
        ("dynamics", e.dynamics.table, e.dynamics.filter_column) for e in entities if e.dynamics.filter_column
    }
    expected |= {("dynamics", e.dynamics.table, "change tracking") for e in entities if e.custom}
    return expected


@pytest.mark.parametrize("sync_env", BARE, indirect=True)
def test_check_apply_check_then_the_copy_and_a_sync_cycle(
    sync_env: SyncEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _cli(capsys, "check")
    assert status == 1
    assert _found(report) == expected_on_bare(sync_env)
    assert all(f["automatic"] and f["fix"] and f["entities"] for f in report["findings"])

    status, dry = _cli(capsys, "apply", "--dry-run")
    assert status == 1
    assert len(dry["planned"]) == len(report["findings"])
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}

    status, applied = _cli(capsys, "apply")
    assert status == 0, applied
    assert applied["by_hand"] == []
    assert applied["report"]["findings"] == []
    assert all(line.endswith(("done", "created")) for line in applied["done"]), applied["done"]

    status, after = _cli(capsys, "check")
    assert status == 0, after
    assert after["blocked"] == []

    run_full_copy()
    sync_env.run("sync_lead")

    sync_env.reset_stats()
    status, again = _cli(capsys, "apply")
    assert status == 0
    assert again["done"] == []
    assert write_calls(sync_env.marketo.stats()) == {}
    assert write_calls(sync_env.dynamics.stats()) == {}

    # the copy reached Marketo through the created fields
    lead_ids = [
        row["leadid"]
        for page in sync_env.dyn().query("leads", select=["leadid"], page_size=20)
        for row in page
    ][:20]
    persons = [
        p
        for page in sync_env.mkto().get_leads(
            "externalPersonId", lead_ids, fields=["externalPersonId", "msdType"]
        )
        for p in page
    ]
    assert persons
    assert {p.get("msdType") for p in persons} == {"Lead"}


@pytest.mark.parametrize("sync_env", BARE, indirect=True)
def test_problems_a_person_must_fix_are_reported_and_block_only_their_entities(
    sync_env: SyncEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    """Change tracking off, a column the narrowed role cannot write, a field of the wrong type."""
    sync_env.dynamics.admin("POST", "schema", json={"entity": "opportunity", "change_tracking": False})
    sync_env.dynamics.admin(
        "POST",
        "role",
        json={
            "secured": [
                {"table": "lead", "column": "telephone2", "read": True, "create": False, "update": False}
            ]
        },
    )
    created = sync_env.mkto().create_lead_fields(
        [{"name": "msdIsDeleted", "displayName": "Microsoft is Deleted", "dataType": "string"}]
    )
    assert [c["status"] for c in created] == ["created"]

    status, report = _cli(capsys, "check")
    assert status == 1
    by_item = {(f["object"], f["item"]): f for f in report["findings"]}
    tracking = by_item[("opportunity", "change tracking")]
    assert tracking["kind"] == "change_tracking_off"
    assert tracking["entities"] == ["opportunity"]
    assert "Track changes" in tracking["fix"]
    secured = by_item[("lead", "telephone2")]
    assert secured["kind"] == "secured_column"
    assert secured["entities"] == ["lead"]
    assert not secured["automatic"]
    assert "field security profile" in secured["fix"]
    wrong = by_item[("leads", "msdIsDeleted")]
    assert wrong["kind"] == "wrong_type"
    assert "string" in wrong["problem"]
    assert "boolean" in wrong["fix"]
    assert sorted(wrong["entities"]) == ["contact", "lead"]
    # the rest of the bare org is reported as usual, each blocking only its own entities
    assert _found(report) == expected_on_bare(sync_env) | {
        ("dynamics", "opportunity", "change tracking"),
        ("dynamics", "lead", "telephone2"),
    }

    # check_connections starts with the same check: it fails naming the problems, and the
    # connection tests still run (both connections answer)
    run = check_connections_dag().test()
    assert run.state == "failed"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"check_setup": "failed", "test_connection": "success"}

    status, applied = _cli(capsys, "apply")
    assert status == 1
    left = {(f["object"], f["item"]) for f in applied["report"]["findings"]}
    assert left == {("lead", "telephone2"), ("leads", "msdIsDeleted")}
    assert sorted(applied["report"]["blocked"]) == ["contact", "lead"]
    assert {"account", "opportunity", "user", "team", "new_project"} <= set(applied["report"]["ready"])
    assert len(applied["by_hand"]) == 2

    # an entity nothing blocks syncs while the others wait for a person
    sync_env.run("sync_user")
    sync_env.run("sync_opportunity")


def test_the_connection_test_button_does_not_run_the_check(sync_env: SyncEnv) -> None:
    sync_env.reset_stats()
    for hook in (sync_env.mkto(), sync_env.dyn()):
        ok, message = hook.test_connection()
        assert ok, message
    for emulator in (sync_env.marketo, sync_env.dynamics):
        calls = {
            k: v for k, v in emulator.stats()["calls"].items() if "oauth" not in k and "/identity/" not in k
        }
        assert sum(calls.values()) <= 2, calls
        assert not any("describe2" in k or "Privileges" in k or "Attributes" in k for k in calls), calls

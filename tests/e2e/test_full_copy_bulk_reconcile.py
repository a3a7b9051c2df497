"""A full copy's bulk import is reconciled against its file (hardening 5).

Every row of an import must come back as imported or failed with a reason; when Marketo's
status and failure file do not account for every row (here: a failure file missing a row that
the status counts), the load unit fails instead of counting the unlisted row as written. A
re-run, once the reports add up, writes the unit and records the failed row with its reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv
from tests.e2e.full_copy_support import full_copy_dag, run_full_copy
from tests.e2e.persons_support import dyn_upsert, read_persons

pytestmark = pytest.mark.e2e


@pytest.fixture
def bulk_env(sync_env: SyncEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncEnv]:
    monkeypatch.setenv("AIRFLOW_VAR_MDS_FULL_COPY_BULK_THRESHOLD", "1")  # bulk import from one person
    yield sync_env
    sync_env.marketo.admin("POST", "import-report-fault", json={"mode": None})


def test_an_import_whose_reports_miss_a_row_fails_the_unit_then_reruns(bulk_env: SyncEnv) -> None:
    good = [str(uuid.uuid4()) for _ in range(3)]
    bad = str(uuid.uuid4())
    rows = [
        {"leadid": g, "lastname": f"Good{i}", "emailaddress1": f"good{i}@x.test"} for i, g in enumerate(good)
    ]
    rows.append({"leadid": bad, "lastname": "Bad"})  # no email: written by its key
    dyn_upsert(bulk_env, "leads", "leadid", rows)
    # Two Marketo persons already hold the bad lead's key: Marketo fails its row ("1007").
    mkto = bulk_env.mkto()
    try:
        twins = [{"externalPersonId": bad, "lastName": f"Twin{i}"} for i in range(2)]
        assert all(r.ok for r in mkto.sync_leads(twins, action="createDuplicate"))
    finally:
        mkto.close()
    bulk_env.marketo.admin("POST", "import-report-fault", json={"mode": "drop-row"})

    dag = full_copy_dag()
    for task in dag.tasks:  # no Airflow retries: the same report comes back on each try
        task.retries = 0
    run = dag.test(run_conf={"entities": ["lead"]})

    assert run.state == "failed", "a unit whose import does not add up must not pass"
    failed = [ti.task_id for ti in run.get_task_instances() if ti.state == "failed"]
    assert any("load" in t for t in failed), failed
    with bulk_env.state().connect() as conn:
        linked = conn.execute(text("SELECT dynamics_id FROM id_map WHERE entity='lead'")).scalars().all()
        errors = conn.execute(text("SELECT count(*) FROM record_error")).scalar()
    # The unit of persons written by email added up and was recorded; the unit written by key
    # (the bad lead's) recorded nothing: its row was neither counted written nor lost.
    assert sorted(linked) == sorted(good)
    assert errors == 0
    imports = bulk_env.marketo.stats()["calls"].get("POST /bulk/v1/leads.json", 0)
    assert imports >= 1, "the unit went through bulk import"

    bulk_env.marketo.admin("POST", "import-report-fault", json={"mode": None})
    run_full_copy(entities=["lead"])

    written = read_persons(bulk_env, good, ["id", "lastName"])
    assert sorted(p["lastName"] for p in written) == ["Good0", "Good1", "Good2"]
    with bulk_env.state().connect() as conn:
        errors = conn.execute(
            text("SELECT source_id, message FROM record_error WHERE entity='lead' AND resolved_at IS NULL")
        ).all()
    assert [e[0] for e in errors] == [bad]
    assert "1007" in errors[0][1], "the failed row carries Marketo's reason"

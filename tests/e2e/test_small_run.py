"""A one-task run (``small_run``'s single shape) is idempotent and resumes where it failed.

``run_single`` is called as the ``small_run`` task calls it, against the real emulators. Its
first attempt fails in the load (Marketo's person endpoint answers 503), after the extract
and the plan were staged. The retry (the faults lifted) reuses that staged extract and plan:
it reads nothing from Dataverse again, writes the changed lead once, and commits. A third
call of the same run changes nothing and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from crm_sync.engine.context import RunSettings
from crm_sync.guards import GuardSettings
from crm_sync.tasks.small_run import run_single
from crm_sync_hooks.errors import ApiError
from tests.e2e.conftest import SyncEnv, fail_fast, write_calls
from tests.e2e.persons_support import dyn_upsert, read_persons

pytestmark = pytest.mark.e2e

FAULTS = {"error_rate": 1.0, "error_codes": ["503"], "endpoints": ["/rest/v1/leads"]}


def _settings(env: SyncEnv, run_id: str) -> RunSettings:
    return RunSettings(
        run_id=run_id,
        state_url=env.state_url,
        staging_url=f"file://{env.staging}",
        entities_dir=str(env.entities_dir),
    )


def test_a_one_task_run_that_failed_in_its_load_resumes_without_extracting_again(
    sync_env: SyncEnv, new_guid: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_fast(monkeypatch, "marketo_default")  # the faulted load gives up within seconds
    ann = new_guid()
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": ann, "lastname": "Small", "jobtitle": "Before"}])
    sync_env.run("sync_lead")  # the watermarks
    sync_env.run("sync_lead")  # past the first run's own write (its echo in the person feed)
    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": ann, "jobtitle": "One-Task"}])

    settings = _settings(sync_env, "asset_triggered__small_run_resume")
    sync_env.marketo.admin("PUT", "faults", json=FAULTS)
    with pytest.raises(ApiError):  # the load gives up on the 503s
        run_single(settings, "lead", GuardSettings())
    sync_env.marketo.admin("PUT", "faults", json={"error_rate": 0.0})
    with sync_env.state().connect() as conn:
        committed = conn.execute(
            text("SELECT COUNT(*) FROM run_ledger WHERE run_id = :r"), {"r": settings.run_id}
        )
        assert committed.scalar_one() == 0, "the failed attempt committed nothing"

    sync_env.reset_stats()
    counts = run_single(settings, "lead", GuardSettings())
    d_calls: dict[str, int] = sync_env.dynamics.stats()["calls"]
    assert counts["resumed"][:2] == ["extract", "transform"], counts
    assert counts["loaded"] == 1, counts
    assert not [route for route in d_calls if route.startswith("GET /api/data/v9.2/leads")], d_calls
    persons = read_persons(sync_env, [ann], ["externalPersonId", "title"])
    assert [p["title"] for p in persons] == ["One-Task"]

    sync_env.reset_stats()
    again = run_single(settings, "lead", GuardSettings())
    assert again["batches"] == 0, again  # every batch's outcome is staged: nothing is written twice
    assert write_calls(sync_env.marketo.stats()) == {}
    assert len(read_persons(sync_env, [ann], ["externalPersonId"])) == 1

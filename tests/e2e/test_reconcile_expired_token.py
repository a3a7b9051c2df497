"""An expired Dataverse delta token ends in a targeted re-baseline, not a gap or a blind full copy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from crm_sync.reconcile.__main__ import main as reconcile_cli
from tests.e2e.conftest import SyncEnv

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.e2e


def _persons(env: SyncEnv, guids: list[str]) -> dict[str, list[dict[str, Any]]]:
    hook = env.mkto()
    try:
        pages = hook.get_leads("externalPersonId", guids, ["id", "externalPersonId", "title", "msdIsDeleted"])
        out: dict[str, list[dict[str, Any]]] = {}
        for page in pages:
            for r in page:
                out.setdefault(str(r["externalPersonId"]), []).append(r)
        return out
    finally:
        hook.close()


def test_expired_token_resyncs_only_the_differences_with_an_alert(
    sync_env: SyncEnv,
    new_guid: Callable[[], str],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guids = [new_guid() for _ in range(8)]
    rows = [{"leadid": g, "lastname": f"Lead {i}", "jobtitle": "Buyer"} for i, g in enumerate(guids)]
    dyn = sync_env.dyn()
    try:
        assert all(r.ok for r in dyn.upsert_records("leads", rows, ["leadid"], id_column="leadid"))
    finally:
        dyn.close()
    sync_env.run("sync_lead")

    changed, deleted, added = guids[0], guids[1], new_guid()
    dyn = sync_env.dyn()
    try:
        update = [{"leadid": changed, "jobtitle": "Chief Buyer"}, {"leadid": added, "lastname": "Newcomer"}]
        assert all(r.ok for r in dyn.upsert_records("leads", update, ["leadid"], id_column="leadid"))
        assert all(r.ok for r in dyn.delete_records("leads", [deleted]))
    finally:
        dyn.close()
    expired = sync_env.dynamics.admin("POST", "expire-delta-tokens").json()
    assert expired["expired"] >= 1

    sync_env.reset_stats()
    caplog.set_level(logging.ERROR, logger="crm_sync.rebaseline")
    sync_env.run("sync_lead")

    # Only the three differences were written: one update, one create, one delete flag.
    assert sync_env.marketo.stats()["records"].get("lead.write", 0) == 3
    persons = _persons(sync_env, [*guids, added])
    assert persons[changed][0]["title"] == "Chief Buyer"
    assert [p.get("title") for p in persons[added]] == [None]
    assert persons[deleted][0]["msdIsDeleted"] is True
    assert all(len(found) == 1 for found in persons.values()), "no duplicates"
    alerts = [r.getMessage() for r in caplog.records if "delta token expired" in r.getMessage()]
    assert len(alerts) == 1, alerts
    assert "8 rows re-read" in alerts[0]
    assert "6 unchanged (not re-sent), 2 changed or new (synced now), 1 deleted during the gap" in alerts[0]

    # Both systems agree, and the new delta token works: the next run is quiet.
    sync_env.reset_stats()
    sync_env.run("sync_lead")
    assert sync_env.marketo.stats()["records"].get("lead.write", 0) == 0
    capsys.readouterr()
    status = reconcile_cli(["check", "--entities", "lead", "--poll-seconds", "0.5"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "no differences" in out, out

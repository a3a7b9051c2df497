"""Reconciliation end to end: real sync runs against the emulators, then both systems compared."""

from __future__ import annotations

import pytest

from crm_sync.reconcile.__main__ import main as reconcile_cli
from tests.e2e.conftest import SyncEnv

pytestmark = pytest.mark.e2e

ORDER = ("sync_user", "sync_team", "sync_account", "sync_contact", "sync_lead")


@pytest.mark.parametrize("sync_env", [{"dynamics_seed": 300}], indirect=True)
def test_check_reports_no_differences_after_a_full_sync(
    sync_env: SyncEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    for dag_id in ORDER:
        sync_env.run(dag_id)
    status = reconcile_cli(["check", "--entities", "user,team,account,contact,lead", "--poll-seconds", "0.2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "no differences" in out, out
    for entity in ("user", "team", "account", "contact", "lead"):
        assert f"{entity}: " in out, out

"""A person's owner changed in Dynamics reaches Marketo within one run (issue 22; §6.4).

The owner is Dynamics-owned (D→M only): the lead's ``ownerid`` resolves through the synced
sales persons to the Marketo person's ``externalSalesPersonId``. Afterwards the reconciliation
finds no difference and no person twice.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import SyncEnv
from tests.e2e.persons_support import assert_reconciled, dyn_upsert, read_persons

pytestmark = pytest.mark.e2e


def test_an_owner_change_in_dynamics_reaches_marketo_in_one_run(
    sync_env: SyncEnv, new_guid: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    ana, ben, lead = new_guid(), new_guid(), new_guid()
    users = [
        {"systemuserid": ana, "lastname": "Ana", "internalemailaddress": "ana@corp.example"},
        {"systemuserid": ben, "lastname": "Ben", "internalemailaddress": "ben@corp.example"},
    ]
    dyn_upsert(sync_env, "systemusers", "systemuserid", users)
    sync_env.run("sync_user")
    row = {"leadid": lead, "lastname": "Owned", "emailaddress1": "owned@x.test"}
    dyn_upsert(sync_env, "leads", "leadid", [{**row, "ownerid@odata.bind": f"/systemusers({ana})"}])
    sync_env.run("sync_lead")
    (person,) = read_persons(sync_env, [lead], ["id", "externalSalesPersonId"])
    assert person["externalSalesPersonId"] == ana

    dyn_upsert(sync_env, "leads", "leadid", [{"leadid": lead, "ownerid@odata.bind": f"/systemusers({ben})"}])
    sync_env.run("sync_lead")

    (person,) = read_persons(sync_env, [lead], ["id", "externalSalesPersonId"])
    assert person["externalSalesPersonId"] == ben
    assert_reconciled(capsys, "user,lead")

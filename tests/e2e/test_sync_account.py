"""``sync_account`` end to end: Dataverse accounts reach Marketo companies through real DAG runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.e2e.conftest import SyncEnv, read_calls, write_calls

pytestmark = pytest.mark.e2e


def _companies(env: SyncEnv, ids: list[str]) -> dict[str, dict[str, Any]]:
    hook = env.mkto()
    try:
        fields = ["id", "externalCompanyId", "company", "billingCity", "industry", "annualRevenue"]
        pages = hook.query_objects("companies", "externalCompanyId", ids, fields)
        return {r["externalCompanyId"]: r for page in pages for r in page}
    finally:
        hook.close()


def _upsert_accounts(env: SyncEnv, rows: list[dict[str, Any]]) -> None:
    hook = env.dyn()
    try:
        results = hook.upsert_records("accounts", rows, ["accountid"], id_column="accountid")
        assert all(r.ok for r in results), results
    finally:
        hook.close()


def test_accounts_created_updated_deleted_then_quiet(sync_env: SyncEnv, new_guid: Callable[[], str]) -> None:
    acme, globex, hidden = new_guid(), new_guid(), new_guid()
    _upsert_accounts(
        sync_env,
        [
            {
                "accountid": acme,
                "name": "Acme",
                "address1_city": "Boston",
                "industrycode": 7,
                "revenue": 1250.5,
            },
            {"accountid": globex, "name": "Globex", "address1_city": "Paris"},
            {"accountid": hidden, "name": "Hidden", "new_synctomkto": False},
        ],
    )

    sync_env.run("sync_account")  # first run: whole table via change tracking

    companies = _companies(sync_env, [acme, globex, hidden])
    assert set(companies) == {acme, globex}, "the account with the sync filter No must stay out"
    assert companies[acme]["company"] == "Acme"
    assert companies[acme]["billingCity"] == "Boston"
    assert companies[acme]["industry"] == "Consulting"  # option set code 7 -> label
    assert companies[acme]["annualRevenue"] == pytest.approx(1250.5)
    assert sync_env.dynamics.stats()["records"].get("account.write", 0) == 3  # only our arrangement

    # Changes in Dynamics: one update, one delete; the next run carries exactly those.
    _upsert_accounts(sync_env, [{"accountid": acme, "address1_city": "Chicago"}])
    hook = sync_env.dyn()
    try:
        assert all(r.ok for r in hook.delete_records("accounts", [globex]))
    finally:
        hook.close()
    sync_env.reset_stats()

    sync_env.run("sync_account")

    companies = _companies(sync_env, [acme, globex])
    assert companies[acme]["billingCity"] == "Chicago"
    assert companies[acme]["company"] == "Acme"
    assert globex not in companies, "delete_policy delete removes the company"
    m_stats = sync_env.marketo.stats()
    assert m_stats["records"].get("company.write") == 1
    assert write_calls(sync_env.dynamics.stats()) == {}, "a one-way entity never writes to Dynamics"

    # A run with no new changes writes nothing and reads at most twice per side.
    sync_env.reset_stats()
    sync_env.run("sync_account")
    m_stats, d_stats = sync_env.marketo.stats(), sync_env.dynamics.stats()
    assert write_calls(m_stats) == {}
    assert write_calls(d_stats) == {}
    assert read_calls(m_stats) <= 2
    assert read_calls(d_stats) <= 2

    with sync_env.state().connect() as conn:
        ledger = conn.execute(
            text("SELECT extracted, loaded, status FROM run_ledger WHERE entity='account' ORDER BY id")
        ).all()
        links = conn.execute(text("SELECT dynamics_id, state FROM id_map WHERE entity='account'")).all()
    assert [tuple(r) for r in ledger] == [(3, 2, "success"), (2, 2, "success"), (0, 0, "success")]
    assert {r[0]: r[1] for r in links} == {acme: "active", globex: "deleted"}

"""Quota budgeting, call counting and the mass-delete guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
import requests_mock
from sqlalchemy.engine import Engine

from crm_sync.config import EntityConfig, QuotaPriority
from crm_sync.guards import GuardSettings
from crm_sync.guards.calls import CallCounter
from crm_sync.guards.deletes import MassDeleteBlocked, check_mass_delete, linked_records, planned_deletes
from crm_sync.guards.quota import (
    QuotaDeferred,
    QuotaExceededError,
    check_budget,
    check_preflight,
    dynamics_window_calls,
    estimate_load_calls,
    quota_day_start,
    quota_status,
)
from crm_sync.state import session_scope, upsert_links
from crm_sync.state.guards import add_api_calls, run_api_calls

NOON_UTC = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # 06:00 in Chicago (CST, UTC-6)


def test_quota_day_starts_at_midnight_us_central() -> None:
    assert quota_day_start(NOON_UTC) == datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    assert quota_day_start(datetime(2026, 11, 26, 5, 59, tzinfo=UTC)) == datetime(
        2026, 11, 25, 6, 0, tzinfo=UTC
    )


def test_status_counts_marketo_calls_of_the_quota_day_only(state: Engine) -> None:
    with session_scope(state) as s:
        add_api_calls(
            s,
            run_id="r0",
            entity="lead",
            stage="load:b0",
            calls={"marketo": 7},
            at=datetime(2026, 11, 26, 5, tzinfo=UTC),
        )
        add_api_calls(
            s,
            run_id="r1",
            entity="lead",
            stage="extract_changes",
            calls={"marketo": 3, "dynamics": 9},
            at=NOON_UTC,
        )
        add_api_calls(
            s, run_id="r1", entity="lead", stage="extract_changes", calls={"marketo": 2}, at=NOON_UTC
        )  # a retry
        add_api_calls(s, run_id="r2", entity="contact", stage="preflight", calls={"marketo": 1}, at=NOON_UTC)
    with session_scope(state) as s:
        status = quota_status(s, now=NOON_UTC, daily_quota=100, reserve_share=0.2)
        assert run_api_calls(s, "r1", "lead") == {"marketo": 5, "dynamics": 9}
    assert status["used_today"] == 6
    assert status["used_by_entity"] == {"lead": 5, "contact": 1}
    assert (status["reserve"], status["usable"], status["left"]) == (20, 80, 74)
    assert status["day"] == "2026-11-26"
    assert status["resets_at"] == "2026-11-27T06:00:00+00:00"


def test_estimate_counts_calls_per_batch_and_kind() -> None:
    batches = [
        {"marketo_upsert": 300, "dynamics_upsert": 1001},  # a $batch carries up to 1,000 operations
        {"marketo_flag_deleted": 1, "marketo_upsert": 301, "marketo_merge": 2},  # a merge is one call
    ]
    assert estimate_load_calls(batches) == {"marketo": 6, "dynamics": 2}
    with pytest.raises(ValueError, match="unknown staged operation"):
        estimate_load_calls([{"drop_table": 1}])


def _status(left: int, usable: int = 80) -> dict[str, object]:
    return {
        "used_today": usable - left,
        "usable": usable,
        "daily_quota": 100,
        "reserve": 20,
        "left": left,
        "resets_at": "t",
    }


def test_budget_stops_over_quota_and_defers_low_priority(entities: dict[str, EntityConfig]) -> None:
    settings = GuardSettings(low_priority_headroom=0.25)
    lead = entities["lead"]
    low = lead.model_copy(update={"quota_priority": QuotaPriority.LOW})
    assert check_budget(lead, {"marketo": 10}, _status(10), settings)["left_after"] == 0
    with pytest.raises(
        QuotaExceededError, match=r"lead: the load needs 11 Marketo calls but only 10 are left"
    ):
        check_budget(lead, {"marketo": 11}, _status(10), settings)
    with pytest.raises(QuotaDeferred, match="low-priority entity deferred"):
        check_budget(low, {"marketo": 10}, _status(29), settings)  # would leave 19 < 20 headroom
    assert check_budget(low, {"marketo": 10}, _status(30), settings)["left_after"] == 20
    with pytest.raises(QuotaExceededError, match="spent for today"):
        check_preflight(lead, _status(0))


def test_settings_reject_bad_shares() -> None:
    with pytest.raises(ValueError, match="reserve_share"):
        GuardSettings(reserve_share=1.0)
    assert dynamics_window_calls(6000, 0.2) == 4800


def test_mass_delete_blocks_over_share_unless_confirmed(
    entities: dict[str, EntityConfig], state: Engine
) -> None:
    contact = entities["contact"]
    with session_scope(state) as s:
        upsert_links(s, "contact", [{"dynamics_id": f"d{i}", "marketo_id": str(i)} for i in range(40)])
        assert linked_records(s, "contact") == 40
    deletes = planned_deletes([{"marketo_flag_deleted": 8}, {"marketo_flag_deleted": 4, "marketo_upsert": 3}])
    with pytest.raises(
        MassDeleteBlocked, match=r"flag as deleted 12 of 40 linked records \(30%, more than the 20%"
    ):
        check_mass_delete(contact, deletes=deletes, linked=40)
    assert check_mass_delete(contact, deletes=deletes, linked=40, confirmed=True)["confirmed"] is True
    assert check_mass_delete(contact, deletes=deletes, linked=40, max_share=0.5)["share"] == 0.3
    assert check_mass_delete(contact, deletes=9, linked=10)["deletes"] == 9, "under the minimum count"


def test_call_counter_counts_api_calls_but_not_tokens() -> None:
    class Hook:
        session = requests.Session()

    counter = CallCounter()
    counter.attach(Hook, "marketo")
    with requests_mock.Mocker(session=Hook.session) as mock:
        mock.post("https://m.example/identity/oauth/token", json={})
        mock.get("https://m.example/rest/v1/leads.json", json={})
        Hook.session.post("https://m.example/identity/oauth/token")
        Hook.session.get("https://m.example/rest/v1/leads.json")
        Hook.session.get("https://m.example/rest/v1/leads.json")
    assert counter.as_dict() == {"marketo": 2}

"""Scope, order and partition bookkeeping of the full copy (plain functions, real staging files)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_sync.config import ENTITIES_DIR, load_entities
from crm_sync.engine.full_copy.load import first_poll_estimate
from crm_sync.engine.full_copy.scope import (
    CopyScope,
    close_partition,
    copy_order,
    current_partition,
    open_partition,
    scope_for_run,
)
from crm_sync.engine.staging import StagingArea

ENTITIES = load_entities(ENTITIES_DIR)
NAMES = list(ENTITIES)


def test_backfill_and_scheduled_runs_copy_their_data_interval() -> None:
    start, end = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    for run_type in ("backfill", "scheduled"):
        scope = scope_for_run(
            {"from_date": "2020-01-01"},
            run_type=run_type,
            interval_start=start,
            interval_end=end,
            known_entities=NAMES,
        )
        assert (scope.start, scope.end) == (start, end)
        assert (
            scope.createdon_filter()
            == "createdon ge 2025-01-01T00:00:00Z and createdon lt 2025-02-01T00:00:00Z"
        )
        assert not scope.everything


def test_manual_run_copies_everything_or_the_param_range_with_an_inclusive_end() -> None:
    everything = scope_for_run(
        {}, run_type="manual", interval_start=None, interval_end=None, known_entities=NAMES
    )
    assert everything.everything
    assert everything.createdon_filter() is None
    assert everything.key() == "all"
    ranged = scope_for_run(
        {"from_date": "2025-03-01", "to_date": "2025-03-31", "entities": ["lead"], "dry_run": True},
        run_type="manual",
        interval_start=datetime(2026, 1, 1, tzinfo=UTC),
        interval_end=datetime(2026, 1, 1, tzinfo=UTC),
        known_entities=NAMES,
    )
    assert ranged.start == datetime(2025, 3, 1, tzinfo=UTC)
    assert ranged.end == datetime(2025, 4, 1, tzinfo=UTC)  # to_date's whole day is included
    assert ranged.includes("lead")
    assert not ranged.includes("contact")
    assert ranged.key().endswith("-dry")
    assert CopyScope.from_dict(ranged.to_dict()) == ranged


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"entities": ["lead", "nope"]}, "unknown entities ['nope']"),
        ({"from_date": "01/03/2025"}, "from_date='01/03/2025' is not an ISO date"),
        ({"from_date": "2025-03-02", "to_date": "2025-03-01"}, "empty range"),
    ],
)
def test_bad_params_are_refused_with_the_param_named(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scope_for_run(params, run_type="manual", interval_start=None, interval_end=None, known_entities=NAMES)


def test_copy_order_puts_every_entity_after_what_it_depends_on() -> None:
    tiers = copy_order(ENTITIES)
    position = {name: i for i, tier in enumerate(tiers) for name in tier}
    assert sorted(position) == sorted(NAMES)
    for name, entity in ENTITIES.items():
        for dependency in entity.depends_on:
            assert position[dependency] < position[name], (name, dependency)
    assert position["user"] < position["account"] < position["lead"] < position["opportunity"]


def test_copy_order_refuses_a_cycle() -> None:
    lead = ENTITIES["lead"].model_copy(update={"depends_on": ("contact",)})
    contact = ENTITIES["contact"].model_copy(update={"depends_on": ("lead",)})
    with pytest.raises(ValueError, match="dependency cycle"):
        copy_order({"lead": lead, "contact": contact})


def test_an_unfinished_attempt_is_continued_and_a_finished_one_starts_the_next(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    staging = StagingArea(ObjectStoragePath(f"file://{tmp_path}"))
    scope = CopyScope()
    first = open_partition(staging, ENTITIES["lead"], scope)
    assert first.attempt == 1
    assert open_partition(staging, ENTITIES["lead"], scope) == first  # killed run, run again
    assert current_partition(staging, ENTITIES["lead"], scope) == first
    close_partition(staging, first)
    second = open_partition(staging, ENTITIES["lead"], scope)
    assert second.attempt == 2
    assert second.run_id != first.run_id
    # Another scope or another mapping has attempts of its own.
    other = open_partition(staging, ENTITIES["lead"], CopyScope(entities=("lead",), dry_run=True))
    assert other.attempt == 1
    assert other.run_id != first.run_id
    changed = ENTITIES["lead"].model_copy(update={"batch_size": 123})
    assert open_partition(staging, changed, scope).fingerprint != first.fingerprint


def test_first_poll_waits_longer_for_bigger_imports() -> None:
    assert first_poll_estimate(20_000) > first_poll_estimate(1_000) > 0
    assert first_poll_estimate(1_000, seconds_per_row=0.001) == pytest.approx(2.0)


def test_a_copy_of_everything_starts_the_person_feed_once(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.context import RunContext
    from crm_sync.engine.full_copy.extract import start_person_feed
    from crm_sync.engine.person_feed import FEED_HEAD_ENTITY
    from crm_sync.state import get_watermark, make_engine, session_scope, set_watermark, upgrade

    class Marketo:
        def __init__(self) -> None:
            self.asked: list[datetime] = []

        def get_paging_token(self, since: datetime) -> str:
            self.asked.append(since)
            return f"token-{len(self.asked)}"

    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    ctx = RunContext("run", StagingArea(ObjectStoragePath(f"file://{tmp_path}")), engine)
    marketo = Marketo()
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    with session_scope(engine) as session:
        set_watermark(session, "contact", "m2d", "contact-own")
    assert start_person_feed(ctx, marketo, now, ["lead", "contact"]) is True
    assert start_person_feed(ctx, marketo, now, ["lead", "contact"]) is False  # a head is kept
    assert marketo.asked == [now]
    with session_scope(engine) as session:
        assert get_watermark(session, FEED_HEAD_ENTITY, "m2d") == "token-1"
        # Both person DAGs start where the feed starts (an existing watermark is kept).
        assert get_watermark(session, "lead", "m2d") == "token-1"
        assert get_watermark(session, "contact", "m2d") == "contact-own"
    engine.dispose()


def test_the_run_type_enum_of_the_task_context_is_understood() -> None:
    from airflow.sdk.api.datamodels._generated import DagRunType

    start, end = datetime(2025, 4, 1, tzinfo=UTC), datetime(2025, 5, 1, tzinfo=UTC)
    scope = scope_for_run(
        {}, run_type=DagRunType.BACKFILL, interval_start=start, interval_end=end, known_entities=NAMES
    )
    assert (scope.start, scope.end) == (start, end)
    manual = scope_for_run(
        {}, run_type=DagRunType.MANUAL, interval_start=start, interval_end=end, known_entities=NAMES
    )
    assert manual.everything


def test_known_emails_are_found_the_same_in_chunks_and_in_one_pass(make_ctx) -> None:
    from crm_sync.engine.full_copy.matching import known_emails
    from crm_sync.state import session_scope, upsert_links

    ctx = make_ctx("copy")
    with session_scope(ctx.state) as session:
        upsert_links(session, "lead", [{"dynamics_id": "L1", "marketo_id": "1", "email": "Ann@Example.com"}])
        upsert_links(
            session,
            "contact",
            [
                {"dynamics_id": "C1", "marketo_id": "2", "email": "ann@example.com"},
                {"dynamics_id": "C2", "marketo_id": "3", "email": "bo@example.com"},
            ],
        )
        account = {"dynamics_id": "A1", "marketo_id": "4", "email": "bo@example.com"}
        upsert_links(session, "account", [account])
    expected = {"ann@example.com": {"l1", "c1"}, "bo@example.com": {"c2"}}
    few = ["ann@example.com", "bo@example.com", "cy@example.com"]
    many = few + [f"other{i}@example.com" for i in range(2500)]  # above the chunked limit
    assert known_emails(ctx, ["lead", "contact"], few) == expected
    assert known_emails(ctx, ["lead", "contact"], many) == expected

"""An activity run's stages on a real state store and staging folder, with stand-in hooks: a
failed load is re-run from its staged batch, and the feed token moves only after the load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crm_sync.engine.context import RunContext
from crm_sync.marketing import activity_run
from crm_sync.marketing.activities import PersonTable
from crm_sync.marketing.activity_config import load_activities
from crm_sync.state import get_watermark, make_engine, session_scope, upgrade, upsert_links
from crm_sync_hooks.marketo import FeedPage
from crm_sync_hooks.results import WriteResult, WriteStatus

LEAD = PersonTable("lead", "lead", "leads")
GUID = "00000000-0000-0000-0000-00000000000a"


class FakeMarketo:
    def __init__(self) -> None:
        self.feed_reads = 0

    def get_activity_types(self) -> list[dict[str, Any]]:
        names = {1: "Visit Webpage", 2: "Fill Out Form", 7: "Email Delivered", 10: "Open Email"}
        names.update({11: "Click Email", 46: "Interesting Moment"})
        return [{"id": i, "name": n} for i, n in names.items()]

    def get_paging_token(self, since: Any) -> str:
        return "t0"

    def get_activities(self, token: str, type_ids: list[int], batch_size: int = 300) -> Any:
        self.feed_reads += 1
        records = [
            {
                "marketoGUID": str(i),
                "leadId": lead,
                "activityTypeId": 7,
                "activityDate": "2026-03-01T10:00:00Z",
            }
            for i, lead in ((1, 501), (2, 501), (3, 999))
        ]
        yield FeedPage(records, "t1", False)


class FakeDynamics:
    def __init__(self) -> None:
        self.fail = True
        self.written: list[dict[str, Any]] = []

    def upsert_records(
        self, entity_set: str, records: list[dict[str, Any]], keys: list[str], **kw: Any
    ) -> Any:
        if self.fail:
            raise RuntimeError("503 from Dataverse")
        self.written += records
        return [WriteResult(i, WriteStatus.CREATED, id=f"id-{i}") for i in range(len(records))]


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.staging import StagingArea

    engine = make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    upgrade(engine)
    with session_scope(engine) as session:
        upsert_links(session, "lead", [{"dynamics_id": GUID, "marketo_id": "501", "state": "active"}])
    return RunContext("run-1", StagingArea(ObjectStoragePath(f"file://{tmp_path / 'staging'}")), engine)


def test_a_failed_load_reruns_from_its_staged_batch_and_the_token_moves_after_it(ctx: RunContext) -> None:
    mapping = load_activities()
    marketo, dynamics = FakeMarketo(), FakeDynamics()
    manifest = activity_run.extract(ctx, marketo, mapping, [LEAD])  # type: ignore[arg-type]
    (batch,) = manifest["batches"]
    assert manifest["counts"] == {"read": 3, "retried": 0, "rows": 2, "waiting": 1, "invalid": 0}

    with pytest.raises(RuntimeError, match="503"):
        activity_run.load_batch(ctx, dynamics, mapping, batch)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="was not loaded"):
        activity_run.commit(ctx)
    with session_scope(ctx.state) as session:
        assert get_watermark(session, "activity", "m2d") is None

    dynamics.fail = False
    outcome = activity_run.load_batch(ctx, dynamics, mapping, batch)  # type: ignore[arg-type]
    counts = activity_run.commit(ctx)

    assert marketo.feed_reads == 1, "the retried load read the staged batch, not the feed"
    assert outcome["loaded"] == 2
    assert [r["new_marketoactivityid"] for r in dynamics.written] == ["1", "2"]
    assert counts["loaded"] == 2
    assert counts["waiting"] == 1
    with session_scope(ctx.state) as session:
        assert get_watermark(session, "activity", "m2d") == "t1"


def test_a_history_run_defers_once_the_daily_export_volume_is_spent(ctx: RunContext) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import text

    from crm_sync.guards.quota import QuotaDeferred
    from crm_sync.marketing.activity_budget import add_export_volume, check_export_volume

    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    day, used = check_export_volume(ctx, now, limit_mb=1)
    assert (day, used) == ("2026-12-07", 0)
    assert add_export_volume(ctx, day, 700_000) == 700_000
    assert add_export_volume(ctx, day, 400_000) == 1_100_000

    spent = r"1\.0 MB of the 1 MB daily bulk export volume used on 2026-12-07"
    with pytest.raises(QuotaDeferred, match=spent):
        check_export_volume(ctx, now, limit_mb=1)
    with ctx.state.connect() as conn:
        assert conn.execute(text("SELECT status FROM run_ledger")).scalars().all() == ["deferred"]
    assert check_export_volume(ctx, datetime(2026, 12, 8, 12, tzinfo=UTC), limit_mb=1)[1] == 0, "a new day"

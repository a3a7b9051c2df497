"""Extract of a full copy: Dataverse pages staged as they arrive, resumable at the first page
not staged, and the change-tracking token handed over to the incremental sync.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crm_sync.config import Direction, EntityConfig
from crm_sync.engine.columns import DERIVED_COLUMNS, dynamics_columns, split_derived
from crm_sync.engine.contracts import ExtractManifest
from crm_sync.engine.extract import EXTRACT_MANIFEST
from crm_sync.engine.full_copy.scope import PAGE_SIZE, CopyScope, CopySource
from crm_sync.engine.staging import rows_frame
from crm_sync.state import get_watermark, session_scope, set_watermark, utcnow

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)

PROGRESS = "extract-progress"


# --- extract -----------------------------------------------------------------------------------


@dataclass
class _Rate:
    """Records/s and time left, for progress lines in the task log."""

    started: float = field(default_factory=time.monotonic)

    def line(self, done: int, total: int | None = None) -> str:
        seconds = max(time.monotonic() - self.started, 1e-6)
        rate = done / seconds
        text = f"{done:,} records, {rate:,.0f} records/s"
        if total:
            left = max(total - done, 0) / rate if rate > 0 else float("inf")
            text += f", {done / total:.0%} of {total:,}, about {_duration(left)} left"
        return text


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown time"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def start_person_feed(
    ctx: RunContext, marketo: Any, now: datetime | None = None, person_entities: Sequence[str] = ()
) -> bool:
    """Start the Marketo person change feed now, unless an incremental run already did.

    The token becomes the feed's head and the feed watermark of every person entity that has
    none, so ``sync_lead`` and ``sync_contact`` both start reading here (whichever runs first
    stages the chunk, the other reuses it). Without this, each would start at its own first run,
    and Marketo persons created between the copy and that run would never reach Dynamics.
    Called when a copy of everything starts (one Marketo call).

    Returns:
        Whether the feed was started now.
    """
    from crm_sync.engine.person_feed import FEED_HEAD_ENTITY

    m2d = Direction.M2D.value
    with session_scope(ctx.state) as session:
        if get_watermark(session, FEED_HEAD_ENTITY, m2d) is not None:
            return False
    token = marketo.get_paging_token(now or utcnow())
    with session_scope(ctx.state) as session:
        if get_watermark(session, FEED_HEAD_ENTITY, m2d) is not None:
            return False
        set_watermark(session, FEED_HEAD_ENTITY, m2d, token)
        for name in person_entities:
            if get_watermark(session, name, m2d) is None:
                set_watermark(session, name, m2d, token)
    log.info(
        "Marketo person feed starts now for %s: persons changed from here on reach Dynamics",
        list(person_entities),
    )
    return True


def take_handover_token(entity: EntityConfig, source: CopySource) -> str:
    """A change-tracking token taken now: changes after this moment are the incremental DAG's.

    The read selects the columns the incremental extract selects, because a delta link keeps
    the ``$select`` of the read that produced it (a key-only token would make every later
    incremental read return keys only).

    Raises:
        RuntimeError: The read ended without a delta link.
    """
    select, _ = split_derived(dynamics_columns(entity))
    token: str | None = None
    for page in source.track_changes(entity.dynamics.entity_set, select, None, PAGE_SIZE):
        token = page.delta_link or token
    if not token:
        raise RuntimeError(f"{entity.name}: change tracking gave no delta link")
    return token


def extract_partition(
    entity: EntityConfig,
    ctx: RunContext,
    source: CopySource,
    scope: CopyScope,
    *,
    page_size: int = PAGE_SIZE,
) -> dict[str, Any]:
    """Stage the Dataverse rows of the partition page by page, resuming after the last staged page.

    Returns:
        An extract manifest in the incremental engine's shape (``dynamics.batches`` etc.), with
        ``pending`` holding the hand-over token when this copy takes one.
    """
    folder = ctx.staging.run_dir(entity.name, ctx.run_id)
    done = ctx.staging.read_json(folder, EXTRACT_MANIFEST)
    if done is not None:
        log.info(
            "%s: extract of this attempt already finished (%d rows); not read again",
            entity.name,
            done["dynamics"]["rows"],
        )
        return done
    progress = ctx.staging.read_json(folder, PROGRESS) or {
        "started_at": utcnow().isoformat(),
        "batches": [],
        "rows": 0,
        "next_link": None,
        "pages": 0,
        "token": None,
    }
    if scope.everything and progress["pages"] == 0 and progress["token"] is None:
        with session_scope(ctx.state) as session:
            has_watermark = get_watermark(session, entity.name, Direction.D2M.value) is not None
        if not has_watermark:
            progress["token"] = take_handover_token(entity, source)
            log.info(
                "%s: change-tracking token taken before the copy (hand-over to sync_%s)",
                entity.name,
                entity.name,
            )
            ctx.staging.write_json(folder, PROGRESS, progress)
    elif progress["pages"]:
        log.info(
            "%s: resuming the extract after %d staged pages (%d rows)",
            entity.name,
            progress["pages"],
            progress["rows"],
        )
    columns = dynamics_columns(entity)
    select, derived = split_derived(columns)
    expand = ",".join(DERIVED_COLUMNS[c].expand for c in derived) or None
    rate = _Rate()
    read_now = 0
    if progress["pages"] == 0 or progress["next_link"]:
        pages = source.query_pages(
            entity.dynamics.entity_set,
            select=select,
            filter=scope.createdon_filter(),
            expand=expand,
            page_size=page_size,
            start_link=progress["next_link"],
        )
        for page in pages:
            rows = page.rows
            for row in rows:
                row.update({c: DERIVED_COLUMNS[c].value(row) for c in derived})
                for c in derived:
                    row.pop(DERIVED_COLUMNS[c].expand.split("(")[0], None)
            if rows:
                name = f"dynamics-{progress['pages']:05d}"
                ref = ctx.staging.write_frame(folder / "extract", name, rows_frame(rows, columns))
                progress["batches"].append(ref.to_dict())
                progress["rows"] += len(rows)
                read_now += len(rows)
            progress["pages"] += 1
            progress["next_link"] = page.next_link
            ctx.staging.write_json(folder, PROGRESS, progress)
            log.info("%s extract: page %d staged; %s", entity.name, progress["pages"], rate.line(read_now))
    pending = {Direction.D2M.value: progress["token"]} if progress["token"] else {}
    manifest = {
        "entity": entity.name,
        "run_id": ctx.run_id,
        "started_at": progress["started_at"],
        "pending": pending,
        "scope": scope.to_dict(),
        "dynamics": {
            "batches": progress["batches"],
            "deleted": [],
            "rows": progress["rows"],
            "deleted_rows": 0,
            "token": progress["token"],
            "initial": True,
        },
        "marketo": None,
    }
    manifest = ExtractManifest.from_xcom(manifest).to_xcom()  # the incremental extract's form
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    log.info("%s extract done: %d rows in %d pages", entity.name, progress["rows"], progress["pages"])
    return manifest

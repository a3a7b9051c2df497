"""Commit: advance the watermarks and write the run ledger, once every batch is loaded.

The staged outcome file of each load batch is the proof that it was loaded and recorded; a
missing one stops the commit, so the watermark never moves past unwritten changes and the next
run extracts them again (the loads are idempotent upserts, so nothing is duplicated).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from crm_sync.engine.contracts import CommitSummary, ExtractManifest, LoadOutcome
from crm_sync.engine.latency import latency_seconds
from crm_sync.engine.load import OUTCOME
from crm_sync.state import RunCounts, session_scope, set_watermark, utcnow, write_ledger
from crm_sync.state.backlog import mark_committed
from crm_sync.state.guards import run_api_calls

if TYPE_CHECKING:
    from collections.abc import Mapping

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext

log = logging.getLogger(__name__)


class LoadIncompleteError(RuntimeError):
    """A load batch of the run has no outcome: the watermark must not move."""


def _outcomes(entity: EntityConfig, ctx: RunContext, transform: dict[str, Any]) -> list[LoadOutcome]:
    outcomes = []
    missing = []
    for batch in transform.get("batches", []):
        folder = ctx.staging.run_dir(entity.name, ctx.run_id) / "plans" / batch["name"]
        outcome = ctx.staging.read_json(folder, OUTCOME)
        if outcome is None:
            missing.append(batch["name"])
        else:
            outcomes.append(LoadOutcome.from_xcom(outcome))
    if missing:
        raise LoadIncompleteError(
            f"{entity.name}: run {ctx.run_id}: batches {missing} were not loaded; watermark not advanced"
        )
    return outcomes


def commit(
    entity: EntityConfig,
    ctx: RunContext,
    extract: ExtractManifest | Mapping[str, Any],
    transform: dict[str, Any],
    *,
    now: datetime | None = None,
) -> CommitSummary:
    """Store the new watermarks and the ledger row of this run in one transaction.

    Args:
        entity: The entity.
        ctx: Run id, staging area and state store.
        extract: The extract manifest (pending watermarks, extracted counts, start time).
        transform: The transform manifest (load batches and transform counts).
        now: Current time (tests).

    Returns:
        The run's counts (``api_calls``: the calls the run sent per system, whose total is the
        ledger's ``api_calls``).

    Raises:
        LoadIncompleteError: A load batch has no staged outcome.
    """
    outcomes = _outcomes(entity, ctx, transform)
    manifest = ExtractManifest.from_xcom(extract)
    ended = now or utcnow()
    started = datetime.fromisoformat(manifest.started_at)
    t = transform.get("counts", {})
    loaded = sum(o.loaded for o in outcomes)
    extracted = manifest.rows_read()
    counts = RunCounts(
        run_id=ctx.run_id,
        entity=entity.name,
        direction=entity.direction.value,
        status="success",
        extracted=extracted,
        transformed=int(t.get("valid", 0)),
        loaded=loaded,
        skipped=int(t.get("filtered", 0)) + int(t.get("unchanged", 0)),
        failed=int(t.get("failed", 0)) + sum(o.failed for o in outcomes),
        conflicts=int(t.get("conflicts", 0)),
        started_at=started,
        ended_at=ended,
    )
    latency = latency_seconds(manifest.change_times, ended)
    counts.latency_p50_s = latency["latency_p50_s"]
    counts.latency_p95_s = latency["latency_p95_s"]
    counts.latency_max_s = latency["latency_max_s"]
    with session_scope(ctx.state) as session:
        # Every call the run's tasks sent so far (preflight, extract, each load attempt).
        calls = run_api_calls(session, ctx.run_id, entity.name)
        counts.api_calls = sum(calls.values())
        for direction, token in sorted(manifest.pending.items()):
            set_watermark(session, entity.name, direction, token, now=ended)
            mark_committed(session, entity=entity.name, direction=direction, now=ended, through=started)
        write_ledger(session, counts)
    seconds = max((ended - started).total_seconds(), 1e-6)
    result = CommitSummary(
        extracted=counts.extracted,
        transformed=counts.transformed,
        loaded=counts.loaded,
        skipped=counts.skipped,
        failed=counts.failed,
        conflicts=counts.conflicts,
        seconds=round(seconds, 3),
        records_per_second=round(counts.loaded / seconds, 1),
        api_calls={"marketo": calls.get("marketo", 0), "dynamics": calls.get("dynamics", 0)},
    )
    log.info(
        "%s commit: %s; watermarks %s advanced",
        entity.name,
        result.to_xcom(),
        sorted(manifest.pending),
    )
    return result

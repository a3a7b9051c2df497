"""Small deltas in one task: the ``small_run`` task of a ``sync_<entity>`` DAG.

A run's first task decides its shape (:func:`choose_shape`):

- ``nothing``: the watchers saw no change for this entity (a Marketo person change that
  belongs to the other person entity; a safety-schedule run while the watchers report an empty
  backlog and no record error is due). Nothing is read or written and no API call is sent.
- ``single``: a small delta (at most ``mds_single_task_max_changes`` changes, by the watchers'
  count) runs preflight, extract, transform, guard, every load batch and commit in this one
  task (:func:`run_single`): seconds instead of six task start-ups.
- ``mapped``: a big delta, a run without a watcher's count (manual, backfill, ``dag.test()``)
  or a watcher without a fresh peek: the run goes on through the mapped tasks, one load task
  per batch, as before.

:func:`run_single` resumes: a retry reuses the run's staged extract and plan and skips the
batches whose outcome is staged, so a failed load is re-run without re-extracting or writing
anything twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from crm_sync.config import Direction, watches_marketo

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from crm_sync.engine.context import RunSettings
    from crm_sync.guards import GuardSettings

log = logging.getLogger(__name__)

Shape = Literal["nothing", "single", "mapped"]
DEFAULT_SINGLE_TASK_MAX = 2_000
# A peek older than this does not vouch for an empty backlog (the watcher may be down).
FRESH_PEEK = timedelta(minutes=5)


def pending_from_events(name: str, payloads: Iterable[Mapping[str, Any]]) -> tuple[int, bool] | None:
    """Changes the watchers announced for ``name`` in a run's asset events, and whether more wait.

    Returns:
        ``(pending, more)`` summed over the events, or None when no event came from a watcher.
    """
    total, more, seen = 0, False, False
    for payload in payloads:
        pending = payload.get("pending")
        if not isinstance(pending, dict):
            continue
        seen = True
        total += int(pending.get(name, 0) or 0)
        more = more or (bool(payload.get("more")) and name in pending)
    return (total, more) if seen else None


def choose_shape(
    name: str,
    run_type: str,
    *,
    payloads: Iterable[Mapping[str, Any]] = (),
    backlog: Iterable[Mapping[str, Any]] = (),
    directions: Iterable[str] = (),
    due_errors: int = 0,
    force_single: bool = False,
    max_changes: int = DEFAULT_SINGLE_TASK_MAX,
    now: datetime,
) -> Shape:
    """The shape of a run of entity ``name`` (see the module docstring).

    Args:
        name: The entity.
        run_type: The Airflow run type (``asset_triggered``, ``scheduled``, ``manual``, ``backfill``).
        payloads: The payloads of the run's triggering asset events.
        backlog: The entity's change-backlog rows (:func:`crm_sync.state.backlog.backlog_rows`).
        directions: The one-way directions the entity reads (``d2m``, ``m2d``).
        due_errors: Record errors of the entity due for a retry.
        force_single: The run's Param ``single_task``.
        max_changes: The most changes a single-task run takes.
        now: Current time.
    """
    if force_single:
        return "single"
    if run_type == "asset_triggered":
        announced = pending_from_events(name, payloads)
        if announced is None:
            return "mapped"
        pending, more = announced
        if pending == 0 and not more:
            return "single" if due_errors else "nothing"
        return "single" if pending <= max_changes and not more else "mapped"
    if run_type == "scheduled":
        rows = {str(r["direction"]): r for r in backlog}
        wanted = list(directions)
        fresh = all(
            d in rows and rows[d]["peeked_at"] is not None and now - rows[d]["peeked_at"] <= FRESH_PEEK
            for d in wanted
        )
        if not wanted or not fresh:
            return "mapped"  # the watchers cannot vouch for this entity: the safety net runs in full
        pending = sum(int(rows[d]["pending"]) for d in wanted)
        if pending == 0:
            return "single" if due_errors else "nothing"
        return "single" if pending <= max_changes else "mapped"
    return "mapped"


def read_directions(entity_direction: Direction, watches_marketo: bool) -> list[str]:
    """The one-way directions whose sources a watcher peeks for an entity."""
    out = []
    if entity_direction.includes(Direction.D2M):
        out.append(Direction.D2M.value)
    if watches_marketo:
        out.append(Direction.M2D.value)
    return out


def shape_of_run(
    settings: RunSettings,
    name: str,
    run_type: str,
    payloads: list[dict[str, Any]],
    *,
    force_single: bool,
    max_changes: int,
) -> Shape:
    """:func:`choose_shape` with the entity's backlog and due errors read from the state store."""
    from crm_sync.state import due_errors, session_scope, utcnow
    from crm_sync.state.backlog import backlog_rows
    from crm_sync.tasks.common import context, entity_config

    entity = entity_config(settings, name)
    directions = read_directions(entity.direction, watches_marketo(entity))
    now = utcnow()
    ctx = context(settings, migrate=True)
    try:
        with session_scope(ctx.state) as session:
            rows = [r for r in backlog_rows(session, now=now) if r["entity"] == name]
            due = sum(
                len(due_errors(session, entity=name, direction=d, now=now, limit=1)) for d in directions
            )
    finally:
        ctx.state.dispose()
    return choose_shape(
        name, run_type, payloads=payloads, backlog=rows, directions=directions, due_errors=due,
        force_single=force_single, max_changes=max_changes, now=now,
    )  # fmt: skip


def run_single(
    settings: RunSettings,
    name: str,
    guards: GuardSettings,
    *,
    confirm_deletes: bool = False,
    accept_row_counts: bool = False,
) -> dict[str, Any]:
    """Preflight, extract, transform, guard, load every batch and commit, in this one task.

    The same functions as the mapped tasks, in the same order, with the same guards; what a
    previous attempt of this run staged (extract manifest, plan, batch outcomes) is reused.

    Returns:
        The commit's counts plus ``batches`` (loaded now) and ``resumed`` (stages reused).

    Raises:
        GuardError: A guard stopped the run (the DAG fails or skips the task as for the mapped shape).
    """
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.engine.load import OUTCOME
    from crm_sync.engine.transform import TRANSFORM_MANIFEST
    from crm_sync.tasks.common import context
    from crm_sync.tasks.sync import run_commit, run_extract, run_guard, run_load, run_preflight, run_transform

    ctx = context(settings)
    run_dir = ctx.staging.run_dir(name, settings.run_id)
    ctx.state.dispose()
    resumed = []
    if ctx.staging.read_json(run_dir, EXTRACT_MANIFEST) is None:
        run_preflight(settings, name, guards, accept_row_counts=accept_row_counts)
        run_extract(settings, name)
    else:
        resumed.append("extract")
    transform = ctx.staging.read_json(run_dir, TRANSFORM_MANIFEST)
    if transform is None:
        batches = run_transform(settings, name)
    else:
        resumed.append("transform")
        batches = list(transform.get("batches", []))
    checked = run_guard(settings, name, batches, guards, confirm_deletes=confirm_deletes)["batches"]
    loaded = 0
    for batch in checked:
        if ctx.staging.read_json(run_dir / "plans" / batch["name"], OUTCOME) is not None:
            resumed.append(f"load:{batch['name']}")
            continue
        run_load(settings, name, batch)
        loaded += 1
    counts = run_commit(settings, name)
    log.info("%s single-task run: %d batches loaded, reused %s", name, loaded, resumed or "nothing")
    return {**counts, "batches": loaded, "resumed": resumed}

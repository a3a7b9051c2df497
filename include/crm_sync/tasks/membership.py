"""One entry point per task of ``sync_program_membership`` (issue 20): hooks and state from
:func:`crm_sync.tasks.common.task_session` (limits, the Dataverse window reserve, calls counted
into the call log), logic in :mod:`crm_sync.marketing`.

The DAG is a low-priority user of the Marketo budget: ``extract_changes`` and
``load_to_marketo`` check what is left today before they spend calls and raise
:class:`~crm_sync.guards.quota.QuotaDeferred` (the DAG skips the rest of the run, the watermarks
stay) when spending would leave less than the headroom the entity DAGs keep.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from crm_sync.tasks.common import task_session

if TYPE_CHECKING:
    from crm_sync.engine.context import RunContext, RunSettings
    from crm_sync.guards import GuardSettings

log = logging.getLogger(__name__)

ENTITY = "program_membership"
EXTRACT_CALLS = 4  # the fewest Marketo calls an extract sends (types, one feed page; or token, export)


def _budget_check(ctx: RunContext, guards: GuardSettings, need: int) -> None:
    """Raise QuotaDeferred (after writing a ``deferred`` ledger row) when ``need`` calls would eat
    into the entity DAGs' headroom."""
    from crm_sync.guards.quota import QuotaDeferred, check_low_priority, quota_status
    from crm_sync.marketing.program_membership import ENTITY
    from crm_sync.state import RunCounts, session_scope, utcnow, write_ledger

    with session_scope(ctx.state) as session:
        status = quota_status(
            session, now=utcnow(), daily_quota=guards.daily_quota, reserve_share=guards.reserve_share
        )
    try:
        check_low_priority(ENTITY, need, status, guards)
    except QuotaDeferred:
        with session_scope(ctx.state) as session:
            now = utcnow()
            write_ledger(
                session,
                RunCounts(
                    run_id=ctx.run_id,
                    entity=ENTITY,
                    direction="both",
                    status="deferred",
                    started_at=now,
                    ended_at=now,
                ),
            )
        raise


def run_extract(settings: RunSettings, guards: GuardSettings) -> dict[str, Any]:
    """Task ``extract_changes``: check the budget, then read and stage both sides' changes.

    Raises:
        QuotaDeferred: The Marketo budget left is under the entity DAGs' headroom.
        ConfigError: The program mapping file is invalid (names file and key).
    """
    from crm_sync.marketing.membership_extract import extract_membership
    from crm_sync.marketing.program_config import load_programs
    from crm_sync.state import utcnow

    mapping = load_programs()
    with task_session(
        settings, entity=ENTITY, stage="extract_changes", marketo=True, dynamics=True, migrate=True
    ) as task:
        _budget_check(task.ctx, guards, EXTRACT_CALLS)
        manifest = extract_membership(task.ctx, task.marketo, task.dynamics, mapping, now=utcnow())
    return {
        "source": manifest["source"],
        "programs": len(manifest["links"]),
        "m2d_changes": manifest["m2d_changes"]["rows"],
        "d2m_responses": manifest["d2m_responses"]["rows"],
        "d2m_listmember_deletes": manifest["d2m_listmember_deletes"]["rows"],
    }


def run_load_to_dynamics(settings: RunSettings) -> dict[str, int]:
    """Task ``load_to_dynamics``: list members, removals and campaign responses in Dataverse."""
    from crm_sync.marketing.membership_extract import read_manifest
    from crm_sync.marketing.membership_load import load_to_dynamics

    with task_session(settings, entity=ENTITY, stage="load_to_dynamics", dynamics=True) as task:
        return load_to_dynamics(task.ctx, task.dynamics, read_manifest(task.ctx))


def run_load_to_marketo(settings: RunSettings, guards: GuardSettings) -> dict[str, int]:
    """Task ``load_to_marketo``: program statuses and removals in Marketo, inside the budget.

    Raises:
        QuotaDeferred: The writes would leave less than the entity DAGs' headroom.
    """
    from crm_sync.marketing.membership_extract import read_manifest
    from crm_sync.marketing.membership_load import load_to_marketo

    with task_session(settings, entity=ENTITY, stage="load_to_marketo", marketo=True) as task:
        ctx = task.ctx
        return load_to_marketo(
            ctx, task.marketo, read_manifest(ctx), lambda need: _budget_check(ctx, guards, need)
        )


def run_commit(
    settings: RunSettings, to_dynamics: dict[str, int], to_marketo: dict[str, int]
) -> dict[str, Any]:
    """Task ``commit``: store the tokens and write the run ledger."""
    from crm_sync.marketing.membership_extract import read_manifest
    from crm_sync.marketing.membership_load import commit_membership

    with task_session(settings) as task:
        return commit_membership(task.ctx, read_manifest(task.ctx), to_dynamics, to_marketo)

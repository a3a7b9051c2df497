"""Mass-delete guard: a run that would delete or flag too many of an entity's records waits.

A Dynamics bulk delete, a mistaken filter or a sandbox refresh can make one run delete (or flag
as deleted) a large part of what the sync linked. Before the load, the guard compares the
run's delete and flag operations with the entity's linked records (id map, state ``active``):

    share = deletes / linked;  blocked when deletes ≥ min_records and share > max_share

``max_share`` is the entity's ``max_delete_share`` (YAML, default 0.2) unless the Variable
``mds_max_delete_share`` overrides it for every entity; ``min_records`` (Variable
``mds_mass_delete_min_records``, default 10) keeps small tables from tripping it over a
handful of deletes. A blocked run fails with an alert and writes nothing; the watermark stays,
so once a user confirms (trigger the DAG with the Param ``confirm_deletes: true``) that run
reads the same deletes again and applies them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from crm_sync.guards import GuardError
from crm_sync.ops import DELETE_OPS
from crm_sync.state.models import IdMap

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig

log = logging.getLogger(__name__)

DEFAULT_MIN_RECORDS = 10


class MassDeleteBlocked(GuardError):
    """The run would delete or flag more than the allowed share of linked records."""


def linked_records(session: Session, entity: str) -> int:
    """Number of records of ``entity`` the sync links and keeps in step (id map, ``active``)."""
    stmt = select(func.count()).select_from(IdMap).where(IdMap.entity == entity, IdMap.state == "active")
    return int(session.execute(stmt).scalar_one())


def planned_deletes(op_counts: Iterable[Mapping[str, int]]) -> int:
    """Delete and flag-deleted operations over the run's staged batches."""
    return sum(int(c.get(op, 0)) for c in op_counts for op in DELETE_OPS)


def check_mass_delete(
    entity: EntityConfig,
    *,
    deletes: int,
    linked: int,
    max_share: float | None = None,
    min_records: int = DEFAULT_MIN_RECORDS,
    confirmed: bool = False,
    dag_id: str | None = None,
) -> dict[str, Any]:
    """Stop a run whose deletes exceed the allowed share of linked records, unless confirmed.

    Args:
        entity: The entity (its ``max_delete_share``).
        deletes: Delete and flag operations of this run.
        linked: Linked records before this run.
        max_share: Override of the entity's share (Variable ``mds_max_delete_share``).
        min_records: Fewer deletes than this never block.
        confirmed: A user confirmed the deletes (Param ``confirm_deletes``).
        dag_id: The DAG to trigger with ``confirm_deletes`` (the entity's sync DAG by default).

    Returns:
        ``deletes``, ``linked``, ``share``, ``max_share``, ``confirmed``, ``blocked`` (False).

    Raises:
        MassDeleteBlocked: The share is exceeded and nobody confirmed; the message says how to.
    """
    limit = entity.max_delete_share if max_share is None else max_share
    share = deletes / linked if linked else (1.0 if deletes else 0.0)
    over = deletes >= max(min_records, 1) and share > limit
    what = "flag as deleted" if entity.delete_policy.value == "flag" else "delete"
    if over and not confirmed:
        raise MassDeleteBlocked(
            f"{entity.name}: mass-delete guard: this run would {what} {deletes} of {linked} linked "
            f"records ({share:.0%}, more than the {limit:.0%} allowed); nothing was written. If the "
            f"deletes are intended, trigger {dag_id or entity.dag_id} with the Param confirm_deletes=true"
        )
    if over:
        log.warning(
            "%s: %d deletes (%.0f%% of %d) confirmed by the user", entity.name, deletes, share * 100, linked
        )
    return {
        "deletes": deletes,
        "linked": linked,
        "share": round(share, 4),
        "max_share": limit,
        "confirmed": confirmed,
        "blocked": False,
    }

"""``setup check`` and ``setup apply`` over both systems, as plain functions.

:func:`run_check` reads both systems' metadata once and returns a :class:`Report` of every
missing or conflicting piece; :func:`run_apply` makes the calls the report's findings allow
(Marketo lead fields, the Dataverse filter column, change tracking), then checks again. Apply
is idempotent: what exists is not in the report, so a second apply sends no write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from crm_sync.setup.dynamics_side import apply_dynamics, check_dynamics
from crm_sync.setup.findings import Report
from crm_sync.setup.marketo_side import apply_marketo, check_marketo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crm_sync.config import EntityConfig
    from crm_sync.setup.dynamics_side import DynamicsMetadata
    from crm_sync.setup.marketo_side import MarketoMetadata

log = logging.getLogger(__name__)

DEFINITIONS = Path(__file__).with_name("definitions.yaml")


@lru_cache(maxsize=1)
def definitions() -> dict[str, Any]:
    """``definitions.yaml``: display names of the Marketo lead fields, the filter column's settings."""
    with DEFINITIONS.open(encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh))


def run_check(
    entities: Sequence[EntityConfig],
    *,
    marketo: MarketoMetadata | None,
    dynamics: DynamicsMetadata | None,
) -> Report:
    """Check what ``entities`` need in both systems (a None client skips that side)."""
    report = Report(entities=[e.name for e in entities])
    if dynamics is not None:
        found, checked = check_dynamics(entities, dynamics)
        report.findings += found
        report.checked += checked
    if marketo is not None:
        found, checked = check_marketo(entities, marketo, definitions().get("marketo_lead_fields") or {})
        report.findings += found
        report.checked += checked
    return report


@dataclass
class ApplyResult:
    """What one ``setup apply`` did and what the check says afterwards."""

    before: Report
    after: Report | None
    done: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def planned(self) -> list[str]:
        return [a.describe() for a in self.before.actions]

    @property
    def by_hand(self) -> list[str]:
        left = self.after if self.after is not None else self.before
        return [f"{f.system} {f.object}.{f.item}: {f.fix}" for f in left.findings if not f.automatic]


def run_apply(
    entities: Sequence[EntityConfig],
    *,
    marketo: MarketoMetadata | None,
    dynamics: DynamicsMetadata | None,
    dry_run: bool = False,
) -> ApplyResult:
    """Create what the APIs allow, then check again.

    Args:
        entities: The entities to prepare both systems for.
        marketo: Marketo client (None skips that side).
        dynamics: Dataverse client (None skips that side).
        dry_run: Only report the calls apply would make.
    """
    before = run_check(entities, marketo=marketo, dynamics=dynamics)
    result = ApplyResult(before, None, dry_run=dry_run)
    if dry_run:
        return result
    actions = before.actions
    if dynamics is not None:
        result.done += apply_dynamics(dynamics, actions, definitions().get("dynamics_filter_column") or {})
    if marketo is not None:
        result.done += apply_marketo(marketo, actions)
    for line in result.done:
        log.info("setup apply: %s", line)
    result.after = run_check(entities, marketo=marketo, dynamics=dynamics) if actions else before
    return result

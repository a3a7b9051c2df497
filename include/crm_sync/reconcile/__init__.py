"""Reconciliation: do Marketo and Dynamics really agree?

Per entity, both systems are read with the cheapest reads (keys and mapped columns only),
mapped with the sync's own transforms and compared by key set and by a hash of the mapped
fields. See :mod:`crm_sync.reconcile.compare` for the kinds of findings.

    report = reconcile(entities, dynamics=hook, marketo=hook, state=engine)
    print(differences_text(report))

CLI: ``python -m crm_sync.reconcile check [--entities lead,contact]``.
"""

from __future__ import annotations

from crm_sync.reconcile.compare import DIFF_COLUMNS, KINDS, compare_entity
from crm_sync.reconcile.core import Report, differences_text, reconcile

__all__ = ["DIFF_COLUMNS", "KINDS", "Report", "compare_entity", "differences_text", "reconcile"]

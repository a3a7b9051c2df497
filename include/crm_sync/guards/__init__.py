"""Checks that stop a sync run before it writes: schema drift, quota budget, mass deletes.

* :mod:`crm_sync.guards.drift`: the mapped fields still exist on both sides with a compatible
  type (Marketo ``describe``, Dataverse ``EntityDefinitions``); new fields are reported.
* :mod:`crm_sync.guards.quota`: the calls a run will send fit in what is left of the Marketo
  daily quota after the reserve kept for other integrations; calls spent are recorded per run.
* :mod:`crm_sync.guards.deletes`: a run that would delete or flag more than a set share of an
  entity's linked records waits for a user's confirmation.
* :mod:`crm_sync.guards.calls`: counts the HTTP calls a hook sends (for the quota figures).
"""

from __future__ import annotations

from dataclasses import dataclass


class GuardError(RuntimeError):
    """A guard stopped the run before any write; the message says why and what to do."""


@dataclass(frozen=True)
class GuardSettings:
    """Budget and delete-guard settings, from Airflow Variables (defaults in brackets).

    Attributes:
        daily_quota: Marketo daily call quota of the instance (``mds_marketo_daily_quota``, 50000).
        reserve_share: Share of it kept for other integrations (``mds_quota_reserve_share``, 0.2).
        dynamics_reserve_share: Share of the Dataverse request window kept for other
            integrations (``mds_dynamics_window_reserve``, 0.2).
        low_priority_headroom: Share of the usable Marketo budget a ``low``-priority entity
            must leave for the others (``mds_quota_low_priority_headroom``, 0.25).
        max_delete_share: Mass-delete share for every entity instead of each YAML's
            ``max_delete_share`` (``mds_max_delete_share``, unset).
        mass_delete_min_records: Fewer deletes than this never trip the mass-delete guard
            (``mds_mass_delete_min_records``, 10).
        visibility_tolerance: Share of a table's rows that may vanish from one full read to
            the next before the visibility guard stops the run (``mds_visibility_tolerance``, 0.5).
        visibility_check_minutes: How often an incremental run counts its table's visible
            rows (``mds_visibility_check_minutes``, 60).
    """

    daily_quota: int = 50_000
    reserve_share: float = 0.2
    dynamics_reserve_share: float = 0.2
    low_priority_headroom: float = 0.25
    max_delete_share: float | None = None
    mass_delete_min_records: int = 10
    visibility_tolerance: float = 0.5
    visibility_check_minutes: float = 60.0

    def __post_init__(self) -> None:
        if self.daily_quota < 0:
            raise ValueError(f"mds_marketo_daily_quota must not be negative, got {self.daily_quota}")
        for name in ("reserve_share", "dynamics_reserve_share", "low_priority_headroom"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a share in [0, 1), got {value}")
        if self.max_delete_share is not None and not 0.0 < self.max_delete_share <= 1.0:
            raise ValueError(f"mds_max_delete_share must be in (0, 1], got {self.max_delete_share}")
        if not 0.0 < self.visibility_tolerance < 1.0:
            raise ValueError(f"mds_visibility_tolerance must be in (0, 1), got {self.visibility_tolerance}")
        if self.mass_delete_min_records < 0:
            raise ValueError(
                f"mds_mass_delete_min_records must not be negative, got {self.mass_delete_min_records}"
            )

"""The guards' settings from the project's Airflow Variables (read in a task, never at parse time)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_sync.guards import GuardSettings

if TYPE_CHECKING:
    from collections.abc import Callable


def number_variable(name: str, cast: Callable[[str], Any], default: Any) -> Any:
    """An Airflow Variable read as a number; a bad value fails naming the Variable."""
    from airflow.sdk import Variable

    raw = Variable.get(name, default=None)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return cast(str(raw).strip())
    except ValueError:
        raise ValueError(f"Airflow Variable {name!r} must be a number, got {raw!r}") from None


def reserve_share() -> float:
    """Share of the Marketo daily quota kept for other integrations (default 0.2)."""
    # mds_marketo_quota_reserve: the name airflow_settings.yaml first shipped the share under.
    reserve = number_variable("mds_quota_reserve_share", float, None)
    return float(reserve if reserve is not None else number_variable("mds_marketo_quota_reserve", float, 0.2))


def dynamics_reserve() -> float:
    """Share of the Dataverse request window kept for other integrations (default: the Marketo share)."""
    reserve = number_variable("mds_dynamics_window_reserve", float, None)
    return float(reserve if reserve is not None else reserve_share())


def guard_settings() -> GuardSettings:
    """Budget, delete and visibility guard settings from the project's Airflow Variables."""
    return GuardSettings(
        daily_quota=number_variable("mds_marketo_daily_quota", int, 50_000),
        reserve_share=reserve_share(),
        dynamics_reserve_share=dynamics_reserve(),
        low_priority_headroom=number_variable("mds_quota_low_priority_headroom", float, 0.25),
        max_delete_share=number_variable("mds_max_delete_share", float, None),
        mass_delete_min_records=number_variable("mds_mass_delete_min_records", int, 10),
        visibility_tolerance=number_variable("mds_visibility_tolerance", float, 0.5),
        visibility_check_minutes=number_variable("mds_visibility_check_minutes", float, 60.0),
    )

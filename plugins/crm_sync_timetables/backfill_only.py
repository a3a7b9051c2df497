"""A data-interval timetable that only backfills: Airflow never starts a run of it on its own.

``full_copy`` needs real data intervals, so ``airflow backfill create`` can copy the records created
in any stretch of history (one run per interval), but it must never run by itself: unpausing it, or
a month ending, would otherwise start a scheduled copy of the latest month beside the copy the user
triggered.

Airflow asks a timetable for its next run in two ways: the scheduler (and the DAG processor, for
the DAG's "next run") with the DAG's own restriction, which has no upper bound when the DAG has no
``end_date``; a backfill (and the UI's backfill form) with the window the user chose, always
bounded. This timetable answers only the second. ``can_be_scheduled`` is false as for
``schedule=None`` (Airflow then skips the run-count queries and accepts ``allowed_run_types``
without ``scheduled``); backfill itself only requires ``periodic``, which stays true.

A custom timetable has to be registered by a plugin (:mod:`crm_sync_timetables.plugin`) so that the
scheduler and the API server can rebuild it from the serialized DAG.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.timetables.interval import CronDataIntervalTimetable

if TYPE_CHECKING:
    from airflow.timetables.base import DagRunInfo, TimeRestriction


class BackfillOnlyCronTimetable(CronDataIntervalTimetable):
    """Cron data intervals for backfills and manual runs; never scheduled automatically."""

    can_be_scheduled = False

    def next_dagrun_info_v2(
        self, *, last_dagrun_info: DagRunInfo | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        """The next interval inside a bounded window (a backfill's); None for the scheduler."""
        if restriction.latest is None:
            return None
        return super().next_dagrun_info_v2(last_dagrun_info=last_dagrun_info, restriction=restriction)

    @property
    def summary(self) -> str:
        return f"backfill only ({self._expression})"

"""Registers the sync's custom timetables with Airflow."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from crm_sync_timetables.backfill_only import BackfillOnlyCronTimetable


class CrmSyncTimetablesPlugin(AirflowPlugin):
    """Makes :class:`BackfillOnlyCronTimetable` known to the scheduler, API server and DAG processor."""

    name = "crm_sync_timetables"
    timetables = [BackfillOnlyCronTimetable]  # noqa: RUF012 (AirflowPlugin declares a class-level list)

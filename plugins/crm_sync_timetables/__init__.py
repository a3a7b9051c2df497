"""Timetables of the sync's DAGs, registered with Airflow by :mod:`crm_sync_timetables.plugin`."""

"""The sync status view inside the Airflow UI (an Airflow 3 plugin: a FastAPI app + a nav link).

``status_plugin.py`` registers it; ``views.py`` serves it; the figures come from
:mod:`crm_sync.status`. Airflow scans the plugins folder file by file, so ``.airflowignore``
keeps it to ``status_plugin.py`` (the others are imported as ``crm_sync_status.*``).
"""

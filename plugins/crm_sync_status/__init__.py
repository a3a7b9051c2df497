"""The sync status view inside the Airflow UI (an Airflow 3 plugin: a FastAPI app + a nav link).

``status_plugin.py`` registers it; ``views.py`` serves it (``exports.py`` writes the error CSV,
``static/charts.js`` draws the charts in the page); the figures come from :mod:`crm_sync.status`
and :mod:`crm_sync.status_charts`. Airflow scans the plugins folder file by file, so
``.airflowignore`` keeps it to ``status_plugin.py`` (the others are imported as ``crm_sync_status.*``).
"""

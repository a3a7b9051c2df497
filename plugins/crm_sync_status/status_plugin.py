"""Registers the sync status view with Airflow: the FastAPI app and its entry in the UI's Browse menu."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from crm_sync_status.views import URL_PREFIX, app


class CrmSyncStatusPlugin(AirflowPlugin):
    """Sync status page at ``/crm-sync-status/``, shown in the UI as Browse → Sync status."""

    name = "crm_sync_status"
    # AirflowPlugin declares these as plain class-level lists, so they are overridden the same way.
    fastapi_apps = [  # noqa: RUF012
        {"app": app, "url_prefix": URL_PREFIX, "name": "Marketo-Dynamics sync status"}
    ]
    external_views = [  # noqa: RUF012
        {
            "name": "Sync status",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "crm-sync-status",
        }
    ]

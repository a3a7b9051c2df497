"""Airflow hooks for Adobe Marketo Engage and Microsoft Dataverse (Dynamics 365), as a provider.

Importing this package stays cheap: Airflow's provider manager calls :func:`get_provider_info`
at start-up to list the ``marketo`` and ``dynamics`` connection types and their form fields;
the hooks live in :mod:`crm_sync_hooks.marketo` and :mod:`crm_sync_hooks.dynamics`.
"""

from __future__ import annotations

from typing import Any

from crm_sync_hooks.connection_ui import (
    DYNAMICS_CONN_FIELDS,
    DYNAMICS_UI_BEHAVIOUR,
    MARKETO_CONN_FIELDS,
    MARKETO_UI_BEHAVIOUR,
    provider_behaviour,
)

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata Airflow reads through the ``apache_airflow_provider`` entry point."""
    return {
        "package-name": "marketo-dynamics-sync",
        "name": "Marketo and Dynamics 365 sync",
        "description": "Hooks for Adobe Marketo Engage (REST) and Microsoft Dataverse (Web API).",
        "versions": ["0.1.0"],
        "hooks": [
            {"integration-name": "Adobe Marketo Engage", "python-modules": ["crm_sync_hooks.marketo"]},
            {"integration-name": "Microsoft Dynamics 365", "python-modules": ["crm_sync_hooks.dynamics"]},
        ],
        "connection-types": [
            {
                "connection-type": "marketo",
                "hook-class-name": "crm_sync_hooks.marketo.MarketoHook",
                "hook-name": "Adobe Marketo Engage",
                "conn-fields": MARKETO_CONN_FIELDS,
                "ui-field-behaviour": provider_behaviour(MARKETO_UI_BEHAVIOUR),
            },
            {
                "connection-type": "dynamics",
                "hook-class-name": "crm_sync_hooks.dynamics.DynamicsHook",
                "hook-name": "Microsoft Dynamics 365 (Dataverse)",
                "conn-fields": DYNAMICS_CONN_FIELDS,
                "ui-field-behaviour": provider_behaviour(DYNAMICS_UI_BEHAVIOUR),
            },
        ],
    }

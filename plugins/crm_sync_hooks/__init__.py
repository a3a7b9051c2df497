"""Airflow hooks for the Marketo REST API and the Dynamics 365 Web API."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Describe this package to Airflow's provider manager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "marketo-dynamics-sync",
        "name": "Marketo Dynamics Sync",
        "description": "Hooks and connection types for the Marketo REST API and the Dynamics 365 Web API.",
        "versions": ["0.1.0"],
        "connection-types": [],
    }

"""How the ``marketo`` and ``dynamics`` connection forms look in the Airflow UI.

Airflow 3.2+ reads connection forms declaratively from the provider info (``conn-fields`` for
extras, ``ui-field-behaviour`` for the standard fields), without importing the hooks. The hooks'
``get_ui_field_behaviour()``/``get_connection_form_widgets()`` serve older UIs from the same data.
"""

from __future__ import annotations

from typing import Any

_LIMITER_FIELDS: dict[str, dict[str, Any]] = {
    "limiter_url": {
        "label": "Shared limiter store",
        "description": "Where all tasks count calls against the API limits: empty for a SQLite file "
        "under var/ (one machine), sqlite:////abs/path.sqlite, or redis://host:6379/0 (several hosts).",
        "schema": {"type": ["string", "null"]},
    },
    "rate_limit_calls": {
        "label": "Calls per window",
        "description": "Calls allowed in one rolling window, shared by every task.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
    "rate_limit_window_seconds": {
        "label": "Window (seconds)",
        "description": "Length of the rolling rate-limit window.",
        "schema": {"type": ["number", "null"], "minimum": 0},
    },
    "max_concurrent_calls": {
        "label": "Concurrent calls",
        "description": "Calls allowed in flight at once, shared by every task.",
        "schema": {"type": ["integer", "null"], "minimum": 1},
    },
}

_TLS_TIMEOUT_FIELDS: dict[str, dict[str, Any]] = {
    "ca_bundle": {
        "label": "CA bundle",
        "description": "Path of a PEM file with the CA certificates to trust (TLS is always verified).",
        "schema": {"type": ["string", "null"]},
    },
    "timeout": {
        "label": "Timeout (seconds)",
        "description": "Read time-out of every API call.",
        "schema": {"type": ["number", "null"], "minimum": 1},
    },
}

MARKETO_CONN_FIELDS: dict[str, dict[str, Any]] = {
    **_TLS_TIMEOUT_FIELDS,
    "daily_call_budget": {
        "label": "Daily call budget",
        "description": "Stop cleanly after this many REST calls per day (keep it below the instance's "
        "daily quota, which resets at midnight US Central).",
        "schema": {"type": ["integer", "null"], "minimum": 0},
    },
    **_LIMITER_FIELDS,
}

MARKETO_UI_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port"],
    "relabeling": {"host": "REST base URL", "login": "Client ID", "password": "Client secret"},
    "placeholders": {
        "host": "https://123-ABC-456.mktorest.com",
        "login": "LaunchPoint custom service client id",
        "password": "LaunchPoint custom service client secret",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
        "timeout": "120",
        "daily_call_budget": "45000",
        "limiter_url": "redis://redis:6379/0",
    },
}

DYNAMICS_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "tenant_id": {
        "label": "Tenant ID",
        "description": "Microsoft Entra ID tenant (directory) id of the app registration.",
        "schema": {"type": ["string", "null"]},
    },
    "authority_host": {
        "label": "Authority host",
        "description": "Entra ID token service, https://login.microsoftonline.com unless a sovereign cloud.",
        "schema": {"type": ["string", "null"], "default": "https://login.microsoftonline.com"},
    },
    "api_version": {
        "label": "API version",
        "description": "Dataverse Web API version.",
        "schema": {"type": ["string", "null"], "default": "9.2"},
    },
    **_TLS_TIMEOUT_FIELDS,
    **_LIMITER_FIELDS,
}

DYNAMICS_UI_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "port"],
    "relabeling": {"host": "Organization URL", "login": "Client ID", "password": "Client secret"},
    "placeholders": {
        "host": "https://yourorg.crm.dynamics.com",
        "login": "application (client) id",
        "password": "client secret of the app registration",
        "tenant_id": "00000000-0000-0000-0000-000000000000",
        "authority_host": "https://login.microsoftonline.com",
        "api_version": "9.2",
        "ca_bundle": "/etc/ssl/certs/ca-certificates.crt",
        "timeout": "60",
        "limiter_url": "redis://redis:6379/0",
    },
}


def provider_behaviour(behaviour: dict[str, Any]) -> dict[str, Any]:
    """Return a UI behaviour with the kebab-case keys the provider info schema uses."""
    return {
        "hidden-fields": list(behaviour["hidden_fields"]),
        "relabeling": dict(behaviour["relabeling"]),
        "placeholders": dict(behaviour["placeholders"]),
    }


def wtforms_widgets(fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Build WTForms widgets for UIs that still call ``get_connection_form_widgets()``.

    Raises:
        ImportError: WTForms is not installed (Airflow 3.3 no longer needs it).
    """
    from wtforms import IntegerField, StringField

    widgets: dict[str, Any] = {}
    for name, spec in fields.items():
        kinds = spec["schema"]["type"]
        kinds = kinds if isinstance(kinds, list) else [kinds]
        field_class = IntegerField if "integer" in kinds else StringField
        widgets[name] = field_class(spec["label"], description=spec.get("description"))
    return widgets

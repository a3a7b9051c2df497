"""Defaults every DAG of this project shares: owner, retries with backoff, alerting, tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from crm_sync.alerting import SyncFailureNotifier

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)

# Tags come from this vocabulary only (checked by tests/dags), so the UI's tag filter stays useful.
TAG_VOCABULARY = frozenset(
    {
        "marketo-dynamics-sync",
        "kind:incremental",
        "kind:full-copy",
        "kind:maintenance",
        "direction:both",
        "direction:d2m",
        "direction:m2d",
    }
    | {
        f"entity:{name}"
        for name in ("lead", "contact", "account", "opportunity", "user", "team", "custom", "all")
    }
    | {"entity:activity", "kind:history"}  # sync_activities, sync_activities_history (issue 20)
)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Return the shared ``default_args``; keyword arguments override single entries."""
    args: dict[str, Any] = {
        "owner": "marketing-ops",
        "retries": 3,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(hours=2),
        "on_failure_callback": [SyncFailureNotifier()],
    }
    args.update(overrides)
    return args

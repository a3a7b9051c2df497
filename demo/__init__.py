"""The local demo's helpers: the activity generator, the alert sink, fault switching, the check.

Nothing here is imported by DAGs or the engine; ``scripts/stack.py`` (``make demo``) runs these
modules as processes and commands. They live in ``include/`` so they are typed, unit-tested and
share the project's settings loader, and because they speak to the emulators only over their
public HTTP APIs, exactly as a real CRM user or a webhook receiver would.
"""

from __future__ import annotations

import os

#: Port of the local alert sink; ``mds_alert_webhook_url`` in airflow_settings.yaml points at it.
ALERT_SINK_PORT = int(os.environ.get("MDS_ALERT_SINK_PORT", "8083"))

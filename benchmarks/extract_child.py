"""Child process: read every lead with our hooks, as the peer connectors do, and report as JSON.

Usage::

    python -m benchmarks.extract_child marketo <start ISO> <end ISO> <out.json>
    python -m benchmarks.extract_child dynamics <out.json>

* ``marketo``: connection ``marketo_default`` (``AIRFLOW_CONN_MARKETO_DEFAULT``); ``describe``
  gives the field list (as the peers do), then one bulk export job per 31-day window of
  ``updatedAt``, rows counted as they are read back.
* ``dynamics``: connection ``dynamics_default``; the initial change-tracking read of ``leads``
  (pages of 5,000, the columns the lead mapping selects) up to its delta link, as the engine's
  first extract does.

Writes rows, fields, seconds and this process's peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import datetime
from pathlib import Path


def _marketo(start_s: str, end_s: str) -> tuple[int, int]:
    from crm_sync_hooks.marketo import MarketoHook

    start, end = datetime.fromisoformat(start_s), datetime.fromisoformat(end_s)
    hook = MarketoHook("marketo_default")
    try:
        fields = [str(f["rest"]["name"]) for f in hook.describe("leads") if f.get("rest")]
        rows = 0
        for batch in hook.bulk_extract_leads(fields, start, end, date_filter="updatedAt", poll_seconds=1.0):
            rows += len(batch)
    finally:
        hook.close()
    return rows, len(fields)


def _dynamics() -> tuple[int, int]:
    from crm_sync.config import load_entities
    from crm_sync.engine.columns import dynamics_columns
    from crm_sync_hooks.dynamics import DynamicsHook

    columns = dynamics_columns(load_entities()["lead"])
    hook = DynamicsHook("dynamics_default")
    try:
        rows = 0
        for page in hook.track_changes("leads", columns, page_size=5000):
            rows += len(page.records)
    finally:
        hook.close()
    return rows, len(columns)


def main(argv: list[str]) -> int:
    """Run the extract and write the JSON report."""
    side, *rest, out = argv
    # Imports (Airflow, pandas) first: "seconds" is the read itself; the parent times the process.
    import crm_sync.engine.extract  # noqa: F401
    import crm_sync_hooks.dynamics
    import crm_sync_hooks.marketo  # noqa: F401

    began = time.monotonic()
    rows, fields = _marketo(*rest) if side == "marketo" else _dynamics()
    seconds = time.monotonic() - began
    report = {
        "rows": rows,
        "fields": fields,
        "seconds": seconds,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

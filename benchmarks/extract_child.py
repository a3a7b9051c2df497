"""Child process: extract every lead from the Marketo emulator with our MarketoHook's bulk extract.

Usage: ``python -m benchmarks.extract_child <start ISO> <end ISO> <out.json>``

Reads the connection ``marketo_default`` from ``AIRFLOW_CONN_MARKETO_DEFAULT`` (set by the
benchmark), asks ``describe`` for the field list (as the peers do), runs one export job per
31-day window of ``updatedAt`` and counts the rows read back. Writes rows, fields, seconds and
this process's peak RSS as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import datetime
from pathlib import Path


def main(argv: list[str]) -> int:
    """Run the extract and write the JSON report."""
    start_s, end_s, out = argv
    from crm_sync_hooks.marketo import MarketoHook

    start, end = datetime.fromisoformat(start_s), datetime.fromisoformat(end_s)
    began = time.monotonic()
    hook = MarketoHook("marketo_default")
    try:
        fields = [str(f["rest"]["name"]) for f in hook.describe("leads") if f.get("rest")]
        rows = 0
        for batch in hook.bulk_extract_leads(fields, start, end, date_filter="updatedAt", poll_seconds=1.0):
            rows += len(batch)
    finally:
        hook.close()
    seconds = time.monotonic() - began
    report = {
        "rows": rows,
        "fields": len(fields),
        "seconds": seconds,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

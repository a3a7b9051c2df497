"""The theoretical minimum number of API calls for the records a run actually moved.

The minimum is computed from the emulators' record counters of the same run (records read and
written per table/object), never typed in, with the API's own maxima:

* Dataverse: a read returns at most 5,000 rows per page (``Prefer: odata.maxpagesize``), so
  ``ceil(rows / 5000)`` calls per table read, at least one (an empty delta read is still a call);
  a ``$batch`` carries at most 1,000 operations, so ``ceil(rows / 1000)`` calls per table written.
  A change-tracking read from a delta link (``delta_reads``) costs ``rows // 5000 + 1``: new and
  updated rows come first and deletions after them, and the emulator follows a page full of rows
  with another (the deletions', empty or not) before the new delta link comes, so 10,000 changed
  rows take three pages at any page size up to 5,000, where ``ceil`` says two (whether Dataverse
  itself sends that last page is unconfirmed). The record counters do not say which reads were
  delta reads (a table's first read, by change tracking too, and reads by key count the same),
  so the caller names them; deletions in a delta are not in the counters, so the figure stays a
  lower bound.
* Marketo: 300 records per REST call, so ``ceil(records / 300)`` per object written and per
  person read by id; the person change feed returns 300 activities per page, at least one page;
  so does the deleted-leads feed, read by every person run that syncs Marketo → Dynamics (a
  person deleted or merged away in Marketo is reported at once, issue 22);
  one paging-token call when the run had no stored token (the route then shows in the stats).
  A bulk import moves up to 10 MB per file with two calls (create, status) at the least; an
  export job that reads the imported persons' ids back costs four (create, enqueue, status, file).
* Authentication: one token per side per run (reported apart from the API calls).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Collection

DATAVERSE_PAGE = 5000
DATAVERSE_BATCH = 1000
MARKETO_BATCH = 300
MARKETO_FEED_PAGE = 300

DEFINITION = {
    "dynamics": "per table read: ceil(rows/5000), at least 1 (delta or first query); "
    "a read from a delta link, when the run names it: rows//5000 + 1 (a page full of changed rows "
    "is followed by another before the delta link); "
    "per table written: ceil(rows/1000) $batch calls; 1 token call",
    "marketo": "per object written: ceil(records/300) sync calls (bulk import: 2 calls per file under 10 MB, "
    "4 for the export that reads the new ids back); "
    "person reads by id: ceil(persons/300); change feed: ceil(activities/300), at least 1 page; "
    "deleted-leads feed, when read: ceil(deletions/300), at least 1 page; "
    "1 paging-token call when no token was stored; 1 token call",
}


def _ceil(n: int, per: int) -> int:
    return math.ceil(n / per) if n > 0 else 0


def dynamics_minimum(side: dict[str, Any], *, delta_reads: Collection[str] = ()) -> int:
    """Minimum Dataverse API calls (token excluded) for the rows one run read and wrote.

    Args:
        side: The run's Dataverse figures (``records``: ``<table>.read`` and the like).
        delta_reads: Logical names of the tables the run read from a stored delta link (an
            incremental ``sync_<entity>`` run's own table); their reads cost ``rows // 5000 + 1``.
            Rows read by key in the same run count with them: ``n // 5000 + 1`` never exceeds
            the delta's ``d // 5000 + 1`` plus the key reads' ``ceil(k / 5000)``, so the sum stays
            a lower bound.
    """
    total = 0
    delta = set(delta_reads)
    for key, n in dict(side.get("records", {})).items():
        table, _, kind = key.rpartition(".")
        if kind == "read" and table in delta:
            total += int(n) // DATAVERSE_PAGE + 1
        elif kind == "read":
            total += max(_ceil(int(n), DATAVERSE_PAGE), 1)
        elif kind in ("write", "delete", "create", "update"):
            total += _ceil(int(n), DATAVERSE_BATCH)
    return total


def marketo_minimum(side: dict[str, Any]) -> int:
    """Minimum Marketo API calls (token excluded) for the records one run read and wrote."""
    total = 0
    routes: dict[str, int] = dict(side.get("routes", {}))
    if any("pagingtoken" in r for r in routes):
        total += 1
    records: dict[str, int] = dict(side.get("records", {}))
    if routes.get("GET /rest/v1/activities/deletedleads.json"):
        total += max(_ceil(int(records.get("deletedlead.read", 0)), MARKETO_FEED_PAGE), 1)
    for key, n in records.items():
        obj, _, kind = key.rpartition(".")
        n = int(n)
        if obj == "leadchange" and kind == "read":
            total += max(_ceil(n, MARKETO_FEED_PAGE), 1)
        elif obj == "deletedlead":
            continue  # counted with its route above
        elif kind in ("write", "delete") or kind == "read":
            total += _ceil(n, MARKETO_BATCH)
        elif kind == "imported":
            # 2 calls (create, status) per import file; files are cut under 10 MB by the loader.
            total += 2 * max(routes.get("POST /bulk/v1/leads.json", 0), 1)
        elif kind == "exported":
            total += 4  # one export job (create, enqueue, status, file) brings the new ids back
    return total


def ratio(actual: int, minimum: int) -> float | None:
    """``actual / minimum`` rounded, or None when the minimum is zero."""
    return round(actual / minimum, 3) if minimum else None


ACTIVITY_EXPORT_JOB_CALLS = 4  # create, enqueue, one status call, one file download


def activities_minimum(activities: int, marketo_routes: dict[str, int], *, history: bool) -> int:
    """Minimum API calls (tokens excluded) of one activity sync run that wrote ``activities``.

    Both paths read the activity types once and write ``ceil(activities/1000)`` ``$batch``
    requests. History: one export job (create, enqueue, status, file) per 31-day window (the
    jobs the run created, at least one). Feed: ``ceil(activities/300)`` pages, at least one, and
    one paging-token call when the run had no stored token.
    """
    total = 1 + _ceil(activities, DATAVERSE_BATCH)
    if history:
        jobs = max(int(marketo_routes.get("POST /bulk/v1/activities/export/create.json", 0)), 1)
        return total + ACTIVITY_EXPORT_JOB_CALLS * jobs
    token = 1 if any("pagingtoken" in r for r in marketo_routes) else 0
    return total + token + max(_ceil(activities, MARKETO_FEED_PAGE), 1)

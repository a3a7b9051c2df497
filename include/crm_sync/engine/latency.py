"""Change-to-arrival latency: when a run's changes were made at their source, and how long they took.

The extract collects the source times of the changes it reads (Dataverse's modified column,
Marketo's activity dates) and keeps a summary in its manifest; the commit turns it into the
ledger's latency figures (commit time minus the change times): p50 from the median change,
p95 from the 5th-percentile (older) change, max from the oldest.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


def summarize(times: Iterable[datetime | None]) -> dict[str, Any] | None:
    """``{"n", "oldest", "p05", "median"}`` (ISO times) of the known times; None when there are none."""
    known = sorted(t for t in times if t is not None)
    if not known:
        return None

    def at(q: float) -> str:
        return known[min(math.floor(q * (len(known) - 1)), len(known) - 1)].isoformat()

    return {"n": len(known), "oldest": known[0].isoformat(), "p05": at(0.05), "median": at(0.5)}


def latency_seconds(summary: Mapping[str, Any] | None, arrived: datetime) -> dict[str, float | None]:
    """``latency_p50_s``, ``latency_p95_s``, ``latency_max_s`` of changes that arrived at ``arrived``."""
    keys = {"latency_p50_s": "median", "latency_p95_s": "p05", "latency_max_s": "oldest"}
    if not summary:
        return dict.fromkeys(keys)
    out: dict[str, float | None] = {}
    for key, which in keys.items():
        made = datetime.fromisoformat(str(summary[which]))
        out[key] = round(max((arrived - made).total_seconds(), 0.0), 3)
    return out


def combine(*summaries: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """One summary of several (the Dataverse side, each person-feed chunk).

    Exact for ``n`` and ``oldest``; ``p05`` takes the oldest of the parts' (never under-states
    the latency) and ``median`` the count-weighted median of the parts' medians.
    """
    parts = [s for s in summaries if s]
    if not parts:
        return None
    if len(parts) == 1:
        return dict(parts[0])
    medians = sorted((str(p["median"]), int(p["n"])) for p in parts)
    total = sum(n for _, n in medians)
    running, median = 0, medians[-1][0]
    for value, n in medians:
        running += n
        if running * 2 >= total:
            median = value
            break
    return {
        "n": total,
        "oldest": min(str(p["oldest"]) for p in parts),
        "p05": min(str(p["p05"]) for p in parts),
        "median": median,
    }

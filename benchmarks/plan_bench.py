"""Throughput and memory of the full copy's plan stage on synthetic leads, in this process.

Usage: ``python -m benchmarks.plan_bench [--rows 100000] [--page-rows 5000] [--json]``

Stages a synthetic Dataverse ``lead`` extract (pages of 5,000 rows, every mapped column, unique
emails, an id map holding the owners) under a temporary staging root with a fresh SQLite state
store, then runs :func:`crm_sync.engine.full_copy.units.plan_partition` over it, as the
``lead.plan`` task of a full copy does. Prints rows planned per second (one core) and the
process's peak RSS before and after the plan; ``tests/perf`` runs it in a child process to
show that the plan's memory follows the chunk size, not the partition size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# pandas and numpy are imported inside the functions, after crm_sync, as in a task process: the
# package chooses Arrow's allocator before pyarrow is first imported (crm_sync/__init__.py).
import crm_sync  # noqa: F401

PAGE_ROWS = 5000  # one staged extract page (Dataverse's largest page)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_extract(rows: int, root: Path, run_id: str, page_rows: int = PAGE_ROWS) -> tuple[Any, Any]:
    """Stage ``rows`` synthetic leads as an extract manifest; the entity and run context."""
    from airflow.sdk import ObjectStoragePath

    from benchmarks.transform_bench import synthetic_leads
    from crm_sync.config import load_entities
    from crm_sync.engine.columns import dynamics_columns
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.extract import EXTRACT_MANIFEST
    from crm_sync.engine.staging import StagingArea
    from crm_sync.state import make_engine, session_scope, upgrade, upsert_links

    entity = load_entities()["lead"]
    url = f"sqlite:///{root / 'state.db'}"
    upgrade(url)
    ctx = RunContext(run_id, StagingArea(ObjectStoragePath(f"file://{root / 'staging'}")), make_engine(url))
    columns = dynamics_columns(entity)
    folder = ctx.staging.run_dir(entity.name, run_id)
    batches = []
    owners = None
    for start in range(0, rows, page_rows):
        size = min(page_rows, rows - start)
        frame, id_map = synthetic_leads(entity, size, seed=start + 1)
        owners = id_map if owners is None else owners
        frame["emailaddress1"] = [f"person{start + i}@example.com" for i in range(size)]
        frame["new_synctomkto"] = True
        for column in columns:
            if column not in frame:
                frame[column] = None
        page = frame[columns].astype(object).where(frame[columns].notna(), None)
        ref = ctx.staging.write_frame(folder / "extract", f"dynamics-{start // page_rows:05d}", page)
        batches.append(ref.to_dict())
    assert owners is not None
    with session_scope(ctx.state) as session:
        upsert_links(
            session,
            "user",
            [
                {"dynamics_id": d, "marketo_id": m}
                for d, m in zip(owners["dynamics_id"], owners["marketo_id"], strict=True)
            ],
        )
    manifest = {
        "entity": entity.name,
        "run_id": run_id,
        "started_at": "2026-01-01T00:00:00+00:00",
        "pending": {},
        "scope": {"everything": True},
        "dynamics": {"batches": batches, "deleted": [], "rows": rows, "deleted_rows": 0, "initial": True},
        "marketo": None,
    }
    ctx.staging.write_json(folder, EXTRACT_MANIFEST, manifest)
    return entity, ctx


def run(rows: int, workdir: Path | None = None, page_rows: int = PAGE_ROWS) -> dict[str, Any]:
    """Stage ``rows`` leads in pages of ``page_rows`` and plan them; the figures."""
    from crm_sync.engine.full_copy.units import plan_partition

    with tempfile.TemporaryDirectory(prefix="mds-plan-bench-", dir=workdir) as tmp:
        entity, ctx = stage_extract(rows, Path(tmp), "plan_bench", page_rows)
        before = _peak_rss_mb()
        started = time.perf_counter()
        manifest = plan_partition(entity, ctx, person_entities=["lead", "contact"])
        seconds = time.perf_counter() - started
        records = sum(int(u["records"]) for u in manifest["batches"])
    return {
        "rows": rows,
        "records_planned": records,
        "units": len(manifest["batches"]),
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds),
        "peak_rss_mb_before_plan": round(before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument(
        "--page-rows",
        type=int,
        default=PAGE_ROWS,
        help="rows per staged page (the plan works a page at a time)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    import numpy as np

    logging.disable(logging.INFO)  # the plan's own log lines are not the figure
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # a per-core figure
    np.seterr(all="ignore")
    figures = run(args.rows, page_rows=args.page_rows)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        sys.stdout.write(
            f"lead plan: {figures['rows']:,} rows -> {figures['records_planned']:,} records in "
            f"{figures['units']} units, {figures['seconds']:.2f} s, {figures['rows_per_s']:,} rows/s "
            f"per core; peak RSS {figures['peak_rss_mb']:.0f} MB "
            f"({figures['peak_rss_mb_before_plan']:.0f} MB before the plan)\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

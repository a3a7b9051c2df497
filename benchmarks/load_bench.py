"""Memory and time of one full-copy bulk load unit against the Marketo emulator, in a fresh process.

Usage: ``python -m benchmarks.load_bench [--rows 40000] [--json]``

A child process stages and plans ``--rows`` synthetic leads (:mod:`benchmarks.plan_bench`), so the
plan's memory never counts here. This process then starts the Marketo emulator (limits off),
and loads the plan's largest bulk unit with :func:`crm_sync.engine.full_copy.load.load_unit`, as a
``lead.load`` task of a full copy does: the import file, the import job, its reports and the id
map's rows. Prints records loaded per second and the process's peak RSS before and after the
load (a bulk unit is bounded by Marketo's 10 MB import file, about 36,000 synthetic leads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.plan_bench import _peak_rss_mb

RUN_ID = "load_bench"


def _stage_and_plan(rows: int, root: Path) -> None:
    """Stage and plan ``rows`` leads under ``root`` (run in a child process)."""
    from benchmarks.plan_bench import stage_extract
    from crm_sync.engine.full_copy.units import plan_partition

    entity, ctx = stage_extract(rows, root, RUN_ID)
    plan_partition(entity, ctx, person_entities=["lead", "contact"])


def _largest_bulk_unit(root: Path) -> dict[str, Any]:
    from airflow.sdk import ObjectStoragePath

    from crm_sync.engine.staging import StagingArea
    from crm_sync.engine.transform import TRANSFORM_MANIFEST

    staging = StagingArea(ObjectStoragePath(f"file://{root / 'staging'}"))
    manifest = staging.read_json(staging.run_dir("lead", RUN_ID), TRANSFORM_MANIFEST)
    assert manifest is not None, "the plan staged no manifest"
    bulk = [u for u in manifest["batches"] if u["mode"] == "bulk"]
    if not bulk:
        raise SystemExit("the plan made no bulk unit: use more rows")
    return dict(max(bulk, key=lambda u: int(u["records"])))


def run(rows: int) -> dict[str, Any]:
    """Plan ``rows`` leads in a child process, then load the largest bulk unit here; the figures."""
    from crm_sync.config import load_entities
    from crm_sync.engine.context import RunContext
    from crm_sync.engine.full_copy.load import load_unit
    from crm_sync.engine.staging import StagingArea
    from crm_sync.state import make_engine
    from tests.support.emulator_procs import start_emulator

    from airflow.sdk import ObjectStoragePath  # isort: skip
    from crm_sync_hooks.marketo import MarketoHook  # isort: skip

    with tempfile.TemporaryDirectory(prefix="mds-load-bench-") as tmp:
        root = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "benchmarks.load_bench", "--rows", str(rows), "--plan-only", str(root)],
            check=True,
            env=os.environ.copy(),
        )
        unit = _largest_bulk_unit(root)
        emulator = start_emulator("marketo", root / "marketo", ["--limits", "off", "--bulk-job-seconds", "0"])
        try:
            os.environ["AIRFLOW_CONN_MARKETO_DEFAULT"] = emulator.connection(
                timeout=120, bulk_poll_seconds=0.2
            )
            entity = load_entities()["lead"]
            ctx = RunContext(
                RUN_ID,
                StagingArea(ObjectStoragePath(f"file://{root / 'staging'}")),
                make_engine(f"sqlite:///{root / 'state.db'}"),
            )
            hook = MarketoHook("marketo_default")
            before = _peak_rss_mb()
            started = time.perf_counter()
            outcome = load_unit(entity, ctx, unit, hook)
            seconds = time.perf_counter() - started
        finally:
            emulator.stop()
    return {
        "rows": rows,
        "unit_records": int(unit["records"]),
        "loaded": int(outcome["loaded"]),
        "failed": int(outcome["failed"]),
        "seconds": round(seconds, 3),
        "records_per_s": round(int(outcome["loaded"]) / seconds),
        "peak_rss_mb_before_load": round(before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    parser.add_argument("--plan-only", type=Path, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # the load's own log lines are not the figure
    if args.plan_only:
        _stage_and_plan(args.rows, args.plan_only)
        return 0
    figures = run(args.rows)
    if args.json:
        sys.stdout.write(json.dumps(figures) + "\n")
    else:
        f = figures
        sys.stdout.write(
            f"lead load: one bulk unit of {f['unit_records']:,} records, {f['loaded']:,} loaded, "
            f"{f['failed']:,} failed, {f['seconds']:.2f} s, {f['records_per_s']:,} records/s; "
            f"peak RSS {f['peak_rss_mb']:.0f} MB ({f['peak_rss_mb_before_load']:.0f} MB before the load)\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

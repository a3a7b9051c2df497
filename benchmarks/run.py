"""Run the benchmark scenarios and write JSON, a Markdown table and a plot under ``benchmarks/results/``.

Usage::

    python -m benchmarks.run --quick            # make bench-quick: small volumes, 5 min + the trickle's 12-15
    python -m benchmarks.run                    # make bench: 100,000 leads (limits on), 1M (off), peers
    python -m benchmarks.run --volumes 1000000 --modes off --only full-copy   # the 1M full copy, once
    python -m benchmarks.run --quick --only trickle   # issue 19's trickle on a running stack, alone

Every figure comes from the run itself: emulator counters, wall clocks, psutil samples.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import peers, scenarios, trickle
from benchmarks.harness import PROFILE_ENV, BenchEnv, LimitMode
from benchmarks.report import write_results
from tests.support.emulator_procs import PROJECT_DIR

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("benchmarks.run")

RESULTS_DIR = PROJECT_DIR / "benchmarks" / "results"
PHASES = (
    "full-copy", "incremental", "conflicts", "peers", "dataverse-peer", "transform", "activities", "trickle",
)  # fmt: skip


def _profile(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        # Five minutes: the sync scenarios and the transform (conflicts and peers are in make bench),
        # then 12 to 15 for the trickle (it runs in real time).
        defaults: dict[str, Any] = {
            "volumes": [1000], "changes": [0, 100], "conflicts": 0, "peer_leads": [],
            "peer_start": "2025-07-01", "transform_rows": [50_000], "modes": ["on"],
            "activities": [5_000],
            # trickle: 2 minutes of changes, 5 idle (one whole cycle of the 5-minute schedules: a
            # shorter span may hold no scheduled run at all); the drain is capped at 4 minutes and
            # the wait after the idle span at 3 (a change later than that is a miss).
            "trickle_minutes": 2.0, "trickle_idle_minutes": 5.0, "trickle_leads": 500,
            "trickle_idle_settle_minutes": 4.0,
            "trickle_drain_s": 240.0, "trickle_after_idle_wait_s": 180.0, "trickle_warmup_s": 300.0,
        }  # fmt: skip
    else:
        # One run of everything: every scenario at 100,000 leads under the limits, the
        # 1,000,000-lead full copy with the limits off (at that volume a copy under the limits
        # measures the limits; with them off it measures us, and memory).
        defaults = {
            "volumes": {"on": [100_000], "off": [1_000_000]}, "changes": [0, 100, 10_000],
            "conflicts": 1000, "peer_leads": [100_000], "peer_start": "2024-01-01",
            "transform_rows": [200_000, 1_000_000], "modes": ["off", "on"],  # the longest first
            "activities": [20_000, 100_000],
            # Issue 19: one change every 10 s per side for 10 minutes, then 20 idle minutes, on
            # the demo's 2,000 leads.
            "trickle_minutes": 10.0, "trickle_idle_minutes": 20.0, "trickle_leads": 2000,
            "trickle_idle_settle_minutes": 5.0,
            "trickle_drain_s": 420.0, "trickle_after_idle_wait_s": 420.0, "trickle_warmup_s": 420.0,
        }  # fmt: skip
    defaults["copy_with"] = None
    # The full copy under airflow standalone (a process per task: per-task memory) costs about a
    # minute of start-up and task processes; the quick profile runs it in dag.test() instead.
    defaults["copy_in_workers"] = not args.quick and args.profile is None
    defaults["copy_only_from"] = 1_000_000  # volumes from here: the full copy only
    defaults["trickle_schedule"] = None  # the entity files' own schedules
    defaults["trickle_dags"] = None  # the DAGs the demo unpauses
    for key in defaults:
        value = getattr(args, key, None)
        if value is not None:
            defaults[key] = value
    if isinstance(defaults["volumes"], list):
        defaults["volumes"] = dict.fromkeys(("on", "off"), defaults["volumes"])
    return defaults


def _mode(name: str, args: argparse.Namespace) -> LimitMode:
    return (
        LimitMode.on(args.marketo_time_scale, args.dynamics_time_scale) if name == "on" else LimitMode.off()
    )


def source_revision() -> str:
    """The commit measured: ``$MDS_BENCH_COMMIT`` (a snapshot without .git), else ``git describe``."""
    if os.environ.get("MDS_BENCH_COMMIT"):
        return os.environ["MDS_BENCH_COMMIT"]
    proc = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


def transform_rate(rows: int) -> dict[str, Any]:
    """Run ``benchmarks.transform_bench`` in its own process (pinned to one core) and parse its line."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.transform_bench", "--rows", str(rows), "--repeat", "3"],
        capture_output=True, text=True, check=True, cwd=PROJECT_DIR, env=os.environ.copy(), timeout=1800,
    )  # fmt: skip
    match = re.search(r"best of \d+: ([\d.]+) s, ([\d,]+) records/s per core", proc.stdout)
    if not match:
        raise RuntimeError(f"transform_bench printed no figure: {proc.stdout!r} {proc.stderr[-1000:]!r}")
    return {
        "scenario": f"lead transform, {rows:,} rows",
        "rows": rows,
        "best_seconds": float(match.group(1)),
        "records_per_s_per_core": int(match.group(2).replace(",", "")),
        "line": proc.stdout.strip(),
    }


def activities_rate(activities: int) -> list[dict[str, Any]]:
    """Run ``benchmarks.activities_bench`` (limits off) in its own process; one figure per path
    (bulk export, activity feed): activities/s and calls per 1,000 against the minimum."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.activities_bench", "--activities", str(activities), "--json"],
        capture_output=True, text=True, check=True, cwd=PROJECT_DIR, env=os.environ.copy(), timeout=3600,
    )  # fmt: skip
    figures = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    for f in figures:
        log.info(
            "activities, %s: %s activities/s, %s calls per 1,000 (minimum %s, x%s)",
            f["path"], f["activities_per_s"], f["calls_per_1000"], f["min_calls_per_1000"], f["ratio"],
        )  # fmt: skip
    return figures


def run_sync_scenarios(
    workroot: Path,
    mode: LimitMode,
    volume: int,
    profile: dict[str, Any],
    only: set[str],
    sink: list[dict[str, Any]],
    checkpoint: Callable[[], object],
) -> None:
    """Full copy, then (unless ``only`` says otherwise) incremental runs and conflicts on one env.

    Each scenario's figures go to ``sink`` and are checkpointed as soon as they exist; a scenario
    that fails is recorded with its error and the later ones still run.
    """
    steps: list[tuple[str, Callable[[BenchEnv], dict[str, Any]]]] = [
        (
            "full copy",
            lambda env: scenarios.full_copy(
                env, volume, profile.get("copy_with"), in_workers=profile["copy_in_workers"]
            ),
        )
    ]
    if "incremental" in only or "conflicts" in only:
        steps.append(("echo runs", scenarios.settle))
    if "incremental" in only:
        for changes in profile["changes"]:
            steps.append(
                (f"incremental {changes}", scenarios.empty_runs)
                if changes == 0
                else (f"incremental {changes}", functools.partial(scenarios.incremental, changes=changes))
            )
    if "conflicts" in only and profile["conflicts"]:  # the quick profile has none: its 5 minutes
        steps.append(("conflicts", lambda env: scenarios.conflicts(env, profile["conflicts"])))
    with BenchEnv(workroot / f"sync-{mode.name}-{volume}", mode, dynamics_seed=volume) as env:
        env.migrate_airflow()
        for name, step in steps:
            log.info("[%s] %s, %d leads", mode.name, name, volume)
            try:
                item = step(env)
            except Exception as exc:  # keep what was measured; say what failed
                log.exception("[%s] %s failed", mode.name, name)
                item = {"scenario": name, "limits": mode.name, "error": str(exc)[-2000:]}
            item["volume"] = volume
            sink.append(item)
            checkpoint()


def trickle_settings(profile: dict[str, Any]) -> trickle.TrickleSettings:
    """The trickle scenario's settings from the profile (``trickle_*`` keys)."""
    dags = profile["trickle_dags"]
    return trickle.TrickleSettings(
        minutes=profile["trickle_minutes"], idle_minutes=profile["trickle_idle_minutes"],
        idle_settle_minutes=profile.get("trickle_idle_settle_minutes", 0.0),
        leads=profile["trickle_leads"], drain_s=profile["trickle_drain_s"],
        after_idle_wait_s=profile["trickle_after_idle_wait_s"], warmup_s=profile["trickle_warmup_s"],
        schedule=profile["trickle_schedule"], dags=tuple(dags) if dags is not None else None,
    )  # fmt: skip


def run_trickle(workroot: Path, mode: LimitMode, profile: dict[str, Any]) -> dict[str, Any]:
    """The trickle scenario on ``mode``; a failure is recorded with its error, as for the sync scenarios."""
    settings = trickle_settings(profile)
    log.info("[%s] trickle: %s", mode.name, settings)
    try:
        item = trickle.run_trickle(workroot, mode, settings)
    except Exception as exc:  # keep what was measured elsewhere; say what failed
        log.exception("[%s] trickle failed", mode.name)
        return {"scenario": "trickle", "limits": mode.name, "error": str(exc)[-2000:]}
    for d in trickle.DIRECTIONS:
        f = item[d]
        log.info("trickle %s: %s/%s arrived, p50 %s s, p95 %s s, max %s s", d, f["arrived"], f["changes"],
                 f["latency_p50_s"], f["latency_p95_s"], f["latency_max_s"])  # fmt: skip
    log.info("trickle idle: %s Marketo calls per day", item["idle"]["idle_calls_per_day"])
    return item


def merge(results: dict[str, Any], earlier: dict[str, Any]) -> None:
    """Add an earlier run's measurements (a long run split in parts) to ``results``; revisions are listed."""
    revisions = [r for r in results["revision"].split(" + ") if r]
    if earlier.get("revision") not in revisions:
        results["revision"] = " + ".join([*revisions, str(earlier.get("revision"))])
    results["modes"].update(earlier["modes"])
    for key in ("scenarios", "peers", "transform", "activities", "trickle"):
        results.setdefault(key, [])
        results[key] += earlier.get(key, [])
    results["parts"] = [
        *results.get("parts", []),
        {k: earlier[k] for k in ("generated_at", "settings", "machine")},
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small volumes (make bench-quick)")
    parser.add_argument("--volumes", type=int, nargs="+", help="Dataverse leads to seed per full copy")
    parser.add_argument("--changes", type=int, nargs="+", help="changes per side of the incremental runs")
    parser.add_argument("--conflicts", type=int, help="leads changed on both sides")
    parser.add_argument(
        "--peer-leads", dest="peer_leads", type=int, nargs="+", help="Marketo leads for peers"
    )
    parser.add_argument("--peer-start", dest="peer_start", help="first day of the peers' extract window")
    parser.add_argument("--transform-rows", dest="transform_rows", type=int, nargs="+")
    parser.add_argument("--trickle-minutes", dest="trickle_minutes", type=float, help="trickle: change phase")
    parser.add_argument(
        "--trickle-idle-minutes", dest="trickle_idle_minutes", type=float, help="trickle: idle"
    )
    parser.add_argument(
        "--trickle-idle-settle",
        dest="trickle_idle_settle_minutes",
        type=float,
        help="trickle: quiet minutes before the counted idle span (the watchers back off)",
    )
    parser.add_argument(
        "--trickle-leads", dest="trickle_leads", type=int, help="trickle: Dataverse leads seeded"
    )
    parser.add_argument("--trickle-drain", dest="trickle_drain_s", type=float, help="trickle: drain cap, s")
    parser.add_argument(
        "--trickle-after-idle-wait", dest="trickle_after_idle_wait_s", type=float,
        help="trickle: wait cap for the change after the idle span, s",
    )  # fmt: skip
    parser.add_argument(
        "--trickle-warmup", dest="trickle_warmup_s", type=float, help="trickle: warm-up cap, s"
    )
    parser.add_argument(
        "--trickle-schedule", dest="trickle_schedule", help="trickle: cron of every entity DAG (smoke tests)"
    )
    parser.add_argument("--trickle-dags", dest="trickle_dags", nargs="+", help="trickle: DAGs to unpause")
    parser.add_argument(
        "--copy-with", dest="copy_with", nargs="+", help="copy with the first runs of these sync DAGs instead"
    )
    parser.add_argument("--modes", nargs="+", choices=["on", "off"], help="limit modes (default both)")
    parser.add_argument(
        "--only", nargs="*", choices=PHASES, default=list(PHASES), help="phases (none: merge only)"
    )
    parser.add_argument("--marketo-time-scale", type=float, default=0.25, help="Marketo windows x this")
    parser.add_argument("--dynamics-time-scale", type=float, default=4.0, help="Dataverse windows / this")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--name", default=None, help="results file stem (default: quick or full)")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="results JSON of earlier runs to include (same revision)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="results JSON of the previous commit (same phases): issue 18's targets beside it",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each run in one dag.test() process; collapsed stacks to this folder",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("airflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    profile = _profile(args)
    only = set(args.only)
    started = time.monotonic()
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": "quick" if args.quick else "full",
        "revision": source_revision(),
        "settings": profile,
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "python": platform.python_version(),
        },
        "modes": {},
        "scenarios": [],
        "peers": [],
        "transform": [],
        "activities": [],
        "trickle": [],
    }
    if not only and args.merge:
        results["revision"] = ""  # a merge measures nothing itself
    before = json.loads(args.before.read_text()) if args.before else None
    for earlier in args.merge:
        merge(results, json.loads(earlier.read_text()))
    workroot = args.workdir or Path(tempfile.mkdtemp(prefix="mds-bench-"))
    if args.profile is not None:
        os.environ[PROFILE_ENV] = str(args.profile.resolve())
    stem = args.name or ("quick" if args.quick else "full")

    def checkpoint() -> list[Path]:
        # Written after every phase, so a long run that fails late keeps what it measured.
        results["machine"]["load_average_at_end"] = list(os.getloadavg())
        results["total_seconds"] = round(time.monotonic() - started, 1)
        return write_results(results, args.out, stem, before)

    for name in profile["modes"]:
        mode = _mode(name, args)
        results["modes"][mode.name] = mode.describe()
        if "full-copy" in only or only & {"incremental", "conflicts"}:
            for volume in profile["volumes"][name]:
                phases = only if volume < profile["copy_only_from"] else only - {"incremental", "conflicts"}
                run_sync_scenarios(workroot, mode, volume, profile, phases, results["scenarios"], checkpoint)
        if "peers" in only:
            for leads in profile["peer_leads"]:
                start = datetime.fromisoformat(profile["peer_start"]).replace(tzinfo=UTC)
                results["peers"].append(
                    peers.compare(workroot / f"peers-{mode.name}-{leads}", mode, leads, start)
                )
                checkpoint()
        if "dataverse-peer" in only:
            for leads in profile["peer_leads"]:
                results["peers"].append(
                    peers.compare_dataverse(workroot / f"dv-{mode.name}-{leads}", mode, leads)
                )
                checkpoint()
        if "trickle" in only and mode.enforced:  # issue 19 measures it with the limits on
            results["trickle"].append(run_trickle(workroot, mode, profile))
            checkpoint()
    if "transform" in only:
        results["transform"] = [transform_rate(rows) for rows in profile["transform_rows"]]
    if "activities" in only:
        results["activities"] = [f for n in profile["activities"] for f in activities_rate(n)]
    paths = checkpoint()
    sys.stdout.write("".join(f"wrote {p}\n" for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

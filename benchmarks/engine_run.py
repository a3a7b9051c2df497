"""Issue 18's engine benchmark: this checkout beside an earlier commit, in one run.

Usage::

    python -m benchmarks.engine_run --before 0e003f5           # make bench-engine BEFORE=0e003f5
    python -m benchmarks.engine_run --before HEAD~1 --parts transform --transform-rows 20000

Each part is one ``python -m benchmarks.run`` process with the limits off:

* ``copy-1m``: the 1,000,000-lead full copy under ``airflow standalone`` (per-task peaks);
* ``copy-100k``: the 100,000-lead full copy;
* ``incremental``: a 30,000-lead copy, its echo runs and an incremental run of 10,000 changes
  per side;
* ``transform``: the pandas transform at 200,000 and 1,000,000 rows on one core.

The earlier commit is checked out in a temporary git worktree and run with this virtualenv.
The two revisions take turns part by part (the earlier one first), so both meet the same
machine load. The earlier commit's parts are merged into one results dict, then this
checkout's into ``<out>/<name>.json`` / ``.md`` / ``-throughput.png`` with
``--before``: the JSON keeps both revisions, the machine load of every part and issue 18's
targets beside each other (:mod:`benchmarks.engine_targets`), from which the README's table is
printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.run import RESULTS_DIR
from tests.support.emulator_procs import PROJECT_DIR

log = logging.getLogger(__name__)

PARTS: dict[str, list[str]] = {
    "copy-1m": ["--only", "full-copy", "--modes", "off", "--volumes", "1000000"],
    "copy-100k": ["--only", "full-copy", "--modes", "off", "--volumes", "100000"],
    "incremental": [
        "--only", "full-copy", "incremental", "--modes", "off", "--volumes", "30000", "--changes", "10000",
    ],
    "transform": ["--only", "transform"],
}  # fmt: skip


def _env(tree: Path) -> dict[str, str]:
    """A benchmark process's environment for the project checked out at ``tree``."""
    path = os.pathsep.join(str(tree / p) for p in ("include", "plugins", "."))
    env = {**os.environ, "PYTHONPATH": path, "MDS_PROJECT_DIR": str(tree)}
    env.pop("MDS_BENCH_COMMIT", None)  # each tree's own ``git describe`` names its revision
    return env


def _bench(tree: Path, argv: list[str]) -> None:
    """Run ``python -m benchmarks.run argv`` in ``tree`` with this interpreter; raise on failure."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *argv], cwd=tree, env=_env(tree), check=False
    )
    log.info("%s: benchmarks.run %s: %.0f s", tree.name, " ".join(argv), time.monotonic() - started)
    if proc.returncode != 0:
        raise SystemExit(f"benchmarks.run {' '.join(argv)} failed in {tree} (exit {proc.returncode})")


def main(argv: list[str] | None = None) -> int:
    """Run the parts for both revisions and write the merged results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--transform-rows", dest="transform_rows", type=int, nargs="+")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("--name", default="engine", help="results file stem")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="mds-engine-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    earlier = work / "before-tree"
    subprocess.run(
        ["git", "worktree", "add", "--force", "--detach", str(earlier), args.before],
        cwd=PROJECT_DIR,
        check=True,
    )
    trees = {"before": earlier, "now": PROJECT_DIR}
    extra = ["--transform-rows", *map(str, args.transform_rows)] if args.transform_rows else []
    written: dict[str, list[Path]] = {"before": [], "now": []}
    try:
        for part in args.parts:
            for side, tree in trees.items():
                name = f"{side}-{part}"
                where = ["--out", str(work / "parts"), "--name", name, "--workdir", str(work / name)]
                _bench(tree, [*PARTS[part], *extra, *where])
                shutil.rmtree(work / name, ignore_errors=True)  # staged data: GBs at 1M leads
                written[side].append(work / "parts" / f"{name}.json")
        merged = [str(p) for p in written["before"]]
        _bench(PROJECT_DIR, ["--only", "--merge", *merged, "--out", str(work), "--name", "before"])
        where = ["--before", str(work / "before.json"), "--out", str(args.out), "--name", args.name]
        _bench(PROJECT_DIR, ["--only", "--merge", *map(str, written["now"]), *where])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(earlier)], cwd=PROJECT_DIR, check=False)
    sys.stdout.write(f"wrote {args.out / args.name}.json (before: {work / 'before.json'})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

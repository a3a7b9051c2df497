"""Child process of the benchmark: run one DAG with ``dag.test()`` and write what happened as JSON.

Usage: ``python -m benchmarks.dag_child <dag file> <dag id> <out.json>``

The parent (:mod:`benchmarks.harness`) samples this process's memory; the JSON gives it the
run's state, its duration and each task instance's start and end (epoch seconds) so that samples
can be attributed to tasks, plus this process's own peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _epoch(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def main(argv: list[str]) -> int:
    """Run the DAG and write the JSON report; exit 0 even when the run failed (the JSON says so)."""
    dag_file, dag_id, out = argv
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    bag = DagBag(dag_folder=dag_file)
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    start = time.monotonic()
    run = dag.test()
    seconds = time.monotonic() - start
    with create_session() as session:
        rows = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        ).all()
        tasks = [
            {
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "state": str(ti.state),
                "start": _epoch(ti.start_date),
                "end": _epoch(ti.end_date),
                "seconds": round(ti.duration, 3) if ti.duration is not None else None,
            }
            for ti in rows
        ]
    tasks.sort(key=lambda t: (t["start"] or 0.0, t["map_index"]))
    report = {
        "dag_id": dag_id,
        "run_id": run.run_id,
        "state": str(run.state),
        "run_seconds": seconds,
        "tasks": tasks,
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

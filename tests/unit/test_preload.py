"""The task modules are imported before tasks are forked, in the scheduler and Celery workers only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crm_sync.localenv import airflow_env
from crm_sync.preload import forks_tasks, task_module_names, warm


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["airflow", "scheduler"], True),
        (["airflow", "scheduler", "--skip-serve-logs"], True),
        (["airflow", "celery", "worker", "--concurrency", "2"], True),
        (["airflow", "--verbose", "celery", "worker"], True),
        (["airflow", "celery", "flower"], False),
        (["airflow", "api-server"], False),
        (["airflow", "dag-processor"], False),
        (["airflow", "standalone"], False),
        (["airflow", "connections", "import", "scheduler"], False),
        (["pytest"], False),
        (["airflow"], False),
    ],
)
def test_only_the_processes_that_fork_tasks_preload(argv: list[str], expected: bool) -> None:
    assert forks_tasks(argv) is expected


def test_module_list_walks_the_packages_and_leaves_entry_points_out() -> None:
    names = task_module_names()
    assert {
        "crm_sync.tasks.sync",
        "crm_sync.engine.full_copy.units",
        "crm_sync_hooks.marketo",
        "pandas",
    } <= set(names)
    assert not [name for name in names if name.endswith("__main__") or ".migrations" in name]


def test_warm_does_nothing_outside_a_forking_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert warm(["airflow", "api-server"]) == []
    monkeypatch.setenv("MDS_PRELOAD_TASK_MODULES", "0")
    assert warm(["airflow", "scheduler"]) == []


_PROBE = """
import json, sys
sys.argv = {argv!r}
import airflow.settings
print(json.dumps({{
    "engine": "crm_sync.tasks.sync" in sys.modules,
    "pandas": "pandas" in sys.modules,
    "leaked": [n for n in ("warm", "forks_tasks") if hasattr(airflow.settings, n)],
}}))
"""


@pytest.mark.parametrize(
    ("argv", "loaded"), [(["airflow", "scheduler"], True), (["airflow", "api-server"], False)]
)
def test_airflow_imports_the_local_settings_and_preloads_in_the_scheduler(
    argv: list[str], loaded: bool, tmp_path: Path
) -> None:
    env = {**os.environ, **airflow_env(tmp_path)}
    env.pop("MDS_PRELOAD_TASK_MODULES", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"engine": loaded, "pandas": loaded, "leaked": []}

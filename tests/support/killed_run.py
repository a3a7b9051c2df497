"""Run a DAG in an ``airflow dags test`` process and SIGKILL its process group at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

AIRFLOW = Path(sys.executable).with_name("airflow")


def kill_dag_test_when(
    dag_id: str, ready: Callable[[], bool], log_file: Path, deadline_s: float, waiting_for: str
) -> None:
    """Start ``airflow dags test dag_id`` and SIGKILL the whole process group once ``ready()``.

    Fails the test, naming ``waiting_for`` (what ``ready()`` checks), if the run ends first or
    ``ready()`` never holds within ``deadline_s``.
    """
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(AIRFLOW), "dags", "test", dag_id],
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole below
        )
    try:
        deadline = time.monotonic() + deadline_s
        while not ready():
            if proc.poll() is not None:
                tail = log_file.read_text()[-4000:]
                pytest.fail(f"{dag_id} ended ({proc.returncode}) before {waiting_for}:\n{tail}")
            if time.monotonic() > deadline:
                tail = log_file.read_text()[-4000:]
                pytest.fail(f"{dag_id}: not {waiting_for} within {deadline_s} s; its log ends:\n{tail}")
            time.sleep(0.1)  # each look is an HTTPS call to an emulator: ten a second is plenty
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run was killed, not finished"

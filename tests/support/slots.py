"""A limit on how many tests run a whole Airflow stack at once, across pytest-xdist workers.

A test that starts its own Airflow (``airflow standalone``, or the Celery stack of
``scripts/prod_stack.py``) runs four to eight processes of its own. On a 2-core machine two such
stacks beside the other workers' tests are as many as stay responsive: with four at once, API
servers stopped answering their own schedulers in time. Each stack test therefore holds one of
``MDS_TEST_STACK_SLOTS`` (default 2) slots while its stack runs: an exclusive ``flock`` on one of
that many files in a folder the whole test session shares (``tests/conftest.py`` makes it before
the workers start). The kernel drops a lock when its process dies, so a crashed worker frees
its slot.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SLOTS_DIR_VAR = "MDS_TEST_SLOTS_DIR"
SLOTS_VAR = "MDS_TEST_STACK_SLOTS"
DEFAULT_SLOTS = 2
# pytest-timeout of a stack test: its run, plus the wait for a slot (up to stack_slot's 900 s).
STACK_TIMEOUT_S = 1500


def stack_marks(minutes: float) -> list[pytest.MarkDecorator]:
    """The marks of a module whose tests run their own Airflow stack.

    ``stack(minutes=...)``: how long the module takes under the full suite, with which
    ``tests/conftest.py`` balances the two lanes of stack tests; and a timeout that also covers
    the wait for a slot.
    """
    return [pytest.mark.stack(minutes=minutes), pytest.mark.timeout(STACK_TIMEOUT_S)]


def slot_count() -> int:
    """How many stack slots the session has (``MDS_TEST_STACK_SLOTS``, at least one)."""
    return max(1, int(os.environ.get(SLOTS_VAR, str(DEFAULT_SLOTS))))


@contextlib.contextmanager
def stack_slot(what: str, timeout_s: float = 900.0) -> Iterator[int]:
    """Hold one stack slot for the ``with`` block; yields its number.

    Fails the test, naming ``what`` and how long it waited, if no slot frees within ``timeout_s``.
    """
    folder = Path(os.environ.get(SLOTS_DIR_VAR) or Path.home() / ".cache" / "mds-test-slots")
    folder.mkdir(parents=True, exist_ok=True)
    count = slot_count()
    began = time.monotonic()
    while True:
        for number in range(count):
            handle = (folder / f"stack-{number}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield number
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if time.monotonic() - began > timeout_s:
            pytest.fail(f"{what}: none of {count} Airflow stack slots in {folder} freed in {timeout_s:.0f} s")
        time.sleep(0.5)

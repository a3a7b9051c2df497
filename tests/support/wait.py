"""Waiting in tests: for a condition, with a deadline, saying what was awaited when it times out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(what: str, timeout_s: float, probe: Callable[[], T], interval_s: float = 1.0) -> T:
    """Call ``probe`` until it returns something truthy and return that.

    Fails the test naming ``what`` (and the last value seen) once ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}; last seen: {result!r}")
        time.sleep(interval_s)

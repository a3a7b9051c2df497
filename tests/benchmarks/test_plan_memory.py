"""The full copy's plan holds a staged plan at a time, never the partition: its peak memory does
not grow with the partition.

``benchmarks/plan_bench.py`` plans a staged extract of synthetic leads in a fresh child process
(the plan a ``lead.plan`` task runs: transform, matching, load units) and reports the process's
peak RSS. The same plan over 8 times the rows must peak within one chunk's worth of memory of
the small one. Before the units were streamed, 20,000 leads peaked at about 450 MB and 50,000
at about 640 MB: a bulk unit and the partition's lookups were held whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crm_sync.localenv import python_path
from tests.support.emulator_procs import PROJECT_DIR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SMALL = 20_000
LARGE = 8 * SMALL
# One staged plan (5,000 rows: its ops, links and parsed payloads) and the parts of the units
# it feeds take about 25 MB here; the margin covers allocator noise.
CHUNK_MB = 25
MARGIN_MB = 25


def _plan(rows: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": python_path()}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.plan_bench", "--rows", str(rows), "--json"],
        env=env,
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["records_planned"] == rows  # every lead planned, none lost or doubled
    return figures


def test_plan_memory_follows_the_chunk_not_the_partition() -> None:
    small, large = _plan(SMALL), _plan(LARGE)
    assert large["units"] > small["units"]  # the large plan really filled several units
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    assert growth < CHUNK_MB + MARGIN_MB, (small, large)

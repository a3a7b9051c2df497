"""The per-task memory sampler of the benchmark finds task processes by title and keeps their peak.

A real child process takes the title Airflow's task runner gives itself, allocates a known
amount, frees it and waits; the sampler must report a peak above that amount: the kernel's
high-water mark, not a sample that could miss the moment.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

from benchmarks.standalone import TaskProcessSampler

CHILD = """
import sys, time
from setproctitle import setproctitle
setproctitle("airflow worker -- " + sys.argv[1])
block = bytearray(int(sys.argv[2]) * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1  # touch every page so it is resident
del block
print("ready", flush=True)
time.sleep(30)
"""


def test_peak_of_each_task_process_is_its_high_water_mark() -> None:
    ti_id = str(uuid.uuid4())
    child = subprocess.Popen([sys.executable, "-c", CHILD, ti_id, "150"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"  # allocated and freed before sampling
        with TaskProcessSampler(interval=0.05) as sampler:
            deadline = time.monotonic() + 10
            while ti_id.replace("-", "") not in sampler.peaks_kb and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    peak_mb = sampler.peaks_kb[ti_id.replace("-", "")] / 1024
    assert 150 < peak_mb < 400, peak_mb

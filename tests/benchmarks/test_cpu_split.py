"""The benchmarks' CPU split on real processes: a busy stand-in emulator, an idle one, this machine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from benchmarks.harness import cpu_snapshot, cpu_split
from benchmarks.report import cpu_table
from tests.support.emulator_procs import RunningEmulator

# One CPU second of work, then alive and idle until killed (an emulator between requests).
SPIN = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass\ntime.sleep(60)\n"
IDLE = "import time\ntime.sleep(60)\n"


def _stand_in(side: str, code: str, tmp_path: Path) -> RunningEmulator:
    proc = subprocess.Popen([sys.executable, "-c", code])
    return RunningEmulator(side, "http://127.0.0.1:1", None, tmp_path / f"{side}.db", proc, tmp_path / "log")


@pytest.fixture
def emulators(tmp_path: Path) -> Iterator[tuple[RunningEmulator, RunningEmulator]]:
    pair = (_stand_in("marketo", SPIN, tmp_path), _stand_in("dynamics", IDLE, tmp_path))
    yield pair
    for emu in pair:
        emu.process.kill()
        emu.process.wait()


def test_an_emulators_cpu_is_counted_apart_from_the_rest(
    emulators: tuple[RunningEmulator, RunningEmulator],
) -> None:
    busy, idle = emulators
    before = cpu_snapshot([busy, idle])
    deadline = time.monotonic() + 30
    while sum(psutil.Process(busy.process.pid).cpu_times()[:2]) < 0.98 and time.monotonic() < deadline:
        time.sleep(0.05)  # until the spinner's CPU second (user + system) is spent
    after = cpu_snapshot([busy, idle])
    split = cpu_split(before, after, psutil.cpu_count() or 1)

    assert split["capacity_s"] == round((psutil.cpu_count() or 1) * (after.at - before.at), 2)
    assert 0.8 <= split["marketo_emulator_s"] <= 1.2, split
    assert split["dynamics_emulator_s"] < 0.2, split
    assert split["busy_s"] >= split["marketo_emulator_s"] - 0.1, split  # the spinner ran on this machine
    emulators_s = split["marketo_emulator_s"] + split["dynamics_emulator_s"]
    assert split["rest_s"] == pytest.approx(split["busy_s"] - emulators_s, abs=0.15)


def test_the_cpu_table_shows_each_scenario_that_recorded_a_split() -> None:
    cpu = {"capacity_s": 200.0, "busy_s": 150.0, "marketo_emulator_s": 60.0, "dynamics_emulator_s": 20.0,
           "rest_s": 70.0, "steal_s": 5.0}  # fmt: skip
    items = [
        {"scenario": "full copy 1,000 leads", "limits": "limits-off", "wall_s": 100.0, "cpu": cpu},
        {"scenario": "older run", "limits": "limits-off", "wall_s": 9.0},
    ]
    rows = cpu_table(items)
    assert rows[2:] == [
        "| full copy 1,000 leads | limits-off | 100.0 | 200.0 | 150.0 (0.75) | 60.0 | 20.0 | 70.0 | 5.0 |"
    ]
    assert cpu_table(items[1:]) == []

"""The trickle scenario (issue 19) at a tiny size: a real stack, real changes, the results on disk.

``python -m benchmarks.run --only trickle`` runs on its own ``airflow standalone`` (scheduler,
triggerer) and both emulators with their limits on: two changes a side, a short idle span, one
change after it. The checks are on the shape of the JSON and Markdown and on the figures being
the ones the observations give (arrivals never above changes, misses counted, percentiles in
order, calls per day and per hour the counted calls scaled by the measured span), never on any
figure being fast: ``make bench`` prints those.

To finish in a few minutes the stack runs only ``sync_lead``, on a one-minute schedule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from benchmarks.harness import AUTH_MARKERS
from benchmarks.scenarios import _percentile
from crm_sync.localenv import python_path
from tests.support.slots import stack_marks, stack_slot

pytestmark = [pytest.mark.slow, *stack_marks(minutes=5)]

IDLE_MINUTES = 0.5
CHANGE_MINUTES = 0.35  # two changes a side, 10 s apart


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    root = tmp_path_factory.mktemp("trickle")
    env = {**os.environ, "PYTHONPATH": python_path()}
    argv = [
        sys.executable, "-m", "benchmarks.run", "--quick", "--modes", "on", "--only", "trickle",
        "--trickle-minutes", str(CHANGE_MINUTES), "--trickle-idle-minutes", str(IDLE_MINUTES),
        "--trickle-idle-settle", "0",
        "--trickle-leads", "60", "--trickle-schedule", "* * * * *", "--trickle-dags", "sync_lead",
        "--trickle-drain", "75", "--trickle-after-idle-wait", "75", "--trickle-warmup", "90",
        "--out", str(root / "out"), "--name", "smoke", "--workdir", str(root / "work"),
    ]  # fmt: skip
    with stack_slot("tests/benchmarks/test_trickle_smoke.py"):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = root / "out"
    return json.loads((out / "smoke.json").read_text()), (out / "smoke.md").read_text()


def _item(results: tuple[dict[str, Any], str]) -> dict[str, Any]:
    data, _ = results
    (item,) = data["trickle"]
    assert "error" not in item, item.get("error")
    return item


@pytest.mark.parametrize("direction", ["d2m", "m2d"])
def test_latency_figures_come_from_the_changes_seen(
    results: tuple[dict[str, Any], str], direction: str
) -> None:
    item = _item(results)
    assert item["settings"]["changes_per_side"] == 2
    d = item[direction]
    assert d["changes"] == 2
    assert 0 <= d["arrived"] <= d["changes"]
    assert d["missed"] == d["changes"] - d["arrived"]
    lat = d["latencies_s"]
    assert len(lat) == d["arrived"]
    assert all(x >= 0 for x in lat)
    if lat:
        assert d["latency_p50_s"] == _percentile(lat, 0.5)
        assert d["latency_p50_s"] <= d["latency_p95_s"] <= d["latency_max_s"] == max(lat)
    else:
        assert d["latency_p50_s"] is d["latency_p95_s"] is d["latency_max_s"] is None
    assert d["met"] == (d["missed"] == 0 and d["latency_p95_s"] <= d["target_p95_s"])
    # A miss seen on the look after the idle span stays a miss; its latency is reported apart.
    assert 0 <= d["missed_seen_after_idle"] == len(d["missed_latencies_s"]) <= d["missed"]


def test_something_arrived(results: tuple[dict[str, Any], str]) -> None:
    # On a one-minute schedule at least one of the five changes reaches the other side in time;
    # none at all means the scenario watches the wrong records.
    item = _item(results)
    after = [v for v in item["after_idle"]["latency_s"].values() if v is not None]
    assert item["d2m"]["arrived"] + item["m2d"]["arrived"] + len(after) >= 1


def test_idle_cost_is_the_counted_calls_scaled_to_a_day(results: tuple[dict[str, Any], str]) -> None:
    idle = _item(results)["idle"]
    assert abs(idle["span_s"] - IDLE_MINUTES * 60) < 15
    assert idle["own_calls"] == {"marketo": 0, "dynamics": 0}  # the benchmark is silent while idle
    assert 0 <= idle["changes_pending_at_start"] <= 4
    assert idle["calls"]["marketo"] >= 0
    assert idle["calls"]["dynamics"] >= 0
    assert idle["idle_calls_per_day"] == round(idle["calls"]["marketo"] * 86_400 / idle["span_s"], 1)
    assert idle["idle_calls_per_day_dynamics"] == round(
        idle["calls"]["dynamics"] * 86_400 / idle["span_s"], 1
    )
    api_routes = {r: n for r, n in idle["marketo_routes"].items() if not any(m in r for m in AUTH_MARKERS)}
    assert sum(api_routes.values()) == idle["calls"]["marketo"]
    assert sum(idle["marketo_routes"].values()) - sum(api_routes.values()) == idle["token_calls"]["marketo"]
    assert idle["met"] == (idle["idle_calls_per_day"] <= idle["target_calls_per_day"])


def test_busy_calls_per_hour_and_the_benchmarks_own_calls(results: tuple[dict[str, Any], str]) -> None:
    item = _item(results)
    busy, phases = item["busy"], item["phases_s"]
    # Busy: from before the first change until every change arrived or the drain (75 s) ended.
    assert busy["span_s"] == pytest.approx(phases["change"] + phases["drain"], abs=0.2)
    assert 10 <= busy["span_s"] <= 10 + 75 + 30
    for system in ("marketo", "dynamics"):
        assert busy["calls"][system] >= 0
        expected = round(busy["calls"][system] * 3600 / busy["span_s"], 1)
        assert busy["calls_per_hour_busy"][system] == expected
        # Each change is one write on its side; the polls of the other side add more.
        assert busy["own_calls"][system] >= 2
    # A change that arrived in the span was written by the sync in it: calls beyond the benchmark's.
    if item["d2m"]["arrived"]:
        assert busy["calls"]["marketo"] >= 1
    if item["m2d"]["arrived"]:
        assert busy["calls"]["dynamics"] >= 1


def test_first_change_after_idle_and_empty_runs(results: tuple[dict[str, Any], str]) -> None:
    item = _item(results)
    after = item["after_idle"]
    per = after["latency_s"]
    assert set(per) == {"d2m", "m2d"}
    if None in per.values():
        assert after["first_change_after_idle_s"] is None
    else:
        assert after["first_change_after_idle_s"] == max(per.values()) >= 0
    empty = item["empty_runs"]
    assert empty["empty_runs"] + empty["runs_with_changes"] == empty["runs"]
    assert 0 <= empty["without_ledger"] <= empty["empty_runs"]
    assert 0 <= empty["runs_writing_nothing"] <= empty["runs_with_changes"]
    assert len(empty["walls_s"]) == empty["empty_runs"]
    if empty["walls_s"]:
        assert 0 < empty["wall_median_s"] <= empty["wall_max_s"] == max(empty["walls_s"])
    assert item["dags"] == ["sync_lead"]


def test_report_shows_the_trickle_and_its_targets(results: tuple[dict[str, Any], str]) -> None:
    data, markdown = results
    item = _item(results)
    assert data["settings"]["trickle_minutes"] == CHANGE_MINUTES
    assert data["settings"]["trickle_idle_minutes"] == IDLE_MINUTES
    assert "## Trickle (issue 19)" in markdown
    assert "## Targets (issue 19)" in markdown
    assert f"| trickle {CHANGE_MINUTES:g} min + {IDLE_MINUTES:g} min idle | limits-on |" in markdown
    names = [t["target"] for t in item["targets"]]
    assert any(n.startswith("D→M") and "p95" in n for n in names)
    assert any(n.startswith("M→D") and "p95" in n for n in names)
    assert any(n.startswith("idle cost") for n in names)
    assert any(n.startswith("first change after idle") for n in names)
    assert any(n.startswith("empty-run wall time") for n in names)

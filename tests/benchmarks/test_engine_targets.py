"""Issue 18's targets as ``benchmarks.run --before`` writes them: figures read from the
scenarios of a results dict, beside an earlier commit's, in the JSON, the Markdown and the
README's table.

The results here are hand-built in the shape ``benchmarks.run`` writes (no emulator runs): the
figures are what is checked, not any timing of this machine.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.engine_targets import engine_targets, main
from benchmarks.report import engine_table, write_results

RECORDED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "engine.json"


def _copy(
    volume: int, wall: float, peak: float, plan_s: float, m_ratio: float, d_ratio: float
) -> dict[str, Any]:
    return {
        "scenario": f"full copy {volume:,} leads",
        "limits": "limits-off",
        "volume": volume,
        "wall_s": wall,
        "peak_rss_mb": peak,
        "records_written": volume,
        "marketo": {"ratio": m_ratio},
        "dynamics": {"ratio": d_ratio},
        "tasks": [
            {"task_id": "lead.extract", "seconds": 10.0},
            {"task_id": "lead.plan", "seconds": plan_s},
        ],
    }


def _results(revision: str, big_wall: float, plan_s: float, transform: list[int]) -> dict[str, Any]:
    return {
        "generated_at": "2026-12-07T20:00:00+00:00",
        "profile": "full",
        "revision": revision,
        "machine": {"cpus": 2, "load_average_at_start": [1.0, 1.0, 1.0], "python": "3.11"},
        "modes": {},
        "scenarios": [
            _copy(1_000_000, big_wall, 390.0, plan_s, 1.03, 1.01),
            _copy(100_000, 60.0, 360.0, 20.0, 1.06, 1.12),
            {
                "scenario": "incremental, 10,000 changes per side",
                "limits": "limits-off",
                "changes": 10_000,
                "marketo": {"ratio": 1.0},
                "dynamics": {"ratio": 1.154},
            },
            {"scenario": "full copy 100,000 leads", "limits": "limits-on", "volume": 100_000, "error": "x"},
        ],
        "peers": [],
        "transform": [
            {"rows": n, "records_per_s_per_core": r}
            for n, r in zip((200_000, 1_000_000), transform, strict=False)
        ],
        "activities": [],
        "trickle": [],
    }


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in items}


def test_each_target_is_read_from_its_scenario_beside_the_earlier_run() -> None:
    now = _results("new", big_wall=500.0, plan_s=250.0, transform=[380_000, 190_000])
    before = _results("old", big_wall=800.0, plan_s=400.0, transform=[370_000, 360_000])

    items = _by_name(engine_targets(now, before))

    copy = items["1,000,000-lead full copy, limits off"]
    assert (copy["now"], copy["before"], copy["ratio"], copy["met"]) == (500.0, 800.0, 0.625, False)
    assert copy["bound"] == "≤ 400 s"
    assert items["100,000-lead full copy, limits off"]["met"] is False  # 60 s > 45 s
    growth = items["time(1M) / time(100k)"]
    assert growth["now"] == pytest.approx(500 / 60)
    assert growth["met"] is True
    assert items["largest task's peak RSS at 1M"]["now"] == 390.0
    assert items["largest task at 1M / at 100k"]["now"] == pytest.approx(390 / 360)
    plan = items["plan at 1M, rows/s (1M over lead.plan's span)"]
    assert (plan["now"], plan["before"], plan["met"]) == (4000.0, 2500.0, False)
    transform = items["transform, rows/s per core (lowest size)"]
    assert (transform["now"], transform["met"]) == (190_000.0, False)  # the slower size counts
    assert items["full copy calls / minimum (worse side)"]["now"] == 1.03
    incremental = items["incremental 10,000 changes: calls / minimum (worse side)"]
    assert (incremental["now"], incremental["met"]) == (1.154, True)


def test_a_target_whose_scenario_did_not_run_is_not_measured() -> None:
    results = _results("new", big_wall=500.0, plan_s=250.0, transform=[380_000, 390_000])
    results["scenarios"] = [s for s in results["scenarios"] if s.get("volume") != 1_000_000]

    items = _by_name(engine_targets(results))

    assert items["1,000,000-lead full copy, limits off"]["met"] is None
    assert items["plan at 1M, rows/s (1M over lead.plan's span)"]["now"] is None
    assert items["transform, rows/s per core (lowest size)"]["met"] is True
    assert all(t["before"] is None and t["ratio"] is None for t in items.values())


def test_written_results_keep_the_earlier_run_and_the_readme_table_comes_from_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A real results file (the engine run kept in the repository), beside a copy of itself
    # whose 1M copy took 900 s.
    now = json.loads(RECORDED.read_text())
    big = next(s for s in now["scenarios"] if s["scenario"] == "full copy 1,000,000 leads")
    before = copy.deepcopy(now)
    before["revision"] = "older"
    next(s for s in before["scenarios"] if s["scenario"] == big["scenario"])["runs"][0]["wall_s"] = 900.0

    json_path, md_path, _ = write_results(now, tmp_path, "engine", before)

    written = json.loads(json_path.read_text())
    assert written["before"]["revision"] == "older"
    assert written["before"]["machine"] == before["machine"]
    wall = _by_name(written["engine_targets"])["1,000,000-lead full copy, limits off"]
    assert (wall["now"], wall["before"]) == (big["wall_s"], 900.0)
    assert wall["ratio"] == round(big["wall_s"] / 900.0, 3)
    markdown = md_path.read_text()
    assert "## Engine targets (issue 18)" in markdown
    shown = f"{big['wall_s']:,.0f}" if big["wall_s"] >= 1000 else f"{big['wall_s']:,.1f}"
    row = f"| 1,000,000-lead full copy, limits off | ≤ 400 s | 900.0 | {shown} |"
    assert row in markdown

    assert main([str(json_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == engine_table(written)
    assert printed[0].startswith(f"| target | bound | before (`older`) | now (`{now['revision']}`) |")


def test_results_without_any_engine_figure_print_no_table(tmp_path: Path) -> None:
    results = _results("new", big_wall=500.0, plan_s=250.0, transform=[])
    results["scenarios"] = []
    path = tmp_path / "quick.json"
    results["engine_targets"] = engine_targets(results)
    path.write_text(json.dumps(results))

    assert engine_table(results) == []
    assert main([str(path)]) == 1


def test_the_readme_shows_the_table_of_the_recorded_engine_run() -> None:
    recorded = json.loads(RECORDED.read_text())
    lines = engine_table(recorded)

    assert lines, "benchmarks/results/engine.json holds no engine targets"
    readme = (RECORDED.parents[2] / "README.md").read_text()
    assert "\n".join(lines) in readme, "regenerate it: python -m benchmarks.engine_targets " + str(RECORDED)

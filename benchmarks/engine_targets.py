"""Issue 18's engine targets, read from a benchmark results dict, beside an earlier commit's.

The figures come from the scenarios ``python -m benchmarks.run`` measured (the limits-off full
copies, the task spans of their ``lead.plan``, the 10,000-change incremental run, the
transform); a target whose scenario is not in the run is "not measured". ``--before FILE`` of
``benchmarks.run`` gives the earlier commit's results (the same phases, run just before on the
same machine): each target then shows both figures and their ratio.

Usage (the README's table)::

    python -m benchmarks.engine_targets benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

BIG = 1_000_000  # leads of the large full copy
SMALL = 100_000  # leads of the small one
CHANGES = 10_000  # changes per side of the incremental run


@dataclass(frozen=True)
class Target:
    """One target: how to read its figure from a results dict, and its bound."""

    name: str
    unit: str
    bound: float
    at_most: bool  # the figure must stay at or under the bound (else: at or over)
    figure: Callable[[dict[str, Any]], float | None]


def _copy(results: dict[str, Any], volume: int) -> dict[str, Any] | None:
    return next(
        (
            s
            for s in results.get("scenarios", [])
            if s["scenario"].startswith("full copy")
            and s.get("volume") == volume
            and s.get("limits") == "limits-off"
            and "error" not in s
        ),
        None,
    )


def _wall(volume: int) -> Callable[[dict[str, Any]], float | None]:
    def figure(results: dict[str, Any]) -> float | None:
        copy = _copy(results, volume)
        return None if copy is None else float(copy["wall_s"])

    return figure


def _quotient(
    top: Callable[[dict[str, Any]], float | None], bottom: Callable[[dict[str, Any]], float | None]
) -> Callable[[dict[str, Any]], float | None]:
    def figure(results: dict[str, Any]) -> float | None:
        above, below = top(results), bottom(results)
        return None if above is None or not below else above / below

    return figure


def _peak(volume: int) -> Callable[[dict[str, Any]], float | None]:
    def figure(results: dict[str, Any]) -> float | None:
        copy = _copy(results, volume)
        return None if copy is None or copy.get("peak_rss_mb") is None else float(copy["peak_rss_mb"])

    return figure


def _plan_rate(results: dict[str, Any]) -> float | None:
    """Leads planned per second by the 1M copy's ``lead.plan`` task (one process, one core)."""
    copy = _copy(results, BIG)
    plan = next((t for t in (copy or {}).get("tasks", []) if t["task_id"] == "lead.plan"), None)
    return None if plan is None or not plan.get("seconds") else BIG / float(plan["seconds"])


def _transform_rate(results: dict[str, Any]) -> float | None:
    rates = [t["records_per_s_per_core"] for t in results.get("transform", [])]
    return float(min(rates)) if rates else None


def _copy_calls(results: dict[str, Any]) -> float | None:
    copy = _copy(results, BIG)
    if copy is None:
        return None
    return max(float(copy[side]["ratio"]) for side in ("marketo", "dynamics"))


def _incremental_calls(results: dict[str, Any]) -> float | None:
    runs = [
        s
        for s in results.get("scenarios", [])
        if s.get("changes") == CHANGES and s["scenario"].startswith("incremental") and "error" not in s
    ]
    ratios = [float(s[side]["ratio"]) for s in runs for side in ("marketo", "dynamics")]
    return max(ratios) if ratios else None


TARGETS = (
    Target("1,000,000-lead full copy, limits off", "s", 400, True, _wall(BIG)),
    Target("100,000-lead full copy, limits off", "s", 45, True, _wall(SMALL)),
    Target("time(1M) / time(100k)", "×", 11, True, _quotient(_wall(BIG), _wall(SMALL))),
    Target("largest task's peak RSS at 1M", "MB", 400, True, _peak(BIG)),
    Target("largest task at 1M / at 100k", "×", 1.2, True, _quotient(_peak(BIG), _peak(SMALL))),
    Target("plan at 1M, rows/s (1M over lead.plan's span)", "rows/s", 50_000, False, _plan_rate),
    Target("transform, rows/s per core (lowest size)", "rows/s", 200_000, False, _transform_rate),
    Target("full copy calls / minimum (worse side)", "×", 1.05, True, _copy_calls),
    Target("incremental 10,000 changes: calls / minimum (worse side)", "×", 1.2, True, _incremental_calls),
)


def _met(target: Target, value: float | None) -> bool | None:
    if value is None:
        return None
    return value <= target.bound if target.at_most else value >= target.bound


def engine_targets(results: dict[str, Any], before: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each target's figure in ``results`` and in ``before`` (an earlier commit's results), the
    ratio now / before, and whether the figure now meets the target (None: not measured)."""
    out = []
    for target in TARGETS:
        now = target.figure(results)
        then = target.figure(before) if before is not None else None
        out.append(
            {
                "target": target.name,
                "bound": f"{'≤' if target.at_most else '≥'} {target.bound:,g}"
                + (target.unit if target.unit == "×" else f" {target.unit}"),
                "now": now,
                "before": then,
                "ratio": round(now / then, 3) if now is not None and then else None,
                "met": _met(target, now),
            }
        )
    return out


def before_summary(before: dict[str, Any]) -> dict[str, Any]:
    """What a results file keeps of the earlier run it is compared with."""
    return {
        "revision": before.get("revision", "unknown"),
        "generated_at": before.get("generated_at"),
        "machine": before.get("machine"),
        "parts": [{k: part.get(k) for k in ("generated_at", "machine")} for part in before.get("parts", [])],
    }


def main(argv: list[str] | None = None) -> int:
    """Print the engine targets table of a results JSON (for the README)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results JSON written by benchmarks.run")
    args = parser.parse_args(argv)
    from benchmarks.report import engine_table

    results = json.loads(args.results.read_text())
    lines = engine_table(results)
    if not lines:
        sys.stderr.write(f"{args.results} holds no engine targets (run benchmarks.run with --before)\n")
        return 1
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

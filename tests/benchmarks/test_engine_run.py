"""``benchmarks.engine_run`` end to end at a tiny size: the committed HEAD, checked out in a git
worktree, beside this checkout, through real ``benchmarks.run`` processes (the transform part
only: the full copies take minutes to hours and are ``make bench-engine``'s).

Checked: both revisions were measured and merged, each target keeps both figures and their
ratio, and the worktree is gone afterwards. No timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crm_sync.localenv import python_path
from tests.support.emulator_procs import PROJECT_DIR

pytestmark = pytest.mark.timeout(300)


def _git(*argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=PROJECT_DIR, capture_output=True, text=True, check=True).stdout


def test_the_transform_part_of_both_revisions_is_merged_with_the_targets_side_by_side(tmp_path: Path) -> None:
    try:
        head = _git("describe", "--always", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: engine_run checks the earlier commit out with git worktree")
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [
        sys.executable, "-m", "benchmarks.engine_run", "--before", "HEAD", "--parts", "transform",
        "--transform-rows", "3000", "--out", str(out), "--name", "engine", "--workdir", str(work),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": python_path()}
    proc = subprocess.run(
        argv, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=280, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = json.loads((out / "engine.json").read_text())
    assert results["before"]["revision"] == head
    assert results["revision"].removesuffix("-dirty") == head  # this checkout, at HEAD here
    before = json.loads((work / "before.json").read_text())
    assert [t["rows"] for t in before["transform"]] == [3000]
    assert [t["rows"] for t in results["transform"]] == [3000]
    transform = next(t for t in results["engine_targets"] if t["target"].startswith("transform"))
    assert transform["now"] == results["transform"][0]["records_per_s_per_core"]
    assert transform["before"] == before["transform"][0]["records_per_s_per_core"]
    assert transform["ratio"] == round(transform["now"] / transform["before"], 3)
    copy = next(t for t in results["engine_targets"] if t["target"].startswith("1,000,000"))
    assert copy["now"] is None  # not a part of this run
    assert copy["met"] is None
    assert "## Engine targets (issue 18)" in (out / "engine.md").read_text()
    assert str(work / "before-tree") not in _git("worktree", "list")

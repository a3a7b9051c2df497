"""The import contracts in pyproject.toml hold, and they fail the moment a forbidden import appears.

``make lint`` runs the same ``lint-imports``; these tests show both outcomes on a copy of the
packages, so a contract that could never fail would be caught here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def _copy_tree(tmp_path: Path) -> Path:
    """The packages the contracts name and pyproject.toml, in a folder of their own."""
    root = tmp_path / "house"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PROJECT / "include" / "crm_sync", root / "include" / "crm_sync", ignore=ignore)
    shutil.copytree(
        PROJECT / "plugins" / "crm_sync_hooks", root / "plugins" / "crm_sync_hooks", ignore=ignore
    )
    for package in ("emulators", "demo"):
        shutil.copytree(PROJECT / package, root / package, ignore=ignore)
    shutil.copy(PROJECT / "pyproject.toml", root / "pyproject.toml")
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("include", "plugins", "."))}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_contracts_hold(tmp_path: Path) -> None:
    done = _lint(_copy_tree(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # A floor reaching up: the state store importing the engine (inside a function: counted).
        ("include/crm_sync/state/db.py", "def _up() -> None:\n    import crm_sync.engine.load\n", "Floors"),
        # A circle between two siblings of the engine.
        ("include/crm_sync/engine/staging.py", "import crm_sync.engine.extract\n", "no import cycles"),
        ("plugins/crm_sync_hooks/results.py", "import crm_sync.config\n", "hooks import nothing"),
        ("include/crm_sync/config.py", "import emulators.common.tls\n", "never imports the emulators"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    root = _copy_tree(tmp_path)
    target = root / module
    target.write_text(target.read_text() + "\n\n" + line)

    done = _lint(root)

    assert done.returncode != 0, done.stdout
    assert f"{broken}" in done.stdout.split("Broken contracts", 1)[-1], done.stdout

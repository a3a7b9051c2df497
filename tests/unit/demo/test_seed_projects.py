"""The demo's seeded Dataverse projects all link a contact that reaches Marketo.

The ``new_project`` mapping requires the contact lookup, so a project without a synced contact
would stay a record error in the demo.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[3]


def test_every_seeded_project_links_a_contact_whose_sync_filter_is_not_no(tmp_path: Path) -> None:
    db = tmp_path / "dynamics.db"
    subprocess.run(
        [sys.executable, "-m", "emulators", "seed", "dynamics", "--db", str(db), "--scale", "2000"],
        check=True,
        cwd=PROJECT_DIR,
        capture_output=True,
    )
    with sqlite3.connect(db) as conn:
        projects = conn.execute("SELECT new_projectid, new_contactid FROM new_project").fetchall()
        flags = dict(conn.execute("SELECT contactid, new_synctomkto FROM contact").fetchall())
    assert len(projects) == 100
    without = [pid for pid, contact in projects if contact is None]
    assert without == []
    unknown = [pid for pid, contact in projects if contact not in flags]
    assert unknown == []
    excluded = [pid for pid, contact in projects if flags[contact] == 0]
    assert excluded == []
    # Both an unset and an explicit Yes filter occur among the linked contacts (only No excludes).
    assert {flags[contact] for _, contact in projects} == {None, 1}

"""The seeder: deterministic for a seed, different across seeds, proportions as documented."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from emulators.marketo.seed import seed


def _digest(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        h = hashlib.sha256()
        for table in ("leads", "objects"):
            for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):
                h.update(repr(row).encode())
    return h.hexdigest()


def test_same_seed_same_data_and_proportions(tmp_path: Path) -> None:
    seed(tmp_path / "a.db", seed=7, scale=4000)
    seed(tmp_path / "b.db", seed=7, scale=4000)
    seed(tmp_path / "c.db", seed=8, scale=4000)
    assert _digest(tmp_path / "a.db") == _digest(tmp_path / "b.db")
    assert _digest(tmp_path / "a.db") != _digest(tmp_path / "c.db")
    with sqlite3.connect(tmp_path / "a.db") as conn:
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM objects GROUP BY kind").fetchall())
        synced, bad_dates = conn.execute(
            "SELECT SUM(msdRecordId IS NOT NULL), SUM(updatedAt < createdAt) FROM leads"
        ).fetchone()
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert kinds == {"company": 200, "opportunity": 200, "opportunityrole": 200, "co.project_c": 400,
                     "salesperson": 3}  # fmt: skip
    assert 2000 < synced < 2800  # about 60 % carry the sync-owned fields
    assert bad_dates == 0
    assert {"ix_leads_email", "ix_leads_externalPersonId"} <= indexes  # rebuilt after the bulk load
    with sqlite3.connect(tmp_path / "a.db") as conn:
        unlinked = conn.execute(
            "SELECT COUNT(*) FROM objects o WHERE kind = 'co.project_c' AND NOT EXISTS"
            " (SELECT 1 FROM leads l WHERE l.id = json_extract(o.data, '$.leadID') AND l.msdType = 'Contact')"
        ).fetchone()[0]
    assert unlinked == 0  # every project links to a synced contact's Marketo lead id

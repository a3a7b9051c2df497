"""The seeder: deterministic, proportional, with every relationship the sync needs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from tests.support.emulator_procs import PROJECT_DIR


def _seed(db, seed=7, scale=400):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "emulators",
            "seed",
            "dynamics",
            "--db",
            str(db),
            "--seed",
            str(seed),
            "--scale",
            str(scale),
        ],
        check=True,
        cwd=PROJECT_DIR,
    )
    return sqlite3.connect(db)


def _dump(conn, table, order):
    return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a, b, c = _seed(tmp_path / "a.db"), _seed(tmp_path / "b.db"), _seed(tmp_path / "c.db", seed=8)
    for table, order in (("lead", "leadid"), ("contact", "contactid"), ("opportunity", "opportunityid")):
        assert _dump(a, table, order) == _dump(b, table, order)
    assert _dump(a, "lead", "leadid") != _dump(c, "lead", "leadid")


def test_proportions_relationships_and_sync_flags(tmp_path):
    db = _seed(tmp_path / "s.db", scale=1000)
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    assert one("SELECT COUNT(*) FROM lead") == 1000
    assert one("SELECT COUNT(*) FROM contact") == 500
    assert one("SELECT COUNT(*) FROM account") == 100
    assert one("SELECT COUNT(*) FROM opportunity") == 100
    assert one("SELECT COUNT(*) FROM new_project") == 50
    assert one("SELECT COUNT(*) FROM connection") == 100
    flags = dict(db.execute("SELECT COALESCE(new_synctomkto, -1), COUNT(*) FROM lead GROUP BY 1").fetchall())
    assert flags[-1] > flags[1] > flags[0] > 0  # mostly unset, then true, a few false
    # lookups point at existing records, with their target table recorded
    assert (
        one(
            "SELECT COUNT(*) FROM contact c LEFT JOIN account a ON a.accountid = c.parentcustomerid"
            " WHERE c.parentcustomerid IS NOT NULL AND a.accountid IS NULL"
        )
        == 0
    )
    assert one("SELECT COUNT(DISTINCT customeridtype) FROM opportunity") == 2
    assert {r[0] for r in db.execute("SELECT DISTINCT owneridtype FROM lead")} == {"systemuser", "team"}
    assert one("SELECT COUNT(*) FROM teammembership") >= 2 * 3
    assert one("SELECT COUNT(DISTINCT versionnumber) FROM lead") == 1000
    assert one("SELECT COUNT(DISTINCT emailaddress1) FROM contact") == 500

"""Migrations: idempotent upgrade, models equal to the schema, CLI, several processes, both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.exc import OperationalError

# Tables defined outside models.py register on Base.metadata when their module is imported.
import crm_sync.reconcile.store
import crm_sync.state.backlog
import crm_sync.state.guards
import crm_sync.state.membership  # noqa: F401
from crm_sync.state import current_revision, make_engine, read_scope, session_scope, upgrade
from crm_sync.state.db import alembic_config
from crm_sync.state.idmap import lookup_links, upsert_links
from crm_sync.state.models import Base

PROJECT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(PROJECT / p) for p in ("include", "plugins", "."))}


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def test_upgrade_reaches_head_and_is_idempotent(engine):
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == _head()
    assert set(inspect(engine).get_table_names()) >= {t.name for t in Base.metadata.sorted_tables}


def test_models_match_migrations(engine):
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diffs == []


def test_sqlite_file_uses_wal(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    eng.dispose()


def test_a_long_read_scope_keeps_no_writer_waiting_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'locks.db'}"
    reader_engine = make_engine(url)
    upgrade(reader_engine)
    # A writer on its own (pooled) connection that gives up after 0.5 s of waiting for the lock.
    writer_engine = make_engine(url, pool_size=1, max_overflow=0)
    with writer_engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA busy_timeout = 500")
    with read_scope(reader_engine) as reader:
        assert lookup_links(reader, "lead").empty  # the read transaction is open now
        with session_scope(writer_engine) as writer:  # BEGIN IMMEDIATE: needs the write lock
            upsert_links(writer, "lead", [{"dynamics_id": "d1", "marketo_id": "1"}])
        with session_scope(reader_engine) as other:
            assert len(lookup_links(other, "lead")) == 1
    # An ordinary scope does hold the write lock: the same writer then times out.
    with session_scope(reader_engine) as holder:
        lookup_links(holder, "lead")
        with pytest.raises(OperationalError, match="locked"), session_scope(writer_engine) as writer:
            upsert_links(writer, "lead", [{"dynamics_id": "d2", "marketo_id": "2"}])
    reader_engine.dispose()
    writer_engine.dispose()


def test_cli_upgrade_then_current(empty_url):
    url = empty_url
    run = [sys.executable, "-m", "crm_sync.state"]
    subprocess.run([*run, "upgrade", "--url", url], check=True, env=ENV, capture_output=True, timeout=60)
    out = subprocess.run([*run, "current", "--url", url], check=True, env=ENV, capture_output=True, text=True)
    assert out.stdout.strip() == _head()


WRITER = """
import sys
from crm_sync.state import make_engine, session_scope, upgrade, upsert_links
url, worker = sys.argv[1], int(sys.argv[2])
upgrade(url)
eng = make_engine(url)
for batch in range(20):
    rows = [{"dynamics_id": f"w{worker}-{batch}-{i}", "marketo_id": f"m{worker}-{batch}-{i}"}
            for i in range(50)]
    with session_scope(eng) as s:
        upsert_links(s, "lead", rows)
"""


def test_several_processes_migrate_and_write_one_store(empty_url):
    """Four processes migrate the same empty store at once and then write to it (SQLite file or
    PostgreSQL database: the migration takes a lock, so none of them fails on a half-made schema)."""
    url = empty_url
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(w)], env=ENV, stderr=subprocess.PIPE, text=True
        )
        for w in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    eng = make_engine(url)
    with session_scope(eng) as s:
        assert len(lookup_links(s, "lead")) == 4 * 20 * 50
    eng.dispose()

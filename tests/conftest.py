"""Test-wide set-up: a throwaway Airflow home for the whole session, before Airflow is imported.

Airflow reads its configuration at import time, so the environment is set here at module level.
The metadata DB is created only for tests that ask for the ``airflow_db`` fixture.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crm_sync.localenv import PROJECT_DIR, airflow_env

if "MDS_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["MDS_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="mds-airflow-home-")
os.environ.update(airflow_env(Path(os.environ["MDS_TEST_AIRFLOW_HOME"]), parallelism=4))
if "AIRFLOW__CORE__FERNET_KEY" not in os.environ:
    # One key for this process and every airflow CLI it starts, so stored secrets can be read back.
    from cryptography.fernet import Fernet

    os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
# Unit tests must never pick a developer's CA bundle override up by accident.
for _var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Create (or reset) the session's SQLite metadata DB and return AIRFLOW_HOME."""
    from airflow.utils import db

    db.resetdb()
    return os.environ["AIRFLOW_HOME"]

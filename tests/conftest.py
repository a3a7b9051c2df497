"""Test-wide set-up: a throwaway Airflow home for the whole session, before Airflow is imported.

Airflow reads its configuration at import time, so the environment is set here at module level.
The metadata DB is created only for tests that ask for the ``airflow_db`` fixture.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from crm_sync.localenv import PROJECT_DIR, airflow_env

# Under pytest-xdist every worker is a process of its own with its own Airflow home (and so its
# own SQLite metadata DB): the home the controller made is inherited through the environment, so
# a worker always makes a new one rather than share it.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER or "MDS_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["MDS_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(
        prefix=f"mds-airflow-home-{_XDIST_WORKER or 'main'}-"
    )
os.environ.update(airflow_env(Path(os.environ["MDS_TEST_AIRFLOW_HOME"]), parallelism=4))
if not _XDIST_WORKER and "MDS_TEST_SLOTS_DIR" not in os.environ:
    # One folder for the whole session, workers included: the stack slots (tests/support/slots.py).
    os.environ["MDS_TEST_SLOTS_DIR"] = tempfile.mkdtemp(prefix="mds-test-slots-")
if "AIRFLOW__CORE__FERNET_KEY" not in os.environ:
    # One key for this process and every airflow CLI it starts, so stored secrets can be read back.
    from cryptography.fernet import Fernet

    os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
# The Airflow stacks some tests start (standalone, Celery) inherit this environment. Their DAG
# processor would parse every DAG file again every 30 s, about half a core per stack on this
# 2-core machine; no test changes a DAG file under a running stack, so once an hour is enough
# (a new file is still parsed at once).
os.environ.setdefault("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "3600")
# Unit tests must never pick a developer's CA bundle override up by accident.
for _var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
    os.environ.pop(_var, None)

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.support.slots import slot_count, stack_slot  # noqa: E402


@pytest.fixture(scope="session")
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture
def stack_slot_held(request: pytest.FixtureRequest) -> Iterator[int]:
    """One of the suite's Airflow stack slots, held for the test (``tests/support/slots.py``)."""
    with stack_slot(request.node.nodeid) as number:
        yield number


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Create (or reset) the session's SQLite metadata DB and return AIRFLOW_HOME."""
    from airflow.utils import db

    db.resetdb()
    return os.environ["AIRFLOW_HOME"]


STACK_WEIGHT = 3
STACK_MINUTES = 5.0  # a stack module that does not say how long it takes


def _weight(item: pytest.Item) -> int:
    """How long a test is expected to take, coarsely: 3 runs its own Airflow stack, 2 slow (over a
    minute), 1 e2e, 0 the rest."""
    for weight, marker in ((STACK_WEIGHT, "stack"), (2, "slow"), (1, "e2e")):
        if item.get_closest_marker(marker):
            return weight
    return 0


def _stack_minutes(module: list[pytest.Item]) -> float:
    """A stack module's expected minutes (``pytest.mark.stack(minutes=...)``), 0 for other modules."""
    marks = [m for item in module if (m := item.get_closest_marker("stack"))]
    return max((float(m.kwargs.get("minutes", STACK_MINUTES)) for m in marks), default=0.0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests so that pytest-xdist starts the long ones first, spread over the workers.

    ``--dist worksteal`` hands each worker one contiguous block of the collection and lets an idle
    worker take the tail of another's queue. Test modules are dealt out whole, the heaviest first:
    modules that run their own Airflow stack go only to as many blocks as there are stack slots
    (``tests/support/slots.py``), so no worker starts by waiting for a slot, each to the block
    with the fewest stack minutes so far (the longest first, so the two lanes of stacks end close
    together); then the slow and e2e modules to the remaining blocks, and the short tests to any
    block, each to the block with the fewest tests so far, so the blocks end up the same size
    (xdist cuts the collection into equal parts). Every block starts with its share of the long
    tests and the short ones fill in after them. A block's first module sits where stealing
    never reaches (xdist leaves a worker its running test and the next): that is where a module
    whose two tests share one expensive stack belongs (``test_prod_sync``, the longest). Without
    xdist the order is simply heaviest first. Every worker computes the same order, as xdist
    requires.
    """
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ranked = sorted(
        modules.values(), key=lambda m: (max(map(_weight, m)), _stack_minutes(m), len(m)), reverse=True
    )
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    blocks: list[list[pytest.Item]] = [[] for _ in range(workers)]
    minutes = [0.0] * workers
    slots = min(workers, slot_count())
    other_blocks = list(range(slots, workers)) or list(range(workers))
    for module in ranked:
        weight = max(map(_weight, module))
        if weight == STACK_WEIGHT:
            chosen = min(range(slots), key=lambda b: minutes[b])
            minutes[chosen] += _stack_minutes(module)
        else:
            chosen = min(other_blocks if weight else range(workers), key=lambda b: len(blocks[b]))
        blocks[chosen].extend(module)
    items[:] = [item for block in blocks for item in block]

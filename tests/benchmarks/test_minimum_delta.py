"""The Dataverse call minimum against what a real change-tracking read costs on the emulator.

``DynamicsHook.track_changes`` reads leads over HTTPS from a Dataverse emulator process; the
calls it made and the rows the emulator counted are compared with
:func:`benchmarks.minimum.dynamics_minimum`:

* a first read of exactly 5,000 rows is one page (its delta link comes on the full page): the
  plain ``ceil`` minimum, so naming it a delta read would over-count;
* a read of exactly 5,000 changed rows from a delta link is two pages whatever the page size
  (the full page of rows is followed by the deletions' page, which carries the delta link): the
  delta minimum ``rows // 5000 + 1`` matches it, where ``ceil`` says one.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.minimum import DATAVERSE_PAGE, dynamics_minimum
from crm_sync_hooks.caches import clear_process_caches
from crm_sync_hooks.dynamics import DynamicsHook
from crm_sync_hooks.retry import RetryPolicy
from tests.support.emulator_procs import RunningEmulator, start_emulator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

FAST = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.05, honour_retry_after=False)
LEADS = DATAVERSE_PAGE  # a whole page: where the two formulas part


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    emu = start_emulator("dynamics", tmp_path_factory.mktemp("dynamics"), extra_args=["--limits", "off"])
    yield emu
    clear_process_caches()
    gc.collect()  # close idle keep-alive connections so the server shuts down at once
    emu.stop()


@pytest.fixture
def hook(
    monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, tmp_path: Path
) -> Iterator[DynamicsHook]:
    conn = emulator.connection(limiter_url=f"sqlite:///{tmp_path}/limiter.sqlite", timeout=60)
    monkeypatch.setenv("AIRFLOW_CONN_DYN_MINIMUM", conn)
    hook = DynamicsHook("dyn_minimum", retry_policy=FAST)
    yield hook
    hook.close()


def _write(hook: DynamicsHook, ids: list[str], tag: str) -> None:
    rows = [{"leadid": guid, "lastname": f"{tag} {i}"} for i, guid in enumerate(ids)]
    results = hook.upsert_records("leads", rows, ["leadid"], id_column="leadid", batch_size=1000)
    assert all(r.ok for r in results)


def _read(
    hook: DynamicsHook, emulator: RunningEmulator, delta_link: str | None, page_size: int
) -> tuple[int, dict[str, Any], str]:
    """Read leads by change tracking; return the calls made, the emulator's figures and the new link."""
    emulator.admin("POST", "stats/reset")
    pages = list(hook.track_changes("leads", ["lastname"], delta_link, page_size))
    stats = dict(emulator.stats())
    calls = int(stats["calls"]["GET /api/data/v9.2/leads"])
    assert calls == len(pages)
    assert pages[-1].delta_link
    return calls, {"records": stats["records"]}, str(pages[-1].delta_link)


def test_delta_reads_of_whole_pages_cost_one_more_call_than_ceil(
    hook: DynamicsHook, emulator: RunningEmulator
) -> None:
    ids = [str(uuid.uuid4()) for _ in range(LEADS)]
    _write(hook, ids, "First")

    calls, side, link = _read(hook, emulator, None, DATAVERSE_PAGE)
    assert side["records"] == {"lead.read": LEADS}
    # A first read's delta link comes on its last full page: the plain minimum, met exactly.
    assert calls == dynamics_minimum(side) == 1
    assert dynamics_minimum(side, delta_reads={"lead"}) > calls

    for round_, page_size in enumerate((DATAVERSE_PAGE, DATAVERSE_PAGE - 1)):
        _write(hook, ids, f"Changed {round_}")
        calls, side, link = _read(hook, emulator, link, page_size)
        assert side["records"] == {"lead.read": LEADS}
        # Whatever the page size, the rows and the delta link do not fit in one call.
        assert calls == 2
        assert dynamics_minimum(side, delta_reads={"lead"}) == calls
        assert dynamics_minimum(side) == calls - 1  # ceil under-counts a delta read of whole pages


def test_delta_minimum_stays_a_lower_bound_with_reads_by_key() -> None:
    # 5,000 delta rows (2 calls) and 1 row read by key (1 call): 3 calls, and the sum
    # 5,001 // 5,000 + 1 = 2 does not exceed them; nor does any split of the same total.
    for delta_rows in range(0, 3 * DATAVERSE_PAGE + 1, 250):
        for key_rows in (0, 1, 4999, 5000, 5001):
            made = delta_rows // DATAVERSE_PAGE + 1 + -(-key_rows // DATAVERSE_PAGE)
            side = {"records": {"lead.read": delta_rows + key_rows}}
            assert dynamics_minimum(side, delta_reads={"lead"}) <= made

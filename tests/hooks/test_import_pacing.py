"""The status calls of a bulk import follow the job's own pace, also after it waited in
Marketo's queue (two imports run at once; the others are ``Queued``).

Marketo's timing cannot be arranged through the emulator, so a scripted job answers the hook's
status calls on a clock that only the hook's waits move: queued for 20 s, then importing 500
rows a second, complete at 40 s.
"""

from __future__ import annotations

from typing import Any

import pytest

from crm_sync_hooks import marketo_bulk_import
from crm_sync_hooks.marketo_bulk_import import MarketoBulkImportMixin

ROWS = 10_000


class _ScriptedJob(MarketoBulkImportMixin):
    timeout = 30.0
    bulk_queue_wait = 0.0

    def __init__(self, queued_until: float) -> None:
        self.now = 0.0
        self.queued_until = queued_until
        self.status_calls: list[float] = []

    def poll_sleep(self, seconds: float) -> None:  # type: ignore[override]
        self.now += seconds

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        class _Created:
            @staticmethod
            def json() -> dict[str, Any]:
                return {"result": [{"batchId": 7, "status": "Queued"}]}

        return _Created()

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self.status_calls.append(self.now)
        done = int(max(0.0, self.now - self.queued_until) * 500)
        if done >= ROWS:
            return {"result": [{"status": "Complete", "numOfLeadsProcessed": ROWS}]}
        state = "Queued" if self.now < self.queued_until else "Importing"
        return {"result": [{"status": state, "numOfLeadsProcessed": done}]}


@pytest.mark.parametrize("queued_until", [0.0, 20.0])
def test_status_calls_follow_the_jobs_pace_after_its_wait_in_the_queue(
    monkeypatch: pytest.MonkeyPatch, queued_until: float
) -> None:
    job = _ScriptedJob(queued_until)
    monkeypatch.setattr(marketo_bulk_import.time, "monotonic", lambda: job.now)
    result = job._run_import(b"email\n", {}, {}, ROWS, "email", 5.0, 3600.0, first_poll_seconds=1.0)
    assert result.status == "Complete"
    finished = queued_until + ROWS / 500
    # The last call comes soon after the job finished: within two polls, not ten.
    assert finished <= job.status_calls[-1] <= finished + 10.0, job.status_calls
    assert len(job.status_calls) <= 12, job.status_calls

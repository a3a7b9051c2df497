"""The state CLI lists and re-queues parked record errors."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from crm_sync.state import RetryPolicy, due_errors, make_engine, record_errors, session_scope, upgrade

from .test_schema import ENV


def _cli(*args: str) -> str:
    cmd = [sys.executable, "-m", "crm_sync.state", *args]
    return subprocess.run(cmd, check=True, env=ENV, capture_output=True, text=True, timeout=60).stdout


def test_parked_then_requeue(empty_url):
    url = empty_url
    upgrade(url)
    engine = make_engine(url)
    errors = pd.DataFrame(
        {
            "entity": ["lead"],
            "direction": ["m2d"],
            "record_id": ["42"],
            "field": ["lastname"],
            "code": ["REQUIRED"],
            "reason": ["required value is empty"],
        }
    )
    with session_scope(engine) as s:
        record_errors(s, errors, run_id="r1", policy=RetryPolicy(max_attempts=1))
    assert "no parked errors" in _cli("parked", "--url", url, "--entity", "contact")
    listing = _cli("parked", "--url", url)
    assert "42" in listing
    assert "REQUIRED" in listing
    assert _cli("requeue", "--url", url, "--id", "42").strip() == "re-queued 1 parked errors"
    with session_scope(engine) as s:
        assert due_errors(s)["source_id"].tolist() == ["42"]
    assert "no parked errors" in _cli("parked", "--url", url)
    engine.dispose()


def test_rebaseline_needs_confirmation(empty_url):
    url = empty_url
    upgrade(url)
    cmd = [sys.executable, "-m", "crm_sync.state", "rebaseline", "--url", url]
    refused = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert _cli("rebaseline", "--url", url, "--yes").strip() == "state store re-baselined"

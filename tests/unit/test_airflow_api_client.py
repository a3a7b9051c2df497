"""The Airflow REST client repeats calls an API server on a busy machine did not answer in time."""

from __future__ import annotations

import pytest
import requests
import requests_mock

from crm_sync import airflow_api
from crm_sync.airflow_api import AirflowApi, AirflowApiError

BASE = "http://127.0.0.1:8080"


@pytest.fixture
def api(requests_mock: requests_mock.Mocker, monkeypatch: pytest.MonkeyPatch) -> AirflowApi:
    monkeypatch.setattr(airflow_api.time, "sleep", lambda _s: None)
    requests_mock.post(f"{BASE}/auth/token", json={"access_token": "t"})
    return AirflowApi(BASE, "admin", "pw")


def test_a_trigger_whose_answer_timed_out_is_repeated_with_the_same_run_id(
    api: AirflowApi, requests_mock: requests_mock.Mocker
) -> None:
    url = f"{BASE}/api/v2/dags/sync_lead/dagRuns"
    requests_mock.post(
        url, [{"exc": requests.ReadTimeout}, {"status_code": 409, "json": {"detail": "exists"}}]
    )
    run_id = api.trigger("sync_lead")
    first, second = (call.json() for call in requests_mock.request_history if call.url == url)
    assert first == second
    assert run_id == first["dag_run_id"]
    assert run_id.startswith("manual__")


def test_a_conflict_on_the_first_attempt_is_an_error(
    api: AirflowApi, requests_mock: requests_mock.Mocker
) -> None:
    requests_mock.post(f"{BASE}/api/v2/dags/sync_lead/dagRuns", status_code=409, json={"detail": "exists"})
    with pytest.raises(AirflowApiError, match="409"):
        api.trigger("sync_lead")


def test_a_read_that_timed_out_is_repeated_and_gives_up_after_five(
    api: AirflowApi, requests_mock: requests_mock.Mocker
) -> None:
    url = f"{BASE}/api/v2/dags/sync_lead/dagRuns/r1"
    requests_mock.get(url, [{"exc": requests.ReadTimeout}, {"json": {"state": "success"}}])
    assert api.run_state("sync_lead", "r1") == "success"
    requests_mock.get(url, exc=requests.ReadTimeout)
    with pytest.raises(requests.ReadTimeout):
        api.run_state("sync_lead", "r1")
    assert sum(call.url == url for call in requests_mock.request_history) == 2 + 5

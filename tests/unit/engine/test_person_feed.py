"""The shared person feed: chunks staged by one entity are reused by the other, and a chunk whose
files are gone is read again instead of failing every later run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath

from crm_sync.engine.person_feed import read_person_feed
from crm_sync.engine.staging import StagingArea
from crm_sync_hooks.marketo import FeedPage


class FeedOnlyMarketo:
    """The two Marketo reads the feed makes, over a fixed activity list; counts the reads."""

    def __init__(self, lead_ids: list[int]) -> None:
        self.lead_ids = lead_ids
        self.feed_reads = 0
        self.lead_reads = 0

    def get_lead_changes(
        self, next_page_token: str, fields: Sequence[str], batch_size: int = 300
    ) -> Iterator[FeedPage]:
        self.feed_reads += 1
        if next_page_token == "T0":
            yield FeedPage(records=[{"leadId": i} for i in self.lead_ids], next_page_token="T1", more=False)
        else:
            yield FeedPage(records=[], next_page_token=next_page_token, more=False)

    def get_leads(
        self, filter_type: str, filter_values: Sequence[str | int], fields: Sequence[str] | None = None,
        batch_size: int = 300,
    ) -> Iterator[list[dict[str, Any]]]:  # fmt: skip
        self.lead_reads += 1
        yield [{"id": int(v), "email": f"p{v}@example.com"} for v in filter_values]


@pytest.fixture
def staging(tmp_path: Path) -> StagingArea:
    return StagingArea(ObjectStoragePath(f"file://{tmp_path}"))


def test_a_chunk_staged_by_one_entity_is_reused_by_the_next(staging: StagingArea) -> None:
    client = FeedOnlyMarketo([1, 2, 3])
    first = read_person_feed(client, staging, "T0", ["email"])  # type: ignore[arg-type]
    second = read_person_feed(client, staging, "T0", ["email"])  # type: ignore[arg-type]

    assert (first["token"], first["rows"], first["reused"]) == ("T1", 3, 0)
    assert (second["token"], second["rows"], second["reused"]) == ("T1", 3, 1)
    assert client.lead_reads == 1, "the persons were fetched once for both entities"
    assert second["chunks"][0]["batches"] == first["chunks"][0]["batches"]


def test_a_chunk_whose_files_are_gone_is_read_again(staging: StagingArea) -> None:
    client = FeedOnlyMarketo([1, 2, 3])
    first = read_person_feed(client, staging, "T0", ["email"])  # type: ignore[arg-type]
    for ref in first["chunks"][0]["batches"]:
        staging.path(ref["path"]).unlink()

    again = read_person_feed(client, staging, "T0", ["email"])  # type: ignore[arg-type]

    assert (again["token"], again["rows"], again["reused"]) == ("T1", 3, 0)
    assert client.lead_reads == 2
    frames = [staging.read_frame(ref) for chunk in again["chunks"] for ref in chunk["batches"]]
    assert sorted(i for frame in frames for i in frame["id"]) == [1, 2, 3]

"""Staging: deterministic run-scoped paths, idempotent writes, checked reads."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from airflow.sdk import ObjectStoragePath

from crm_sync.engine.staging import BatchRef, StagingArea, run_key, token_key


@pytest.fixture
def staging(tmp_path: Path) -> StagingArea:
    return StagingArea(ObjectStoragePath(f"file://{tmp_path}"))


def test_run_folders_are_deterministic_and_safe() -> None:
    run_id = "manual__2026-11-26T13:44:19.123+00:00"
    assert run_key(run_id) == run_key(run_id)
    assert "/" not in run_key(run_id)
    assert ":" not in run_key(run_id)
    assert "+" not in run_key(run_id)
    # Ids that differ only in unsafe characters still get different folders.
    assert run_key("a:b") != run_key("a+b")
    assert token_key("MFRXIORQ") == token_key("MFRXIORQ") != token_key("MFRXIORR")


def test_the_same_batch_name_replaces_the_file(staging: StagingArea, tmp_path: Path) -> None:
    folder = staging.run_dir("account", "run-1") / "extract"
    first = staging.write_frame(folder, "dynamics-00000", pd.DataFrame({"id": ["a", "b"], "n": [1, None]}))
    again = staging.write_frame(folder, "dynamics-00000", pd.DataFrame({"id": ["c"], "n": [3]}))

    assert first.path == again.path
    assert again.rows == 1
    files = sorted(p.name for p in (tmp_path / "runs" / "account").rglob("*") if p.is_file())
    assert files == ["dynamics-00000.parquet"], "no temporary or duplicate files are left"
    assert staging.read_frame(again)["id"].tolist() == ["c"]


def test_references_round_trip_through_xcom_dicts(staging: StagingArea) -> None:
    folder = staging.run_dir("lead", "run-1")
    ref = staging.write_frame(folder, "x", pd.DataFrame({"v": [True, None, False]}))
    back = staging.read_frame(BatchRef.from_dict(ref.to_dict()))
    assert back["v"].tolist() == [True, None, False]
    with pytest.raises(ValueError, match="not a batch reference"):
        BatchRef.from_dict({"path": ref.path})


def test_reads_check_existence_and_row_count(staging: StagingArea) -> None:
    folder = staging.run_dir("lead", "run-1")
    ref = staging.write_frame(folder, "x", pd.DataFrame({"v": [1, 2]}))
    with pytest.raises(ValueError, match="holds 2 rows, reference says 3"):
        staging.read_frame(BatchRef(ref.path, 3))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        staging.read_frame(BatchRef(ref.path.replace("x.parquet", "y.parquet"), 2))


def test_manifests(staging: StagingArea) -> None:
    folder = staging.run_dir("lead", "run-1")
    assert staging.read_json(folder, "extract") is None
    staging.write_json(folder, "extract", {"pending": {"d2m": "token"}})
    assert staging.read_json(folder, "extract") == {"pending": {"d2m": "token"}}


def _write_many(root: str, writer: int, times: int) -> int:
    """Stage the same batch name and manifest ``times`` times (one process of the race below)."""
    area = StagingArea(ObjectStoragePath(root))
    folder = area.feed_dir("person", "start-token")
    for i in range(times):
        area.write_frame(folder, "persons-00000", pd.DataFrame({"writer": [writer] * 50, "i": range(50)}))
        area.write_json(folder, "manifest", {"writer": writer, "i": i})
    return writer


def test_writers_racing_on_one_file_never_remove_each_others(tmp_path: Path) -> None:
    """Two entities staging one feed chunk at once: whoever renames last wins, and the file and
    the manifest always exist whole (the old unlink-then-rename let one writer delete the other's
    file for good, and a shared temporary name made the other's rename fail)."""
    import multiprocessing

    root = f"file://{tmp_path}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert sorted(pool.starmap(_write_many, [(root, w, 150) for w in range(3)])) == [0, 1, 2]
    area = StagingArea(ObjectStoragePath(root))
    folder = area.feed_dir("person", "start-token")
    frame = area.read_frame({"path": str(folder / "persons-00000.parquet"), "rows": 50})
    assert frame["writer"].nunique() == 1
    assert area.read_json(folder, "manifest") is not None
    assert sorted(p.name for p in Path(folder.path).iterdir()) == ["manifest.json", "persons-00000.parquet"]


def test_a_file_written_part_by_part_takes_every_part_in_one_schema(
    staging: StagingArea, tmp_path: Path
) -> None:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string()), ("marketo_id", pa.string()), ("n", pa.int64())])
    folder = staging.run_dir("lead", "run-1") / "units" / "unit-00000"
    writer = staging.frame_writer(folder, "links", schema)
    writer.write(pd.DataFrame({"id": ["a", "b"], "marketo_id": [None, None], "n": [1, 2]}))  # all empty
    writer.write(pd.DataFrame({"id": ["c"], "marketo_id": [77], "n": [3]}))  # a number in a text column
    writer.write(pd.DataFrame({"id": ["d"], "n": [None]}))  # a column missing
    ref = writer.close()

    back = staging.read_frame(ref)
    assert ref.rows == 4
    assert back["id"].tolist() == ["a", "b", "c", "d"]
    assert back["marketo_id"].tolist()[2] == "77"
    assert back["marketo_id"].isna().tolist() == [True, True, False, True]
    assert back["n"].isna().tolist() == [False, False, False, True]
    files = sorted(p.name for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert files == ["links.parquet"], "the temporary file is renamed, not left"


def test_an_aborted_writer_leaves_the_earlier_file_and_no_temporary(
    staging: StagingArea, tmp_path: Path
) -> None:
    import pyarrow as pa

    schema = pa.schema([("id", pa.string())])
    folder = staging.run_dir("lead", "run-1") / "units" / "unit-00000"
    first = staging.frame_writer(folder, "ops", schema)
    first.write(pd.DataFrame({"id": ["kept"]}))
    ref = first.close()
    again = staging.frame_writer(folder, "ops", schema)
    again.write(pd.DataFrame({"id": ["half"]}))
    again.abort()

    assert staging.read_frame(ref)["id"].tolist() == ["kept"]
    files = sorted(p.name for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert files == ["ops.parquet"]
    with pytest.raises(ValueError, match="'id' does not fit"):
        staging.frame_writer(folder, "ops", pa.schema([("id", pa.int64())])).write(
            pd.DataFrame({"id": ["not a number"]})
        )


def test_a_batch_is_read_in_chunks_and_in_chosen_columns(staging: StagingArea) -> None:
    folder = staging.run_dir("lead", "run-1") / "plans"
    frame = pd.DataFrame({"id": [f"g{i}" for i in range(5)], "payload": ['{"a":1}'] * 5, "n": range(5)})
    ref = staging.write_frame(folder, "links", frame)

    parts = list(staging.iter_frames(ref, 2, columns=["id", "n"]))
    assert [len(p) for p in parts] == [2, 2, 1]
    assert all(list(p.columns) == ["id", "n"] for p in parts)
    assert pd.concat(parts)["id"].tolist() == frame["id"].tolist()
    assert list(staging.read_frame(ref, columns=["payload"]).columns) == ["payload"]
    # Arrow-typed text: the load keeps payloads in Arrow memory; the values are the same.
    arrow = staging.read_frame(ref, arrow_strings=True)
    assert str(arrow["payload"].dtype).endswith("[pyarrow]")
    assert arrow["payload"].array[3] == '{"a":1}'

    short = BatchRef(path=ref.path, rows=4)
    with pytest.raises(ValueError, match="holds 5 rows, reference says 4"):
        list(staging.iter_frames(short, 2))

"""Id map: bulk, idempotent upserts and case-insensitive lookups."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.state import lookup_links, session_scope, set_link_state, upsert_links

A = "AAAAAAAA-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"


def _links(engine, entity="lead", **kw):
    with session_scope(engine) as s:
        return lookup_links(s, entity, **kw)


def test_upsert_inserts_and_lookup_is_case_insensitive(engine):
    frame = pd.DataFrame(
        {
            "dynamics_id": [A, B],
            "marketo_id": [101, 102],
            "email": ["Ann@Example.com", None],
            "person_type": "Lead",
        }
    )
    with session_scope(engine) as s:
        assert upsert_links(s, "lead", frame) == 2
    got = _links(engine, dynamics_ids=[A.lower(), B.upper()])
    assert sorted(got["dynamics_id"]) == [A.lower(), B]
    assert sorted(got["marketo_id"]) == ["101", "102"]
    assert _links(engine, emails=["ANN@example.COM"])["dynamics_id"].tolist() == [A.lower()]
    assert _links(engine, marketo_ids=[102])["dynamics_id"].tolist() == [B]


def test_second_identical_upsert_changes_nothing(engine):
    rows = [{"dynamics_id": A, "marketo_id": "1", "last_hash_d2m": -5, "field_hashes": {"email": 7}}]
    with session_scope(engine) as s:
        upsert_links(s, "lead", rows)
    first = _links(engine).drop(columns="updated_at")
    with session_scope(engine) as s:
        upsert_links(s, "lead", rows)
    pd.testing.assert_frame_equal(_links(engine).drop(columns="updated_at"), first)
    assert len(first) == 1


def test_partial_update_keeps_other_columns(engine):
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": A, "marketo_id": "1", "field_hashes": {"email": 7}}])
        upsert_links(s, "lead", [{"dynamics_id": A, "last_hash_d2m": 42}])
    row = _links(engine).iloc[0]
    assert row["marketo_id"] == "1"
    assert row["field_hashes"] == {"email": 7}
    assert row["last_hash_d2m"] == 42


def test_hashes_keep_full_64_bit_range(engine):
    big = {"a": 2**63 - 1, "b": -(2**63)}
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": A, "last_hash_m2d": -(2**63), "field_hashes": big}])
    row = _links(engine).iloc[0]
    assert row["last_hash_m2d"] == -(2**63)
    assert row["field_hashes"] == big


def test_marketo_id_claimed_by_new_record_is_released(engine):
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": A, "marketo_id": "9"}])
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": B, "marketo_id": "9"}])
    got = _links(engine).set_index("dynamics_id")
    assert got.loc[B, "marketo_id"] == "9"
    assert pd.isna(got.loc[A.lower(), "marketo_id"])
    assert got.loc[A.lower(), "state"] == "orphaned"


def test_entities_are_separate_namespaces(engine):
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": A, "marketo_id": "5"}])
        upsert_links(s, "contact", [{"dynamics_id": B, "marketo_id": "5"}])
    assert len(_links(engine, ["lead", "contact"])) == 2
    assert _links(engine, "contact", marketo_ids=["5"])["dynamics_id"].tolist() == [B]


def test_lookup_many_ids_is_chunked(engine):
    rows = [{"dynamics_id": f"id-{i}", "marketo_id": str(i)} for i in range(1200)]
    with session_scope(engine) as s:
        upsert_links(s, "user", rows)
    got = _links(engine, "user", dynamics_ids=[f"ID-{i}" for i in range(0, 1200, 2)])
    assert len(got) == 600


def test_set_link_state(engine):
    with session_scope(engine) as s:
        upsert_links(s, "lead", [{"dynamics_id": A}, {"dynamics_id": B}])
        assert set_link_state(s, "lead", [A], "stale") == 1
    got = _links(engine).set_index("dynamics_id")["state"].to_dict()
    assert got == {A.lower(): "stale", B: "active"}


def test_row_without_dynamics_id_is_rejected(engine):
    with session_scope(engine) as s, pytest.raises(ValueError, match=r"lead.*#1 has no dynamics_id"):
        upsert_links(s, "lead", [{"dynamics_id": A}, {"dynamics_id": None, "marketo_id": "3"}])


def test_unknown_column_is_rejected(engine):
    with session_scope(engine) as s, pytest.raises(ValueError, match="unknown link columns"):
        upsert_links(s, "lead", [{"dynamics_id": A, "colour": "red"}])


def test_integer_marketo_ids_with_gaps_are_stored_without_decimals(engine):
    frame = pd.DataFrame({"dynamics_id": [A, B], "marketo_id": [77, None]})  # float64 column
    with session_scope(engine) as s:
        upsert_links(s, "lead", frame)
    got = _links(engine).set_index("dynamics_id")["marketo_id"]
    assert got[A.lower()] == "77"
    assert pd.isna(got[B])

"""Hashes: equal canonical values hash equal whichever side they came from, in any process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from crm_sync.config import Direction
from crm_sync.transforms import (
    dynamics_to_canonical,
    field_hashes,
    hashes_frame,
    hashes_to_dicts,
    marketo_to_canonical,
    record_hash,
)

from .conftest import dataverse_rows

PROJECT = Path(__file__).resolve().parents[3]


def _random_leads(lead, n, seed):
    """Random Dataverse lead values for every bidirectional field, plus their Marketo mirror."""
    rng = np.random.default_rng(seed)
    rows = dataverse_rows(lead, leadid=[f"id{i}" for i in range(n)])
    words = np.array(["x", "Ab", "ünï", "with space", "", None], dtype=object)
    both = [f for f in lead.fields if lead.field_direction(f) is Direction.BOTH]
    for f in both:
        if f.option_set:
            rows[f.dynamics] = rng.choice(np.array([*f.option_set, None], dtype=object), n)
        elif f.cast.value == "boolean":
            rows[f.dynamics] = rng.choice(np.array([True, False, None], dtype=object), n)
        elif f.cast.value == "decimal":
            rows[f.dynamics] = rng.choice(np.array([1.5, 2.0, None], dtype=object), n)
        elif f.cast.value == "email":
            rows[f.dynamics] = rng.choice(np.array(["a@b.example", None], dtype=object), n)
        else:
            rows[f.dynamics] = rng.choice(words, n)
    rows["lastname"] = "Required"
    return rows, [f.name for f in both]


def test_same_values_hash_equal_from_both_sides(lead):
    rows, names = _random_leads(lead, 200, seed=1)
    from_d = dynamics_to_canonical(rows, lead).frame
    # What Marketo would return after the sync wrote those records: the same canonical values,
    # but as JSON types (strings for booleans/numbers are what some endpoints hand back).
    persons = from_d[names].astype(object).where(from_d[names].notna(), None)
    persons = persons.map(lambda v: str(v).lower() if isinstance(v, bool | np.bool_) else v)
    persons["id"] = range(len(persons))
    persons["externalPersonId"] = from_d["dynamics_id"].to_numpy()
    from_m = marketo_to_canonical(persons.reset_index(drop=True), lead).frame
    h_d = field_hashes(from_d.set_index("dynamics_id"), names)
    h_m = field_hashes(from_m.set_index("dynamics_id"), names)
    pd.testing.assert_frame_equal(h_d, h_m)


def test_different_values_hash_differently(lead):
    frame = pd.DataFrame({"title": pd.Series(["CTO", "CEO", None, ""], dtype="str")})
    hashes = field_hashes(frame, ["title"])["title"]
    assert hashes.nunique() == 4


def test_record_hash_ignores_column_order():
    h = pd.DataFrame({"a": [1, 2], "b": [3, 4]})
    assert record_hash(h).tolist() == record_hash(h[["b", "a"]]).tolist()
    assert record_hash(h).nunique() == 2


def test_hashes_are_identical_in_another_process():
    frame = pd.DataFrame(
        {"t": pd.Series(["CTO", None], dtype="str"), "n": pd.array([1, None], dtype="Int64")}
    )
    here = field_hashes(frame, ["t", "n"]).to_numpy().tolist()
    code = (
        "import pandas as pd; from crm_sync.transforms import field_hashes;"
        "f = pd.DataFrame({'t': pd.Series(['CTO', None], dtype='str'),"
        " 'n': pd.array([1, None], dtype='Int64')});"
        "print(field_hashes(f, ['t', 'n']).to_numpy().tolist())"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "include"), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)


def test_stored_dicts_round_trip():
    current = pd.DataFrame({"a": [1, 2], "b": [3, 4]}, index=["r1", "r2"])
    stored = hashes_to_dicts(current)
    assert stored == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    last = hashes_frame([stored[0], None], ["r1", "r2"])
    assert last.loc["r1"].tolist() == [1, 3]
    assert last.loc["r2"].isna().all()


def test_hashes_as_json_text_are_the_dicts_json_would_write() -> None:
    import json

    from crm_sync.transforms.hashing import hashes_to_dicts, hashes_to_json

    hashes = pd.DataFrame(
        {"title": [5, None, -7], "email": [-(2**63), 3, None], "doNotCall": [0, None, None]},
        index=["a", "b", "c"],
    ).astype("Int64")
    expected = [json.dumps(d, sort_keys=True, separators=(",", ":")) for d in hashes_to_dicts(hashes)]
    assert hashes_to_json(hashes) == expected
    assert expected[2] == '{"title":-7}'
    assert expected[1] == '{"email":3}'
    assert hashes_to_json(hashes.iloc[:, :0]) == ["{}", "{}", "{}"]


def test_a_record_with_no_hash_keeps_its_place_in_the_json_texts() -> None:
    from crm_sync.transforms.hashing import hashes_to_json

    # Arrow's skip-nulls join drops such rows from its result (pyarrow 26.0.1): the texts
    # must stay aligned with the records.
    hashes = pd.DataFrame({"b": [1, None, None, -5], "a": [None, 2, None, 7]}).astype("Int64")
    assert hashes_to_json(hashes) == ['{"b":1}', '{"a":2}', "{}", '{"a":7,"b":-5}']

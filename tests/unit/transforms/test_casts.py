"""Casts into canonical values, from either side, and back to Dataverse values."""

from __future__ import annotations

import pandas as pd
import pytest

from crm_sync.config import Cast, FieldMap, Side
from crm_sync.transforms import to_canonical, to_dynamics_values

RATING = FieldMap(
    marketo="rating", dynamics="leadqualitycode", cast=Cast.CHOICE, option_set={1: "Hot", 2: "Warm"}
)
MULTI = FieldMap(
    marketo="topics", dynamics="new_topics", cast=Cast.MULTICHOICE, option_set={1: "A", 2: "B", 3: "C"}
)


def cast(values, kind, source=Side.DYNAMICS, **kw):
    field = FieldMap(marketo="m", dynamics="d", cast=kind, **kw)
    return to_canonical(pd.Series(values, dtype=object), field, source)


def test_string_empty_becomes_missing():
    result = cast(["a", "", None], Cast.STRING)
    assert result.values.tolist()[0] == "a"
    assert result.values.isna().tolist() == [False, True, True]
    assert not result.bad.any()


@pytest.mark.parametrize(
    ("raw", "value", "bad"),
    [
        (5, 5, False),
        ("7", 7, False),
        (3.0, 3, False),
        ("2.5", None, True),
        ("x", None, True),
        (None, None, False),
    ],
)
def test_integer(raw, value, bad):
    result = cast([raw], Cast.INTEGER)
    assert result.values.dtype == "Int64"
    assert (None if pd.isna(result.values[0]) else result.values[0]) == value
    assert bool(result.bad[0]) is bad


def test_decimal_keeps_fractions_and_flags_text():
    result = cast(["1.25", 3, "abc", ""], Cast.DECIMAL)
    assert result.values.dtype == "Float64"
    assert result.values[:2].tolist() == [1.25, 3.0]
    assert result.bad.tolist() == [False, False, True, False]


def test_boolean_words_and_flags():
    result = cast([True, "false", "1", "no", "maybe", None], Cast.BOOLEAN)
    assert result.values[:4].tolist() == [True, False, True, False]
    assert result.bad.tolist() == [False, False, False, False, True, False]


def test_datetime_normalised_to_utc_z():
    result = cast(
        ["2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", "2024-05-01T08:00:00-0400"], Cast.DATETIME
    )
    assert result.values.tolist() == ["2024-05-01T12:00:00Z"] * 3
    assert not result.bad.any()
    assert cast(["soon"], Cast.DATETIME).bad.tolist() == [True]
    # Text that is no date at all is invalid, not "a date without a time zone".
    assert cast(["soon"], Cast.DATETIME).code == "INVALID_VALUE"


def test_a_datetime_without_an_offset_is_an_error_not_a_guess():
    # Issue 17, point 10: it used to be taken as UTC silently.
    result = cast(["2024-05-01 12:00:00", "2024-05-01T12:00:00Z", None], Cast.DATETIME)
    assert result.bad.tolist() == [True, False, False]
    assert result.code == "NAIVE_DATETIME"
    assert pd.isna(result.values[0])


def test_a_field_timezone_reads_naive_values_in_it():
    result = cast(
        ["2024-01-15T09:00:00", "2024-07-15T09:00:00", "2024-07-15T09:00:00Z"],
        Cast.DATETIME,
        timezone="Europe/Oslo",
    )
    assert result.values.tolist() == ["2024-01-15T08:00:00Z", "2024-07-15T07:00:00Z", "2024-07-15T09:00:00Z"]
    assert not result.bad.any()
    # A local time that does not exist (the spring-forward gap) is an error, not a guess.
    assert cast(["2024-03-31T02:30:00"], Cast.DATETIME, timezone="Europe/Oslo").bad.tolist() == [True]


def test_timezone_is_checked_in_the_yaml():
    with pytest.raises(ValueError, match="not an IANA time zone name"):
        FieldMap(marketo="m", dynamics="d", cast=Cast.DATETIME, timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="cast datetime only"):
        FieldMap(marketo="m", dynamics="d", cast=Cast.STRING, timezone="UTC")


def test_date_only():
    assert cast(["2024-05-01", "2024-05-01T23:00:00Z"], Cast.DATE).values.tolist() == [
        "2024-05-01",
        "2024-05-01",
    ]


def test_email_syntax():
    result = cast(["a.b+c@example.co.uk", "bad@", "no at.com", "x@y"], Cast.EMAIL)
    assert result.bad.tolist() == [False, True, True, True]
    assert result.code == "INVALID_EMAIL"


def test_choice_code_to_label_and_unknown_code():
    result = to_canonical(pd.Series([1, 2, 9, None]), RATING, Side.DYNAMICS)
    assert result.values[:2].tolist() == ["Hot", "Warm"]
    assert result.bad.tolist() == [False, False, True, False]
    assert result.code == "UNKNOWN_OPTION"


def test_choice_falls_back_to_formatted_value():
    result = to_canonical(pd.Series([9]), RATING, Side.DYNAMICS, formatted=pd.Series(["Lukewarm"]))
    assert result.values.tolist() == ["Lukewarm"]
    assert not result.bad.any()


def test_choice_label_from_marketo_round_trips_to_code():
    result = to_canonical(pd.Series(["Warm", "Freezing", ""]), RATING, Side.MARKETO)
    assert result.bad.tolist() == [False, True, False]
    codes = to_dynamics_values(result.values[~result.bad], RATING)
    assert codes.tolist()[0] == 2
    assert pd.isna(codes.tolist()[1])


def test_multichoice_both_ways():
    from_d = to_canonical(pd.Series(["1,3", "2", None, "1,9"]), MULTI, Side.DYNAMICS)
    assert from_d.values[:2].tolist() == ["A;C", "B"]
    assert from_d.bad.tolist() == [False, False, False, True]
    from_m = to_canonical(pd.Series(["A;C", "B"]), MULTI, Side.MARKETO)
    assert to_dynamics_values(from_m.values, MULTI).tolist() == ["1,3", "2"]


def test_guid_lower_case_and_string_list_join():
    assert cast([" AbC-1 "], Cast.GUID).values.tolist() == ["abc-1"]
    assert cast([["u1", "u2"], [], None], Cast.STRING_LIST).values[:1].tolist() == ["u1;u2"]

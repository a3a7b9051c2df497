"""Vectorised casts between raw API values and the sync's canonical values.

The canonical form of a field is its Marketo representation with a fixed pandas dtype, the
same whichever side the value came from: strings (``str``, empty → missing), ``Int64``,
``Float64``, ``boolean``, ISO-8601 UTC datetimes ``YYYY-MM-DDTHH:MM:SSZ``, dates
``YYYY-MM-DD``, option-set labels and ``;``-joined multi-select labels. Because both sides are
reduced to the same form, hashes of canonical values compare across systems (echo suppression)
and the three-way conflict check compares like with like.

Every cast returns the values and a mask of rows whose non-empty input could not be cast, so
the caller can report them by record and field instead of failing the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from crm_sync.config import Cast, FieldMap, Side

if TYPE_CHECKING:
    from collections.abc import Callable

# RFC 5322 is far wider, but Marketo and Dataverse both reject addresses outside this shape:
# one @, a non-empty local part without spaces, a dotted domain.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
EMAIL_PATTERN = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@" + _LABEL + r"(?:\." + _LABEL + r")+$"

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_BOOL_WORDS = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}


@dataclass(frozen=True)
class CastResult:
    """Canonical values and the rows whose input was present but not castable.

    Attributes:
        values: Canonical values, aligned with the input index.
        bad: True where the input had a value that could not be cast.
        code: Error code for the bad rows (``INVALID_VALUE``, ``UNKNOWN_OPTION``, ``INVALID_EMAIL``).
    """

    values: pd.Series
    bad: pd.Series
    code: str = "INVALID_VALUE"


def _present(raw: pd.Series) -> pd.Series:
    """True where the raw input carries a value (not missing, not an empty string)."""
    present = raw.notna()
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        present &= raw.astype("str") != ""
    return present


def as_string(raw: pd.Series) -> pd.Series:
    """Return ``raw`` as the ``str`` dtype with empty strings turned into missing values."""
    out = raw.astype("str") if raw.dtype != "str" else raw
    if raw.dtype == object:
        # astype("str") renders None as missing but keeps NaN objects as missing too; only
        # genuine empty strings need clearing (Marketo empty → Dataverse null, §3).
        out = out.where(raw.notna())
    return out.mask(out == "")


def lower_ids(values: pd.Series) -> pd.Series:
    """Ids as the id map keeps them: text, trimmed, lower case (GUIDs come in either case)."""
    return as_string(values).str.strip().str.lower()


def _string(raw: pd.Series) -> CastResult:
    values = as_string(raw)
    return CastResult(values, pd.Series(False, index=raw.index))


def _email(raw: pd.Series) -> CastResult:
    values = as_string(raw).str.strip()
    bad = values.notna() & ~values.str.match(EMAIL_PATTERN).fillna(False).astype(bool)
    return CastResult(values, bad, "INVALID_EMAIL")


def _integer(raw: pd.Series) -> CastResult:
    if pd.api.types.is_integer_dtype(raw.dtype):
        return CastResult(raw.astype("Int64"), pd.Series(False, index=raw.index))
    num = pd.to_numeric(raw.mask(~_present(raw)), errors="coerce")
    whole = num.notna() & (num == np.floor(num))
    values = num.where(whole).astype("Float64").astype("Int64")
    return CastResult(values, _present(raw) & values.isna())


def _decimal(raw: pd.Series) -> CastResult:
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        return CastResult(raw.astype("Float64"), pd.Series(False, index=raw.index))
    values = pd.to_numeric(raw.mask(~_present(raw)), errors="coerce").astype("Float64")
    return CastResult(values, _present(raw) & values.isna())


def _boolean(raw: pd.Series) -> CastResult:
    if pd.api.types.is_bool_dtype(raw.dtype):
        return CastResult(raw.astype("boolean"), pd.Series(False, index=raw.index))
    words = raw.astype("str").str.strip().str.lower()
    values = words.map(_BOOL_WORDS).astype("boolean")
    return CastResult(values, _present(raw) & values.isna())


def _datetime(raw: pd.Series, unit: Literal["s", "D"]) -> CastResult:
    present = _present(raw)
    parsed = pd.to_datetime(raw.mask(~present), utc=True, errors="coerce", format="ISO8601")
    # numpy formats the whole array in C; Series.dt.strftime would loop in Python.
    naive = parsed.dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
    text = np.datetime_as_string(naive, unit=unit)
    if unit == "s":
        text = np.char.add(text, "Z")
    values = pd.Series(text, index=raw.index, dtype="str").where(parsed.notna())
    return CastResult(values, present & parsed.isna())


# An ISO-8601 date-time that names its offset: ends in Z or +hh:mm / -hhmm / +hh.
_ZONED = r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


def _zoned_datetime(raw: pd.Series, field: FieldMap) -> CastResult:
    """A date-time cast that never guesses a time zone.

    A value without an offset (``2026-12-06T10:00:00``) is an error ``NAIVE_DATETIME`` naming
    the field, unless the field's YAML gives a ``timezone`` (IANA name) to read it in; values
    with an offset (``Z``, ``+02:00``) are converted to UTC as before.
    """
    present = _present(raw)
    text = raw.astype(object).where(present).map(lambda v: v if v is None or isinstance(v, str) else None)
    as_text = text.notna()
    unzoned = as_text & ~text.where(as_text, "").astype(str).str.strip().str.contains(_ZONED, regex=True)
    # Naive means "a date-time without an offset": text that is no date-time at all is invalid.
    parsed = pd.to_datetime(text.where(unzoned), errors="coerce", format="ISO8601")
    naive = unzoned & parsed.notna()
    stamps = raw.where(present & ~as_text)
    naive |= stamps.map(lambda v: isinstance(v, pd.Timestamp | datetime) and v.tzinfo is None).astype(bool)
    if not naive.any():
        return _datetime(raw, "s")
    if field.timezone is None:
        result = _datetime(raw.mask(naive), "s")
        return CastResult(result.values, result.bad | naive, "NAIVE_DATETIME")
    local = pd.to_datetime(raw.where(naive), errors="coerce", format="ISO8601")
    utc = local.dt.tz_localize(field.timezone, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    zoned = raw.astype(object).mask(naive, utc.map(lambda t: None if pd.isna(t) else t.isoformat()))
    result = _datetime(zoned, "s")
    return CastResult(result.values, result.bad | (naive & utc.isna()), result.code)


def _choice_to_label(raw: pd.Series, field: FieldMap, formatted: pd.Series | None) -> CastResult:
    codes = _integer(raw)
    labels = codes.values.map(field.option_set or {}).astype("str")
    if formatted is not None:
        # Org-specific codes missing from the YAML: use Dataverse's own label for the code.
        labels = labels.fillna(as_string(formatted).where(codes.values.notna()))
    bad = codes.bad | (codes.values.notna() & labels.isna())
    return CastResult(labels, bad, "UNKNOWN_OPTION")


def _label(raw: pd.Series, field: FieldMap) -> CastResult:
    values = as_string(raw).str.strip()
    known = values.isin(list((field.option_set or {}).values()))
    return CastResult(values, values.notna() & ~known, "UNKNOWN_OPTION")


def _multi_to_labels(raw: pd.Series, field: FieldMap) -> CastResult:
    text = as_string(raw)
    parts = text.str.split(",").explode().str.strip()
    codes = pd.to_numeric(parts, errors="coerce").astype("Int64")
    labels = codes.map(field.option_set or {}).astype("str")
    unknown = (parts.notna() & labels.isna()).groupby(level=0).any()
    joined = labels.dropna().groupby(level=0).agg(";".join)
    values = joined.reindex(raw.index).astype("str").where(text.notna())
    return CastResult(values, unknown.reindex(raw.index, fill_value=False), "UNKNOWN_OPTION")


def _multi_labels(raw: pd.Series, field: FieldMap) -> CastResult:
    text = as_string(raw)
    parts = text.str.split(";").explode().str.strip()
    known = parts.isin(list((field.option_set or {}).values()))
    unknown = (parts.notna() & ~known).groupby(level=0).any()
    joined = parts.dropna().groupby(level=0).agg(";".join)
    values = joined.reindex(raw.index).astype("str").where(text.notna())
    return CastResult(values, unknown.reindex(raw.index, fill_value=False), "UNKNOWN_OPTION")


def _string_list(raw: pd.Series) -> CastResult:
    if raw.dtype == object:
        is_list = raw.map(lambda v: isinstance(v, list | tuple | np.ndarray), na_action="ignore")
        if is_list.fillna(False).astype(bool).any():
            joined = raw.str.join(";")
            return CastResult(as_string(joined), pd.Series(False, index=raw.index))
    return _string(raw)


def _guid(raw: pd.Series) -> CastResult:
    values = as_string(raw).str.strip().str.lower()
    return CastResult(values, pd.Series(False, index=raw.index))


_SIMPLE: dict[Cast, Callable[[pd.Series], CastResult]] = {
    Cast.STRING: _string,
    Cast.EMAIL: _email,
    Cast.INTEGER: _integer,
    Cast.DECIMAL: _decimal,
    Cast.BOOLEAN: _boolean,
    Cast.DATETIME: lambda s: _datetime(s, "s"),
    Cast.DATE: lambda s: _datetime(s, "D"),
    Cast.GUID: _guid,
    Cast.STRING_LIST: _string_list,
}


def to_canonical(
    raw: pd.Series, field: FieldMap, source: Side, formatted: pd.Series | None = None
) -> CastResult:
    """Cast one raw column into the field's canonical values.

    Args:
        raw: Values as read from ``source`` (Dataverse column or Marketo field).
        field: The field mapping (cast and option set).
        source: Which system ``raw`` came from; matters for option sets only.
        formatted: Optional Dataverse FormattedValue annotations for a choice column.

    Returns:
        Canonical values plus the mask and error code of values that could not be cast.
    """
    if field.cast is Cast.CHOICE:
        return _choice_to_label(raw, field, formatted) if source is Side.DYNAMICS else _label(raw, field)
    if field.cast is Cast.MULTICHOICE:
        return _multi_to_labels(raw, field) if source is Side.DYNAMICS else _multi_labels(raw, field)
    if field.cast is Cast.DATETIME:
        return _zoned_datetime(raw, field)
    result = _SIMPLE[field.cast](raw)
    if field.opt_out:
        # A "do not contact" flag that is not set is not set: Marketo leaves false values out
        # of its answers, Dataverse has false, and both mean the person has not opted out.
        values = result.values.where(result.values.notna() | result.bad, False)
        return CastResult(values.astype(result.values.dtype), result.bad, result.code)
    return result


def to_dynamics_values(canonical: pd.Series, field: FieldMap) -> pd.Series:
    """Turn canonical values into what Dataverse expects for ``field``.

    Labels become option-set integers (``Int64``; multi-select: ``"1,3"``), everything else is
    already in a Dataverse-compatible form. Labels must have been validated by
    :func:`to_canonical`, which reports unknown ones.
    """
    if field.cast is Cast.CHOICE:
        reverse = {label: code for code, label in (field.option_set or {}).items()}
        return canonical.map(reverse).astype("Int64")
    if field.cast is Cast.MULTICHOICE:
        reverse_s = {label: str(code) for code, label in (field.option_set or {}).items()}
        parts = canonical.str.split(";").explode().map(reverse_s)
        joined = parts.dropna().groupby(level=0).agg(",".join)
        return joined.reindex(canonical.index).astype("str").where(canonical.notna())
    return canonical

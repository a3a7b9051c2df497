"""Stable hashes of canonical values, per field and per record, for echo suppression.

A hash is a signed 64-bit integer (SipHash with pandas' fixed key, so it is identical across
processes and runs). Hashes are taken on canonical values (see
:mod:`crm_sync.transforms.casts`), so the same value read from Marketo or from Dataverse hashes
the same, and a value the sync wrote does not come back as a change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence


def value_hash(values: pd.Series) -> pd.Series:
    """Hash each value of one canonical column (missing values get one fixed hash)."""
    hashed = pd.util.hash_pandas_object(values, index=False).to_numpy()
    return pd.Series(hashed.view(np.int64), index=values.index)


def field_hashes(canonical: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Hash each named field of a canonical frame.

    Args:
        canonical: Canonical values under Marketo field names.
        names: Fields to hash; names absent from ``canonical`` are skipped.

    Returns:
        ``int64`` frame with the same index and one column per hashed field.
    """
    cols = {n: value_hash(canonical[n]) for n in names if n in canonical}
    return pd.DataFrame(cols, index=canonical.index)


def record_hash(hashes: pd.DataFrame) -> pd.Series:
    """Combine per-field hashes into one ``int64`` per record (column order does not matter)."""
    ordered = hashes[sorted(hashes.columns)]
    combined = pd.util.hash_pandas_object(ordered, index=False).to_numpy()
    return pd.Series(combined.view(np.int64), index=hashes.index)


def hashes_frame(stored: Sequence[Mapping[str, int] | None], index: Sequence[str]) -> pd.DataFrame:
    """Turn stored per-field hash dicts (id map ``field_hashes``) into a nullable ``Int64`` frame.

    Args:
        stored: One dict per record (``None`` when nothing was synced yet).
        index: Record keys (Dataverse GUIDs) aligned with ``stored``.
    """
    frame = pd.DataFrame.from_records([d or {} for d in stored], index=pd.Index(index, dtype="str"))
    return frame.astype("Int64")


def hashes_to_dicts(hashes: pd.DataFrame) -> list[dict[str, int]]:
    """Per-record dicts of the non-missing hashes, for storing in the id map."""
    columns = list(hashes.columns)
    values = hashes.to_numpy(dtype=object, na_value=None)
    return [{k: int(v) for k, v in zip(columns, row, strict=True) if v is not None} for row in values]


def hashes_to_json(hashes: pd.DataFrame) -> list[str]:
    """Per-record JSON text of the non-missing hashes, keys sorted: what ``json.dumps`` of
    :func:`hashes_to_dicts`'s dicts (``sort_keys``, no spaces) gives.

    Built by Arrow's string kernels column by column (a missing hash drops its key), about three
    times faster than joining Python strings per record on a full copy's pages.
    """
    import json

    if not len(hashes.columns):
        return ["{}"] * len(hashes)
    names = sorted(hashes.columns)
    typed = [hashes[n].astype("Int64") for n in names]
    columns = [
        (json.dumps(str(n)) + ":", c.to_numpy(dtype="int64", na_value=0), c.isna().to_numpy())
        for n, c in zip(names, typed, strict=True)
    ]
    texts: list[str] = []
    for start in range(0, len(hashes), JSON_CHUNK):
        part = slice(start, start + JSON_CHUNK)
        texts += _json_texts([(key, values[part], missing[part]) for key, values, missing in columns])
    return texts


JSON_CHUNK = 1000  # records whose hash texts are built at once (bounds the kernels' buffers)


def _json_texts(columns: list[tuple[str, np.ndarray, np.ndarray]]) -> list[str]:
    """The JSON texts of one chunk of records from (``"name":`` prefix, hashes, missing) columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # Each present hash is written as '"name":value,' and a missing one as "", then the last
    # comma is trimmed. (null_handling="skip" would be shorter, but pyarrow 26 drops the rows
    # where every input is null from its result.)
    parts = []
    for key, values, missing in columns:
        text = pc.cast(pa.array(values, mask=missing), pa.string())
        parts.append(pc.fill_null(pc.binary_join_element_wise(key, text, ",", ""), ""))
    body = pc.utf8_rtrim(pc.binary_join_element_wise(*parts, ""), characters=",")
    texts: list[str] = pc.binary_join_element_wise("{", body, "}", "").to_pylist()
    return texts

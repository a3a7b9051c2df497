"""Frame helpers every layer shares."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Set


@lru_cache(maxsize=256)
def _template(columns: tuple[str, ...], dtype: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=dtype) for c in columns})


def empty_frame(columns: Iterable[str], dtype: str = "str") -> pd.DataFrame:
    """A frame with these columns, all of ``dtype``, and no rows (concatenates cleanly).

    Built once per column set and copied after (a copy costs about a fiftieth of building the
    string columns again, and a plan asks for dozens of these per work unit).
    """
    return _template(tuple(columns), dtype).copy()


def member(values: pd.Series, members: Set[str]) -> np.ndarray:
    """``values.isin(members)`` at the cost of ``values``: pandas would first turn a large set
    into an array (with Arrow strings, once per call), which a staged plan or a load's chunk of
    link rows paid again and again."""
    return np.fromiter((v in members for v in values), dtype=bool, count=len(values))

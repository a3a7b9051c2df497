"""Frame helpers every layer shares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable


def empty_frame(columns: Iterable[str], dtype: str = "str") -> pd.DataFrame:
    """A frame with these columns, all of ``dtype``, and no rows (concatenates cleanly)."""
    return pd.DataFrame({c: pd.Series(dtype=dtype) for c in columns})

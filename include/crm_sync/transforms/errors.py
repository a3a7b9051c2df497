"""The errors frame: one row per rejected record and field, so the rest of a batch goes on.

Reasons never quote the offending value (it may be personal data); they say what is wrong
with it (``length 300 > 50``, ``not an email address``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from crm_sync.transforms.frames import empty_frame

ERROR_COLUMNS = ["entity", "direction", "record_id", "field", "code", "reason"]

REQUIRED = "REQUIRED"
FIELD_LENGTH = "FIELD_LENGTH"
INVALID_EMAIL = "INVALID_EMAIL"
INVALID_VALUE = "INVALID_VALUE"
UNKNOWN_OPTION = "UNKNOWN_OPTION"
UNRESOLVED_LOOKUP = "UNRESOLVED_LOOKUP"
MISSING_KEY = "MISSING_KEY"


class SchemaError(ValueError):
    """A mapped column is missing from the extracted data: pause the entity and alert (§5.2)."""


@dataclass(frozen=True)
class TransformResult:
    """Valid rows and the errors frame of the rows that were dropped.

    Attributes:
        frame: The transformed rows that passed validation (index preserved from the input).
        errors: Columns :data:`ERROR_COLUMNS`; a record may appear once per failing field.
    """

    frame: pd.DataFrame
    errors: pd.DataFrame

    @property
    def failed_ids(self) -> list[str]:
        """Distinct record ids that were rejected."""
        return sorted(self.errors["record_id"].astype(str).unique().tolist())


def empty_errors() -> pd.DataFrame:
    """Return an errors frame with no rows and the standard columns."""
    return empty_frame(ERROR_COLUMNS)


def error_rows(
    record_ids: pd.Series,
    bad: pd.Series,
    *,
    entity: str,
    direction: str,
    field: str,
    code: str,
    reason: str | pd.Series,
) -> pd.DataFrame:
    """Build error rows for the records where ``bad`` is True.

    Args:
        record_ids: Source record id per input row.
        bad: Boolean mask aligned with ``record_ids``.
        entity: Entity name.
        direction: ``d2m`` or ``m2d``.
        field: The field (source-side name) that failed.
        code: Error code, e.g. ``FIELD_LENGTH``.
        reason: One reason for all rows, or a per-row Series aligned with ``record_ids``.
    """
    bad = bad.fillna(False).astype(bool)
    if not bad.any():
        return empty_errors()
    ids = record_ids[bad].astype("str")
    reasons = reason[bad].astype("str") if isinstance(reason, pd.Series) else reason
    return pd.DataFrame(
        {
            "entity": entity,
            "direction": direction,
            "record_id": ids,
            "field": field,
            "code": code,
            "reason": reasons,
        },
        index=ids.index,
    )


def concat_errors(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate error frames (ignoring empty ones) into one with a clean index."""
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty_errors()
    return pd.concat(parts, ignore_index=True)[ERROR_COLUMNS]


def split_valid(frame: pd.DataFrame, errors: pd.DataFrame, bad_rows: pd.Series) -> TransformResult:
    """Drop the rows flagged in ``bad_rows`` from ``frame`` and pair them with ``errors``."""
    return TransformResult(frame=frame.loc[~bad_rows.to_numpy()], errors=errors)

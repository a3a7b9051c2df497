"""The columns and Arrow schemas of a staged plan's frames, and their builders.

A plan (:mod:`crm_sync.engine.plan`) hands the load two frames per batch: ``ops``, one row per
write (``op``, ``dynamics_id``, ``payload`` as JSON text, exactly what the hook's batch writer
receives), and ``links``, the id-map rows to store once a record's writes all succeeded.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from crm_sync.engine.json_records import to_json_texts
from crm_sync.transforms import DYNAMICS_ID, MARKETO_ID
from crm_sync.transforms.frames import empty_frame

OP_COLUMNS = ["op", DYNAMICS_ID, "payload"]
HANDOVER_COLUMNS = ["entity", DYNAMICS_ID, "state"]
LINK_COLUMNS = [DYNAMICS_ID, MARKETO_ID, "state"]  # what the lifecycle rules read of a link
READ_AT = "_read_at"  # when a Marketo snapshot row was read (staged person feed)
LINK_FRAME_COLUMNS = [
    DYNAMICS_ID,
    MARKETO_ID,
    "field_hashes",
    "last_hash_d2m",
    "last_hash_m2d",
    "person_type",
    "filter_value",
    "email",
    "link_entity",  # the entity whose id map gets the row (a person may link to a contact)
]
# Column types of staged ops and link frames, for files written a part at a time (the id map's
# types: hashes are 64-bit integers, the filter value a nullable boolean).
# A full copy's bulk units add each person's import line (the CSV cells of its payload, see
# engine.full_copy.import_sizes) and the number of columns the line holds; null elsewhere.
IMPORT_LINE = "line"
IMPORT_LINE_WIDTH = "line_width"
OPS_SCHEMA = pa.schema(
    [*((c, pa.string()) for c in OP_COLUMNS), (IMPORT_LINE, pa.string()), (IMPORT_LINE_WIDTH, pa.int32())]
)
LINKS_SCHEMA = pa.schema(
    [
        (c, pa.int64() if c.startswith("last_hash") else pa.bool_() if c == "filter_value" else pa.string())
        for c in LINK_FRAME_COLUMNS
    ]
)


def empty_ops() -> pd.DataFrame:
    """An operations frame with no rows."""
    return empty_frame(OP_COLUMNS)


def empty_links() -> pd.DataFrame:
    """A link frame with no rows."""
    return empty_frame(LINK_FRAME_COLUMNS, "object")


def ops_frame(op: str, ids: list[str], payloads: list[dict[str, Any]]) -> pd.DataFrame:
    """One operation per id, its payload staged as JSON text."""
    return pd.DataFrame(
        {"op": op, DYNAMICS_ID: pd.Series(ids, dtype="str"), "payload": to_json_texts(payloads)}
    )

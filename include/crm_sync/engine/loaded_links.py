"""The id-map rows a load stores for the records it wrote, read from the plan's staged link rows.

A bulk unit holds tens of thousands of records: their link rows (with the per-field hash texts)
are read and stored a chunk at a time, and the hash texts go into the id map as they were staged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crm_sync.engine.plan_frames import LINK_FRAME_COLUMNS
from crm_sync.state import upsert_links
from crm_sync.state.db import JsonText
from crm_sync.transforms import DYNAMICS_ID, MARKETO_ID
from crm_sync.transforms.frames import member

if TYPE_CHECKING:
    from collections.abc import Mapping, Set

    import pandas as pd
    from sqlalchemy.orm import Session

    from crm_sync.config import EntityConfig
    from crm_sync.engine.staging import BatchRef, StagingArea

# Id-map rows stored per statement: a bulk unit holds tens of thousands of records, whose rows
# (with their parsed per-field hashes) took more memory than the rest of the load together.
LINK_CHUNK_ROWS = 2_000


def store_links(
    session: Session,
    entity: EntityConfig,
    staging: StagingArea,
    ref: BatchRef,
    written: Set[str],
    marketo_ids: Mapping[str, str],
) -> None:
    """Store the staged link rows of the records in ``written``, with the Marketo ids the
    writes answered (``marketo_ids``, by Dataverse GUID)."""
    for part in staging.iter_frames(ref, LINK_CHUNK_ROWS):
        for target, rows in link_rows_of(entity, part, written, marketo_ids).items():
            upsert_links(session, target, rows)


def link_rows_of(
    entity: EntityConfig, frame: pd.DataFrame, written: Set[str], marketo_ids: Mapping[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Id-map rows of the records written successfully, by the entity whose map they go to."""
    rows: dict[str, list[dict[str, Any]]] = {}
    chosen = frame[member(frame[DYNAMICS_ID], written)]
    # Column by column (to_dict("records") cost 18% of a bulk unit's load task in its profile).
    names = [c for c in LINK_FRAME_COLUMNS if c in chosen]
    columns = [chosen[c].tolist() for c in names]
    for values in zip(*columns, strict=True):
        rec = dict(zip(names, values, strict=True))
        row = {c: rec.get(c) for c in LINK_FRAME_COLUMNS if c != "link_entity"}
        hashes = row["field_hashes"]
        # A person linked by email has no agreed values yet; the next merge compares in full.
        row["field_hashes"] = JsonText(hashes) if isinstance(hashes, str) and hashes else None
        row[MARKETO_ID] = marketo_ids.get(str(rec[DYNAMICS_ID]), row[MARKETO_ID])
        row["state"] = "active"
        target = rec.get("link_entity")
        rows.setdefault(target if isinstance(target, str) and target else entity.name, []).append(row)
    return rows


def marketo_ids_of(links: pd.DataFrame) -> dict[str, str]:
    """Marketo id of each record of the plan whose Marketo id is known (Dataverse GUID → id)."""
    if links.empty or MARKETO_ID not in links:
        return {}
    known = links.dropna(subset=[DYNAMICS_ID, MARKETO_ID])
    return {
        str(d): str(m)
        for d, m in zip(known[DYNAMICS_ID], known[MARKETO_ID], strict=True)
        if str(m) not in ("", "nan", "<NA>", "None")
    }

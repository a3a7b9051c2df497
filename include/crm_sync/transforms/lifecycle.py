"""A person's record changing hands in Dynamics: qualification (§6.2) and merges (§6.3).

Pure functions over a batch of Dataverse rows and id-map rows. They decide which Marketo person
a record continues, so the plan writes to the person the record already has instead of making a
second one:

* **Qualification.** A new contact whose origin lead (``originatingleadid``) is linked to a
  Marketo person continues that person: it is re-keyed to the contact and re-typed, and the
  lead's link is handed over (state ``converted``), so the lead stops updating it. A contact
  whose origin lead is not synced (filter No) is simply a new person; a contact filtered out
  leaves the lead's person with the lead (the four cases of §6.2's table).
* **Merges.** A record merged into another (``merged`` true, ``masterid`` the survivor) never
  writes again. Its Marketo person is merged into the survivor's when both are linked, moves
  to the survivor when only the merged record was linked, and is flagged deleted when the
  survivor does not sync (filter No); the merged record's link is handed over (state
  ``merged``) and ends up naming the survivor's person.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from crm_sync.state.models import ACTIVE, CONVERTED, MERGED
from crm_sync.transforms.casts import as_string, lower_ids
from crm_sync.transforms.filters import sync_filter_mask
from crm_sync.transforms.frames import empty_frame

if TYPE_CHECKING:
    from crm_sync.config import EntityConfig


# What a merged record's Marketo person becomes.
MERGE_PERSONS = "merge"  # both linked: merge the loser's person into the survivor's
MOVE_LINK = "move"  # only the loser linked: its person continues as the survivor
FLAG_DELETED = "flag"  # the survivor does not sync: the loser's person is flagged deleted
NOTHING = "nothing"  # the loser had no person (or already shares the survivor's)

CONVERSION_COLUMNS = ["dynamics_id", "marketo_id", "origin_id"]
MERGE_COLUMNS = ["dynamics_id", "master_id", "marketo_id", "master_marketo_id", "action"]


def _marketo_ids(links: pd.DataFrame, states: tuple[str, ...]) -> pd.Series:
    """Marketo id by GUID of the links in ``states`` that name a person."""
    if links.empty:
        return pd.Series(dtype="str")
    held = links[links["state"].fillna(ACTIVE).isin(states) & links["marketo_id"].notna()]
    ids = pd.Series(as_string(held["marketo_id"]).to_numpy(), index=lower_ids(held["dynamics_id"]).to_numpy())
    return ids[~ids.index.duplicated(keep="last")]


def conversions(
    entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame, origins: pd.DataFrame
) -> pd.DataFrame:
    """Records of ``rows`` that continue their origin record's Marketo person.

    Args:
        entity: The entity (its ``converted_from`` names the origin entity and column).
        rows: Dataverse rows that pass the sync filter.
        links: This entity's links of the batch.
        origins: The origin entity's links of the origin ids (any state).

    Returns:
        :data:`CONVERSION_COLUMNS`: each unlinked record whose origin's link (active, or handed
        over to it in an earlier attempt) names a Marketo person.
    """
    rule = entity.converted_from
    if rule is None or rows.empty or rule.column not in rows:
        return empty_frame(CONVERSION_COLUMNS)
    ids = lower_ids(rows[entity.dynamics.key])
    origin = lower_ids(rows[rule.column])
    person = origin.map(_marketo_ids(origins, (ACTIVE, CONVERTED)))
    linked = set(_marketo_ids(links, (ACTIVE,)).index)
    take = person.notna() & ~ids.isin(linked)
    return pd.DataFrame(
        {"dynamics_id": ids[take], "marketo_id": person[take], "origin_id": origin[take]},
        columns=CONVERSION_COLUMNS,
    ).reset_index(drop=True)


def merged_mask(entity: EntityConfig, rows: pd.DataFrame) -> pd.Series:
    """True for the rows merged into another record (they never write again)."""
    rule = entity.merges
    if rule is None or rule.flag not in rows or rows.empty:
        return pd.Series(False, index=rows.index)
    return rows[rule.flag].astype(object).isin([True, "true", "True"])


def merges(entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """What becomes of the Marketo person of each merged record of ``rows``.

    Args:
        entity: The entity (its ``merges`` names the flag and master columns).
        rows: The Dataverse rows of the batch, the survivors of its merged records included
            (the extract stages them together), before the sync filter.
        links: This entity's links of the batch's records and survivors (any state).

    Returns:
        :data:`MERGE_COLUMNS`, one row per merged record.
    """
    rule = entity.merges
    merged = merged_mask(entity, rows)
    if rule is None or not merged.any():
        return empty_frame(MERGE_COLUMNS)
    key = entity.dynamics.key
    losers = lower_ids(rows.loc[merged, key])
    masters = lower_ids(rows.loc[merged, rule.master])
    # A merged record keeps its person until the merge is written (a retry finds it again).
    loser_person = losers.map(_marketo_ids(links, (ACTIVE, MERGED)))
    master_person = masters.map(_marketo_ids(links, (ACTIVE,)))
    syncing = set(lower_ids(rows.loc[sync_filter_mask(rows, entity).to_numpy() & ~merged.to_numpy(), key]))
    master_syncs = masters.isin(syncing)
    action = pd.Series(NOTHING, index=losers.index)
    has_person = loser_person.notna() & masters.notna()
    action[has_person & ~master_syncs] = FLAG_DELETED
    action[has_person & master_syncs & master_person.isna()] = MOVE_LINK
    action[has_person & master_syncs & master_person.notna() & master_person.ne(loser_person)] = MERGE_PERSONS
    return pd.DataFrame(
        {
            "dynamics_id": losers,
            "master_id": masters,
            "marketo_id": loser_person,
            "master_marketo_id": master_person,
            "action": action,
        },
        columns=MERGE_COLUMNS,
    ).reset_index(drop=True)

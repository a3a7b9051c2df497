"""The writes of a person's life events, planned with a batch: a person taken over by another
record (a qualified lead's contact, a merge's survivor) is re-keyed; Dynamics merges become
Marketo merges or persons flagged deleted, and hand the merged records' links over."""

from __future__ import annotations

import pandas as pd

from crm_sync.config import DeletePolicy, EntityConfig
from crm_sync.engine.plan_frames import empty_ops, ops_frame
from crm_sync.ops import MARKETO_FLAG_DELETED, MARKETO_MERGE, MARKETO_REPOINT
from crm_sync.state.models import HANDED_OVER, MERGED
from crm_sync.transforms import DYNAMICS_ID, deletion_records
from crm_sync.transforms.casts import lower_ids
from crm_sync.transforms.lifecycle import FLAG_DELETED, MERGE_PERSONS, MOVE_LINK, NOTHING


def handed_over(entity: EntityConfig, rows: pd.DataFrame, links: pd.DataFrame) -> pd.Series:
    """True for rows whose link was handed over (a qualified lead, a merged record)."""
    if links.empty:
        return pd.Series(False, index=rows.index)
    handed = links.loc[links["state"].isin(HANDED_OVER), DYNAMICS_ID]
    return lower_ids(rows[entity.dynamics.key]).isin(set(lower_ids(handed)))


def taken_over(converted: pd.DataFrame, merge_plan: pd.DataFrame) -> pd.Series:
    """Marketo id by GUID of the records that take over a person: qualified records, and the
    survivors of merged records whose person moves to them."""
    moved = merge_plan[merge_plan["action"].eq(MOVE_LINK)]
    ids = pd.concat(
        [
            pd.Series(
                converted["marketo_id"].to_numpy(), index=converted["dynamics_id"].to_numpy(), dtype="str"
            ),
            pd.Series(moved["marketo_id"].to_numpy(), index=moved["master_id"].to_numpy(), dtype="str"),
        ]
    )
    return ids[~ids.index.duplicated()]


def repoint_ops(entity: EntityConfig, takeovers: pd.Series, written: pd.Index) -> pd.DataFrame:
    """Re-key and re-type the persons taken over (before their records' upserts are sent)."""
    take = takeovers[takeovers.index.isin({str(i) for i in written})]
    if take.empty:
        return empty_ops()
    key, type_field = entity.marketo.key, entity.marketo.type_field
    payloads = [
        {"id": int(mid), key: did, **({type_field: entity.marketo.person_type} if type_field else {})}
        for did, mid in take.items()
    ]
    return ops_frame(MARKETO_REPOINT, [str(i) for i in take.index], payloads)


def merge_ops(entity: EntityConfig, merge_plan: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The writes of Dynamics merges: Marketo merges, persons flagged deleted; and the merged
    records' hand-overs (their links name the survivor's person once the writes succeed)."""
    ops = [empty_ops()]
    merging = merge_plan[merge_plan["action"].eq(MERGE_PERSONS)]
    if len(merging):
        payloads = [
            {"winner": int(w), "losers": [int(m)]}
            for w, m in zip(merging["master_marketo_id"], merging["marketo_id"], strict=True)
        ]
        ops.append(ops_frame(MARKETO_MERGE, merging["dynamics_id"].astype(str).tolist(), payloads))
    flagging = merge_plan[merge_plan["action"].eq(FLAG_DELETED)]
    policy, records = deletion_records(entity, flagging["dynamics_id"])
    if policy is DeletePolicy.FLAG and len(records):
        payloads = records.astype(object).to_dict("records")
        ops.append(ops_frame(MARKETO_FLAG_DELETED, flagging["dynamics_id"].astype(str).tolist(), payloads))
    handed = merge_plan.loc[merge_plan["action"].ne(NOTHING), "dynamics_id"]
    handovers = pd.DataFrame({"entity": entity.name, DYNAMICS_ID: handed.astype(str), "state": MERGED})
    return pd.concat(ops, ignore_index=True), handovers

"""Per-field three-way merge of both sides' changes against the last synced values (§2.1).

For each record (by Dataverse GUID) and mapped field:

* changed only in Dynamics (and the field flows D→M) → write the Dynamics value to Marketo;
* changed only in Marketo (and the field flows M→D) → write the Marketo value to Dynamics;
* changed on both sides to different values → a conflict: the field's winner (Marketo for
  leads, Dynamics for contacts, per-field overrides in the YAML) is written to the other side
  and the conflict is logged with both values;
* changed on both sides to the same value, or not changed at all → nothing is written. This
  is also what suppresses echoes: a value the sync wrote is the last synced value, so reading
  it back is not a change.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from crm_sync.config import Direction, EntityConfig, Side
from crm_sync.transforms.hashing import changed, field_hashes
from crm_sync.transforms.mapping import DYNAMICS_ID

CONFLICT_COLUMNS = ["entity", "record_key", "field", "marketo_value", "dynamics_value", "winner"]


@dataclass(frozen=True)
class Resolution:
    """What to write each way after merging one batch of changes.

    All frames are indexed by Dataverse GUID over the union of records seen on either side.

    Attributes:
        to_marketo: Canonical Dynamics-side values (Marketo names).
        to_marketo_mask: True for the cells to send to Marketo.
        to_dynamics: Canonical Marketo-side values (Marketo names; map with
            ``canonical_to_dynamics`` before writing).
        to_dynamics_mask: True for the cells to send to Dynamics.
        agreed: Field hashes both sides will hold once the writes succeed (store them in the
            id map for each record whose writes succeeded).
        conflicts: Columns :data:`CONFLICT_COLUMNS`.
    """

    to_marketo: pd.DataFrame
    to_marketo_mask: pd.DataFrame
    to_dynamics: pd.DataFrame
    to_dynamics_mask: pd.DataFrame
    agreed: pd.DataFrame
    conflicts: pd.DataFrame

    @property
    def marketo_ids(self) -> pd.Index:
        """Records with at least one field to write to Marketo."""
        return self.to_marketo_mask.index[self.to_marketo_mask.any(axis=1).to_numpy()]

    @property
    def dynamics_ids(self) -> pd.Index:
        """Records with at least one field to write to Dynamics."""
        return self.to_dynamics_mask.index[self.to_dynamics_mask.any(axis=1).to_numpy()]

    @property
    def unchanged_ids(self) -> pd.Index:
        """Records that need no write either way (echoes and no-op changes)."""
        idle = ~(self.to_marketo_mask.any(axis=1) | self.to_dynamics_mask.any(axis=1))
        return idle.index[idle.to_numpy()]


def _by_key(frame: pd.DataFrame | None, index: pd.Index | None = None) -> pd.DataFrame:
    """Index a canonical frame by Dataverse GUID, keeping the last row per record."""
    if frame is None or frame.empty or DYNAMICS_ID not in frame:
        return pd.DataFrame(index=pd.Index([], dtype="str") if index is None else index)
    keyed = frame[frame[DYNAMICS_ID].notna()].set_index(DYNAMICS_ID)
    return keyed[~keyed.index.duplicated(keep="last")]


def tracked_columns(entity: EntityConfig) -> list[tuple[str, Direction, Side]]:
    """Every Marketo-side column the merge tracks: mapped fields plus resolved lookups.

    Lookups (owner, company) flow Dynamics → Marketo only, so Dynamics always wins them; they
    are tracked so that an owner change alone is a change.
    """
    cols = [(f.name, entity.field_direction(f), entity.winner(f)) for f in entity.fields]
    seen = {c[0] for c in cols}
    for lk in entity.lookups:
        if lk.marketo not in seen:
            cols.append((lk.marketo, Direction.D2M, Side.DYNAMICS))
            seen.add(lk.marketo)
    return cols


def _text(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))


def resolve_changes(
    entity: EntityConfig,
    dynamics: pd.DataFrame | None,
    marketo: pd.DataFrame | None,
    last: pd.DataFrame | None,
) -> Resolution:
    """Merge one batch of changes from both sides.

    Args:
        entity: The entity (field directions and conflict winners).
        dynamics: Canonical Dynamics-side records (``dynamics_to_canonical``), or None.
        marketo: Canonical Marketo-side records (``marketo_to_canonical``), or None. Rows
            without ``dynamics_id`` (unlinked persons) are ignored here.
        last: Last synced field hashes indexed by GUID (``hashes_frame``), or None.

    Returns:
        The writes per side, the agreed hashes and the conflict log rows.
    """
    d = _by_key(dynamics)
    m = _by_key(marketo)
    keys = d.index.union(m.index)
    tracked = tracked_columns(entity)
    names = [c[0] for c in tracked]
    d_vals = d.reindex(index=keys, columns=[n for n in names if n in d.columns])
    m_vals = m.reindex(index=keys, columns=[n for n in names if n in m.columns])
    last_h = (last if last is not None else pd.DataFrame()).reindex(index=keys, columns=names).astype("Int64")
    hd = field_hashes(d_vals, names).astype("Int64")
    hm = field_hashes(m_vals, names).astype("Int64")
    in_d = pd.Series(keys.isin(d.index), index=keys)
    in_m = pd.Series(keys.isin(m.index), index=keys)
    d_changed = changed(hd, last_h) if len(hd.columns) else hd.astype(bool)
    m_changed = changed(hm, last_h) if len(hm.columns) else hm.astype(bool)
    to_m = pd.DataFrame(False, index=keys, columns=names)
    to_d = pd.DataFrame(False, index=keys, columns=names)
    agreed = last_h.copy()
    conflict_parts = []
    for n, flow, winner in tracked:
        dc = (d_changed[n] & in_d) if (n in d_changed and flow.includes(Direction.D2M)) else in_d & False
        mc = (m_changed[n] & in_m) if (n in m_changed and flow.includes(Direction.M2D)) else in_m & False
        both = dc & mc
        same = both & hd[n].eq(hm[n]).fillna(False).astype(bool) if both.any() else both
        conflict = both & ~same
        to_m[n] = dc & ~same & ~(conflict & (winner is Side.MARKETO))
        to_d[n] = mc & ~same & ~(conflict & (winner is Side.DYNAMICS))
        if n in hd:
            agreed[n] = agreed[n].mask(to_m[n] | same, hd[n])
        if n in hm:
            agreed[n] = agreed[n].mask(to_d[n], hm[n])
        if conflict.any():
            ids = keys[conflict.to_numpy()]
            conflict_parts.append(
                pd.DataFrame(
                    {
                        "entity": entity.name,
                        "record_key": ids,
                        "field": n,
                        "marketo_value": _text(m_vals.loc[ids, n]).to_numpy(),
                        "dynamics_value": _text(d_vals.loc[ids, n]).to_numpy(),
                        "winner": winner.value,
                    }
                )
            )
    conflicts = (
        pd.concat(conflict_parts, ignore_index=True)
        if conflict_parts
        else pd.DataFrame({c: pd.Series(dtype="str") for c in CONFLICT_COLUMNS})
    )
    return Resolution(
        to_marketo=d.reindex(index=keys),
        to_marketo_mask=to_m,
        to_dynamics=m.reindex(index=keys),
        to_dynamics_mask=to_d,
        agreed=agreed,
        conflicts=conflicts,
    )

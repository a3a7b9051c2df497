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

Consent fields (``opt_out: true`` in the YAML, true = do not contact) follow their own rule,
whatever the conflict winner: an opt-out made on either side is always carried to the other; a
re-subscribe (opted out at the last sync, not any more) is carried only from the entity's
``consent_owner`` side. A re-subscribe on the other side is refused: nothing goes to the owner,
and the opt-out is written back to the side that dropped it, so the two never disagree. Every
opt-out and re-subscribe the merge sees is a row of the consent log, with both sides' values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from crm_sync.config import Direction, EntityConfig, Side
from crm_sync.transforms.frames import empty_frame
from crm_sync.transforms.hashing import field_hashes, value_hash
from crm_sync.transforms.mapping import DYNAMICS_ID

CONFLICT_COLUMNS = ["entity", "record_key", "field", "marketo_value", "dynamics_value", "winner"]
CONSENT_COLUMNS = [
    "entity", "record_key", "field", "marketo_value", "dynamics_value", "changed_in", "outcome"
]  # fmt: skip
# Consent log outcomes.
OPT_OUT = "opt_out"  # an opt-out carried to the other side
RESUBSCRIBE = "resubscribe"  # a re-subscribe on the consent owner's side, carried across
RESUBSCRIBE_REFUSED = "resubscribe_refused"  # a re-subscribe elsewhere: opt-out written back


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
        consents: Columns :data:`CONSENT_COLUMNS`: the opt-outs and re-subscribes seen.
    """

    to_marketo: pd.DataFrame
    to_marketo_mask: pd.DataFrame
    to_dynamics: pd.DataFrame
    to_dynamics_mask: pd.DataFrame
    agreed: pd.DataFrame
    conflicts: pd.DataFrame
    consents: pd.DataFrame = field(default_factory=lambda: empty_frame(CONSENT_COLUMNS))

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


def _present(keys: pd.Index, side: pd.Index) -> np.ndarray:
    """Which of ``keys`` (the union of both sides' keys) one side has; without a hash table when
    that side has all of them or none (a full copy reads one side only)."""
    if len(side) == len(keys):
        return np.ones(len(keys), dtype=bool)
    if len(side) == 0:
        return np.zeros(len(keys), dtype=bool)
    return np.asarray(keys.isin(side), dtype=bool)


def _int_matrix(frame: pd.DataFrame, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Stored hashes as an ``int64`` (record x field) array and its missing-value mask."""
    values = np.zeros((len(frame), len(names)), dtype=np.int64)
    missing = np.ones((len(frame), len(names)), dtype=bool)
    for j, n in enumerate(names):
        column = frame[n]
        if column.isna().all():
            continue
        typed = column.astype("Int64")
        missing[:, j] = typed.isna().to_numpy()
        values[:, j] = typed.to_numpy(dtype=np.int64, na_value=0)
    return values, missing


def _hash_matrix(values: pd.DataFrame, names: list[str], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Field hashes of one side as an ``int64`` (record x field) array; which fields it has."""
    hashes = np.zeros((rows, len(names)), dtype=np.int64)
    present = np.array([n in values.columns for n in names], dtype=bool)
    for j, n in enumerate(names):
        if present[j]:
            hashes[:, j] = value_hash(values[n]).to_numpy()
    return hashes, present


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
    last_h = (last if last is not None else pd.DataFrame()).reindex(index=keys, columns=names)
    # The merge runs on (record x field) arrays, all fields at once: per-field Series work
    # cost more than the hashing itself on a full copy's pages (issue 18's plan profile).
    lv, l_na = _int_matrix(last_h, names)
    hd, d_has = _hash_matrix(d_vals, names, len(keys))
    hm, m_has = _hash_matrix(m_vals, names, len(keys))
    in_d = _present(keys, d.index)[:, None]
    in_m = _present(keys, m.index)[:, None]
    flows_d2m = np.array([flow.includes(Direction.D2M) for _, flow, _ in tracked], dtype=bool)
    flows_m2d = np.array([flow.includes(Direction.M2D) for _, flow, _ in tracked], dtype=bool)
    marketo_wins = np.array([winner is Side.MARKETO for *_, winner in tracked], dtype=bool)
    dc = in_d & (d_has & flows_d2m) & (l_na | (lv != hd))
    mc = in_m & (m_has & flows_m2d) & (l_na | (lv != hm))
    both = dc & mc
    same = both & (hd == hm)
    conflict = both & ~same
    to_m = dc & ~same & ~(conflict & marketo_wins)
    to_d = mc & ~same & ~(conflict & ~marketo_wins)
    take_d = (to_m | same) & d_has
    take_m = to_d & m_has
    agreed_v = np.where(take_m, hm, np.where(take_d, hd, lv))
    agreed_na = l_na & ~take_d & ~take_m
    conflict_parts = []
    opt_out = {f.name for f in entity.fields if f.opt_out}
    consent_parts: list[pd.DataFrame] = []
    write_back_m: dict[str, np.ndarray] = {}
    write_back_d: dict[str, np.ndarray] = {}
    for j, (n, flow, winner) in enumerate(tracked):
        if n in opt_out:
            last_n = (lv[:, j], l_na[:, j])
            consent = _opt_out_rule(entity, n, flow, dc[:, j], mc[:, j], d_vals, m_vals, last_n, keys)
            to_m[:, j] = (to_m[:, j] | consent.send_m) & ~consent.keep_m
            to_d[:, j] = (to_d[:, j] | consent.send_d) & ~consent.keep_d
            agreed_v[consent.settled_out, j] = consent.out_hash
            agreed_na[consent.settled_out, j] = False
            write_back_m |= {n: consent.back_m}
            write_back_d |= {n: consent.back_d}
            if len(consent.rows):
                consent_parts.append(consent.rows)
        if conflict[:, j].any():
            ids = keys[conflict[:, j]]
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
    agreed = pd.DataFrame(
        {n: pd.arrays.IntegerArray(agreed_v[:, j], agreed_na[:, j]) for j, n in enumerate(names)},
        index=keys,
        columns=names,
    )
    to_m_frame = pd.DataFrame(to_m, index=keys, columns=names)
    to_d_frame = pd.DataFrame(to_d, index=keys, columns=names)
    conflicts = (
        pd.concat(conflict_parts, ignore_index=True) if conflict_parts else empty_frame(CONFLICT_COLUMNS)
    )
    return Resolution(
        to_marketo=_with_opt_outs(d.reindex(index=keys), write_back_m, entity, marketo_side=True),
        to_marketo_mask=to_m_frame,
        to_dynamics=_with_opt_outs(m.reindex(index=keys), write_back_d, entity, marketo_side=False),
        to_dynamics_mask=to_d_frame,
        agreed=agreed,
        conflicts=conflicts,
        consents=pd.concat(consent_parts, ignore_index=True)
        if consent_parts
        else empty_frame(CONSENT_COLUMNS),
    )


@dataclass(frozen=True)
class _Consent:
    """The opt-out rule's verdict on one consent field of one batch (boolean arrays over the
    batch's record keys).

    ``send_m``/``send_d``: cells to write to Marketo/Dynamics whatever the conflict rule said;
    ``keep_m``/``keep_d``: cells never to write there (a refused re-subscribe, or a value that
    would undo an opt-out); ``back_m``/``back_d``: cells whose written value is the opt-out itself
    (written back to the side that dropped it); ``settled_out``: records both sides hold opted out
    once the writes succeed (``out_hash`` is the hash of that value).
    """

    send_m: np.ndarray
    send_d: np.ndarray
    keep_m: np.ndarray
    keep_d: np.ndarray
    back_m: np.ndarray
    back_d: np.ndarray
    settled_out: np.ndarray
    out_hash: int
    rows: pd.DataFrame


def _opted_out(values: pd.DataFrame, name: str, rows: int) -> np.ndarray:
    if name not in values:
        return np.zeros(rows, dtype=bool)
    return values[name].astype("boolean").to_numpy(dtype=bool, na_value=False)


def _known(values: pd.DataFrame, name: str, rows: int) -> np.ndarray:
    """Records whose value of ``name`` this batch read from that side (not missing)."""
    if name not in values:
        return np.zeros(rows, dtype=bool)
    return values[name].notna().to_numpy(dtype=bool)


def _opt_out_rule(
    entity: EntityConfig,
    name: str,
    flow: Direction,
    d_changed: np.ndarray,
    m_changed: np.ndarray,
    d_vals: pd.DataFrame,
    m_vals: pd.DataFrame,
    last: tuple[np.ndarray, np.ndarray],
    keys: pd.Index,
) -> _Consent:
    """Apply the consent rule (module docstring) to the opt-out field ``name``.

    ``d_vals``/``m_vals`` are indexed by ``keys``; ``last`` is the last synced hash of the field
    per record and where it is missing.
    """
    # Hashed as the canonical column is typed (the "boolean" cast), as the stored hashes were.
    typed = d_vals[name] if name in d_vals else m_vals.get(name)
    dtype = typed.dtype if typed is not None else "boolean"
    out_hash = int(field_hashes(pd.DataFrame({name: pd.Series([True], dtype=dtype)}), [name])[name].iloc[0])
    last_hash, first = last
    was_out = ~first & (last_hash == out_hash)
    size = len(keys)
    d_out, m_out = _opted_out(d_vals, name, size), _opted_out(m_vals, name, size)
    d_optout, m_optout = d_changed & d_out & ~was_out, m_changed & m_out & ~was_out
    d_resub, m_resub = d_changed & ~d_out & was_out, m_changed & ~m_out & was_out
    owner = entity.consent_owner
    d_refused = d_resub & ~((owner is Side.DYNAMICS) & ~m_optout)
    m_refused = m_resub & ~((owner is Side.MARKETO) & ~d_optout)
    to_marketo_ok, to_dynamics_ok = flow.includes(Direction.D2M), flow.includes(Direction.M2D)
    back_m = m_refused & ~d_optout & to_marketo_ok
    back_d = d_refused & ~m_optout & to_dynamics_ok
    # An opt-out reaches the other side even where that side's (different) change won a conflict.
    send_m = (d_optout & ~(m_changed & m_out) & to_marketo_ok) | back_m
    send_d = (m_optout & ~(d_changed & d_out) & to_dynamics_ok) | back_d
    # Never carry a value that drops an opt-out: a refused re-subscribe, or any "not opted out"
    # against an opt-out made on the other side in the same batch.
    keep_m = (d_refused | (m_optout & d_changed & ~d_out)) & ~back_m
    keep_d = (m_refused | (d_optout & m_changed & ~m_out)) & ~back_d
    # With nothing agreed yet and the other side's value not known in this batch (a first write:
    # a full copy matching an existing Marketo person by email, a lead linked to a Marketo-only
    # person), "not opted out" is never written: it could clear an opt-out made there.
    keep_m |= first & ~d_out & ~_known(m_vals, name, size) & ~back_m
    keep_d |= first & ~m_out & ~_known(d_vals, name, size) & ~back_d
    settled_out = d_optout | m_optout | d_refused | m_refused
    seen = d_optout | m_optout | d_resub | m_resub
    rows = pd.DataFrame(columns=CONSENT_COLUMNS)
    if seen.any():
        changed_in = np.where(
            d_changed & m_changed, "both", np.where(d_changed & ~m_changed, "dynamics", "marketo")
        )
        outcome = np.where(d_resub | m_resub, RESUBSCRIBE, OPT_OUT)
        outcome = np.where((d_refused | m_refused) & ~(d_optout | m_optout), RESUBSCRIBE_REFUSED, outcome)
        rows = pd.DataFrame(
            {
                "entity": entity.name,
                "record_key": keys[seen],
                "field": name,
                "marketo_value": _side_value(m_vals, name, seen, was_out),
                "dynamics_value": _side_value(d_vals, name, seen, was_out),
                "changed_in": changed_in[seen].astype(object),
                "outcome": outcome[seen].astype(object),
            }
        )
    return _Consent(send_m, send_d, keep_m, keep_d, back_m, back_d, settled_out, out_hash, rows)


def _side_value(values: pd.DataFrame, name: str, seen: np.ndarray, was_out: np.ndarray) -> list[str | None]:
    """Each seen record's value on one side as text; a side not read in this batch still holds
    the last synced value, which for a consent row is known only when it was the opt-out."""
    if name in values:
        read = values[name].astype("boolean").to_numpy(dtype=object, na_value=None)[seen]
    else:
        read = np.full(int(seen.sum()), None, dtype=object)
    known = np.array([v is not None for v in read], dtype=bool)
    text = np.where([bool(v) for v in read], "True", "False").astype(object) if len(read) else read
    last_out = was_out[seen]
    text[~known & last_out] = "True"
    text[~known & ~last_out] = None
    return list(text)


def _with_opt_outs(
    values: pd.DataFrame, back: dict[str, np.ndarray], entity: EntityConfig, *, marketo_side: bool
) -> pd.DataFrame:
    """Put the opt-out value in the cells written back; a Marketo write-back of a record Dynamics
    did not send in this batch also needs the person's key and type (sent with every write)."""
    marked = {n: b for n, b in back.items() if b.any()}
    if not marked:
        return values
    values = values.copy()
    for name, cells in marked.items():
        if name not in values:
            values[name] = pd.array([pd.NA] * len(values), dtype="boolean")
        values[name] = values[name].astype("boolean").mask(cells, True)
        if marketo_side:
            rows = cells
            fill = {entity.marketo.key: pd.Series(values.index.astype(str), index=values.index)}
            if entity.marketo.type_field and entity.marketo.person_type:
                fill[entity.marketo.type_field] = pd.Series(entity.marketo.person_type, index=values.index)
            for column, filler in fill.items():
                current = values[column] if column in values else pd.Series(None, index=values.index)
                values[column] = current.astype(object).mask(rows & current.isna().to_numpy(), filler)
    return values

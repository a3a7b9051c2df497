"""Matching of a full copy's persons: which unlinked person is written with email as the lookup
field (so an existing Marketo person with that email is updated, not duplicated).

Two passes over the staged plans keep memory bounded: :func:`count_emails` keeps a 64-bit hash
per email to find the emails several records share; :func:`plan_lookups` then decides for one
staged plan at a time, reading the id map in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crm_sync.ops import MARKETO_UPSERT
from crm_sync.state import read_scope
from crm_sync.transforms import DYNAMICS_ID
from crm_sync.transforms.casts import lower_ids
from crm_sync.transforms.frames import member

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from crm_sync.config import EntityConfig
    from crm_sync.engine.context import RunContext


def clean_emails(values: pd.Series) -> pd.Series:
    """Emails as compared: trimmed, lower case, empty as missing."""
    return values.astype("string").str.strip().str.lower().replace("", pd.NA)


def email_hashes(emails: pd.Series) -> np.ndarray:
    """64-bit hashes of the (present) emails: a partition's emails are counted as 8 bytes each."""
    present = emails.dropna().to_numpy(dtype=object)
    return pd.util.hash_array(present) if len(present) else np.empty(0, dtype=np.uint64)


def person_upserts(ops: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Lower-case id and email of each person upsert of one staged plan, from its link rows
    (which hold the email both sides have after the write: no payload is parsed)."""
    ids = lower_ids(ops.loc[ops["op"].eq(MARKETO_UPSERT), DYNAMICS_ID]).to_numpy()
    emails = pd.Series(links["email"].to_numpy(dtype=object), index=lower_ids(links[DYNAMICS_ID]).to_numpy())
    emails = emails[~emails.index.duplicated(keep="last")]
    return pd.DataFrame(
        {"id": ids, "email": clean_emails(pd.Series(emails.reindex(ids).to_numpy(), dtype=object))}
    )


@dataclass(frozen=True)
class Lookups:
    """What decides, plan by plan, how each person upsert finds its Marketo person.

    A person already linked in the id map is written by its key. An unlinked one is written with
    email as the lookup field when no other record of the copy (``shared``: hashes of the emails
    that occur more than once; a hash collision only means the key is used) nor of the id map
    holds that email, so an existing Marketo person with it is updated, not duplicated.

    Attributes:
        shared: Hashes of the emails more than one person upsert of the partition holds.
        upserts: Person upserts in the partition.
        person_entities: The entities whose id-map emails count as taken.
    """

    shared: frozenset[int]
    upserts: int
    person_entities: tuple[str, ...]

    @cached_property
    def shared_array(self) -> np.ndarray:
        """:attr:`shared` as a sorted ``uint64`` array, for vectorised membership tests."""
        return np.sort(np.fromiter(self.shared, dtype=np.uint64, count=len(self.shared)))


def count_emails(
    ctx: RunContext, refs: Sequence[Mapping[str, Any]], person_entities: Sequence[str]
) -> Lookups:
    """Count the partition's emails (first pass over the staged plans; 8 bytes per email held)."""
    hashes: list[np.ndarray] = []
    upserts = 0
    for ref in refs:
        # Only the columns the count needs: the payloads are the bulk of a staged plan.
        ops = ctx.staging.read_frame(ref["ops"], columns=["op", DYNAMICS_ID])
        found = person_upserts(ops, ctx.staging.read_frame(ref["links"], columns=[DYNAMICS_ID, "email"]))
        hashes.append(email_hashes(found["email"]))
        upserts += len(found)
    every = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
    values, counts = np.unique(every, return_counts=True)
    shared = frozenset(int(v) for v in values[counts > 1])
    return Lookups(shared, int(upserts), tuple(person_entities))


@dataclass(frozen=True)
class PlanLookups:
    """One staged plan's person upserts: the linked ones and those written by email."""

    linked: frozenset[str]
    by_email: frozenset[str]


def plan_lookups(
    entity: EntityConfig, ctx: RunContext, upserts: pd.DataFrame, lookups: Lookups | None
) -> PlanLookups:
    """The id map's links of the plan's upserts and, for persons, which go by email."""
    from crm_sync.state import lookup_links

    ids = upserts["id"].tolist()
    with read_scope(ctx.state) as session:
        links = lookup_links(session, entity.name, dynamics_ids=ids) if ids else None
    linked = frozenset(lower_ids(links["dynamics_id"])) if links is not None else frozenset()
    if lookups is None:
        return PlanLookups(linked, frozenset())
    email = upserts["email"]
    hashes = pd.Series(np.zeros(len(email), dtype=np.uint64), index=email.index)
    present = email.notna().to_numpy()
    hashes[present] = email_hashes(email)
    shared = np.isin(hashes.to_numpy(), lookups.shared_array)
    free = present & ~shared & ~member(upserts["id"], linked)
    candidates = upserts[free]
    known = known_emails(ctx, lookups.person_entities, sorted(set(candidates["email"])))
    taken = {
        did
        for did, e in zip(candidates["id"], candidates["email"], strict=True)
        if known.get(e, set()) - {did}
    }
    return PlanLookups(linked, frozenset(set(candidates["id"]) - taken))


def known_emails(
    ctx: RunContext, person_entities: Sequence[str], emails: Sequence[str]
) -> dict[str, set[str]]:
    """Dataverse ids already linked in the id map, by email (any person entity).

    The id map stores emails in lower case under an index on (entity, email): the emails are
    looked up in chunks of 500.
    """
    from sqlalchemy import select

    from crm_sync.state.db import chunks
    from crm_sync.state.models import IdMap

    found: dict[str, set[str]] = {}
    with read_scope(ctx.state) as session:
        for part in chunks(list(emails)):
            stmt = select(IdMap.email, IdMap.dynamics_id).where(
                IdMap.entity.in_(person_entities), IdMap.email.in_(list(part))
            )
            for email, did in session.execute(stmt):
                found.setdefault(str(email), set()).add(str(did).lower())
    return found

"""Email matching before creating a Dataverse lead for a Marketo-only person (§6.1, issue 6).

One match links instead of creating; several are reported as duplicate candidates and never
guessed; none means create. This is an improvement over the commercial sync and is switched
by the entity's ``dedup_by_email``.
"""

from __future__ import annotations

import pandas as pd

from crm_sync.transforms.casts import as_string
from crm_sync.transforms.frames import empty_frame

LINK = "link"
CREATE = "create"
DUPLICATES = "duplicate_candidates"
NO_EMAIL = "no_email"


def classify_email_matches(
    persons: pd.DataFrame, candidates: pd.DataFrame, enabled: bool = True
) -> pd.DataFrame:
    """Decide per Marketo person whether to link, create, or report duplicate candidates.

    Args:
        persons: ``marketo_id`` and ``email`` of the persons flagged for creation in Dynamics.
        candidates: Dataverse leads/contacts found by email: ``email``, ``dynamics_id`` and
            ``table`` (``lead`` or ``contact``).
        enabled: False reproduces the native behaviour: always create.

    Returns:
        ``marketo_id``, ``action`` (``link`` / ``create`` / ``duplicate_candidates`` /
        ``no_email``), ``dynamics_id`` and ``table`` of the single match (when linking) and
        ``candidates`` (``;``-joined GUIDs when there are several).
    """
    email = as_string(persons["email"]).str.strip().str.lower()
    out = pd.DataFrame({"marketo_id": as_string(persons["marketo_id"]).to_numpy()}, index=persons.index)
    keys = as_string(candidates["email"]).str.strip().str.lower()
    cands = candidates.assign(key=keys).dropna(subset=["key"])
    cands = cands.drop_duplicates(subset=["key", "dynamics_id"])
    counts = cands.groupby("key").size()
    first = cands.drop_duplicates(subset="key").set_index("key")
    joined = cands.groupby("key")["dynamics_id"].agg(lambda s: ";".join(sorted(s.astype(str))))
    n = email.map(counts).fillna(0).astype(int) if enabled else pd.Series(0, index=email.index)
    out["action"] = CREATE
    out.loc[(n == 1).to_numpy(), "action"] = LINK
    out.loc[(n > 1).to_numpy(), "action"] = DUPLICATES
    out.loc[email.isna().to_numpy(), "action"] = NO_EMAIL
    single = (out["action"] == LINK).to_numpy()
    # as_string: with no candidate at all, map gives float NaN, which a text fillna would reject.
    out["dynamics_id"] = as_string(email.map(first["dynamics_id"])).where(single)
    out["table"] = as_string(email.map(first["table"])).where(single)
    out["candidates"] = as_string(email.map(joined)).where((out["action"] == DUPLICATES).to_numpy())
    return out


DUPLICATE_EMAIL = "DUPLICATE_EMAIL"


def claim_emails(
    canon: pd.DataFrame,
    entity: str,
    email_field: str,
    linked: set[str],
    holders: pd.DataFrame,
    created_field: str | None = None,
) -> tuple[pd.Series, pd.DataFrame]:
    """One live Marketo person per email: which unlinked Dataverse records may create one.

    The rule ``duplicate_email: oldest_holds``: a record whose email another record already
    holds (an active link of any person entity, or a linked record of this batch) does not get
    a person of its own; among unlinked records of the batch sharing an email, the oldest
    (``created_field``, then the GUID) holds it and the others do not.

    Args:
        canon: Canonical rows of the batch (``dynamics_id`` and ``email_field``).
        entity: The batch's entity (names the holder when it is in the batch).
        email_field: The canonical (Marketo) name of the email field.
        linked: GUIDs of the batch already linked to a person (never held back).
        holders: Active links found by the batch's emails: ``entity``, ``dynamics_id``, ``email``.
        created_field: The canonical field holding the record's creation time, if mapped.

    Returns:
        A boolean mask over ``canon`` (True: may be written) and, for each record held back,
        ``dynamics_id``, ``email`` and ``holder`` (``entity:guid`` of the record keeping it).
    """
    empty = empty_frame(("dynamics_id", "email", "holder"))
    keep = pd.Series(True, index=canon.index)
    if email_field not in canon or canon.empty:
        return keep, empty
    ids = as_string(canon["dynamics_id"]).str.lower()
    emails = as_string(canon[email_field]).str.strip().str.lower()
    is_linked = ids.isin(linked)
    taken: dict[str, str] = {}
    keys = as_string(holders["email"]).str.strip().str.lower() if len(holders) else pd.Series(dtype="str")
    for key, owner, guid in zip(
        keys, holders.get("entity", []), holders.get("dynamics_id", []), strict=False
    ):
        if isinstance(key, str):
            taken.setdefault(key, f"{owner}:{str(guid).lower()}")
    for key, guid in zip(emails[is_linked], ids[is_linked], strict=True):
        if isinstance(key, str):
            taken[key] = f"{entity}:{guid}"
    created = as_string(canon[created_field]) if created_field and created_field in canon else None
    order = pd.DataFrame(
        {"id": ids, "email": emails, "created": created if created is not None else ""}, index=canon.index
    )
    order = order[(~is_linked & emails.notna()).to_numpy()].sort_values(["created", "id"], na_position="last")
    rows: list[dict[str, str]] = []
    for index, guid, key in zip(order.index, order["id"], order["email"], strict=True):
        holder = taken.get(key)
        if holder is None or holder == f"{entity}:{guid}":
            taken[key] = f"{entity}:{guid}"
            continue
        keep[index] = False
        rows.append({"dynamics_id": str(guid), "email": str(key), "holder": holder})
    return keep, (pd.DataFrame(rows, columns=list(empty.columns)) if rows else empty)

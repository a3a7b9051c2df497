"""Email matching before creating a Dataverse lead for a Marketo-only person (§6.1, issue 6).

One match links instead of creating; several are reported as duplicate candidates and never
guessed; none means create. This is an improvement over the commercial sync and is switched
by the entity's ``dedup_by_email``.
"""

from __future__ import annotations

import pandas as pd

from crm_sync.transforms.casts import as_string

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
    out["dynamics_id"] = email.map(first["dynamics_id"]).where(single)
    out["table"] = email.map(first["table"]).where(single)
    out["candidates"] = email.map(joined).where((out["action"] == DUPLICATES).to_numpy())
    return out
